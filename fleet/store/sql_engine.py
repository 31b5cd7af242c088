"""The SQL store's plumbing: engine, connection pragmas, transactions and error translation.

SQLite (the default) is opened in WAL mode, so readers never wait for the writer, with
``foreign_keys=ON`` and a ``busy_timeout`` so a second writer waits instead of failing.
Transactions are begun explicitly: Python's sqlite3 module would otherwise open them lazily
at the first write, which leaves reads outside any transaction (the snapshot would not be
consistent) and lets a read-then-write transaction fail with SQLITE_BUSY when another writer
got in between, which no busy timeout can fix. So writes run under ``BEGIN IMMEDIATE`` (the
write lock first, then the reads) and reads under ``BEGIN`` (one WAL snapshot for all of
them). On PostgreSQL reads run REPEATABLE READ for the same reason; writes READ COMMITTED,
relying on constraints and single-statement upserts rather than read-check-write.

    base = SqlBase("sqlite:////var/lib/edgectl/fleet.db", StoreSettings(synchronous="FULL"))
    with base.tx(write=True) as conn:
        conn.execute(...)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgectl.errors import MissingExtraError
from fleet.store.base import Conflict, SchemaError, StoreError, StoreUnavailable
from fleet.store.schema import SCHEMA_VERSION, devices, metadata, schema_version

try:
    import sqlalchemy as sa
    from sqlalchemy import event, exc
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.pool import StaticPool
except ImportError as _exc:  # pragma: no cover - the [fleet] extra brings it
    raise MissingExtraError("sqlalchemy", "fleet", "the fleet controller's state store") from _exc

log = logging.getLogger(__name__)
DB_NAME = "fleet.db"


@dataclass(frozen=True)
class StoreSettings:
    """How the store opens its database (read once at the entry point, passed down).

    ``synchronous`` (SQLite only): FULL fsyncs the WAL at every commit, so a deployment that
    ``edgectl fleet deploy`` reported as created survives a power cut, not only a kill -9 of
    the controller (NORMAL survives that too: the WAL is in the OS's cache before COMMIT
    returns, but the last transactions can vanish with the machine). The fsync costs ~0.2-0.4
    ms per commit here (virtio disk) and far more on SD cards, which is why telemetry goes in
    batches (``record_telemetry_batch``): one fsync per batch, not per device.
    """

    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    busy_timeout_ms: int = 5000  # how long a writer waits for another (controller) to commit
    keep_events: int = 100_000  # the event log is pruned to this many rows as it grows
    echo: bool = False  # log every SQL statement (debugging)


DEFAULT_SETTINGS = StoreSettings()


def sqlite_url(path: Path) -> str:
    """The default store: an SQLite file, e.g. ``sqlite:////var/lib/edgectl/fleet.db``."""
    return f"sqlite:///{path}"


def _url(url: str | Path) -> str:
    # A bare path is an SQLite file: `--store /var/lib/edgectl/fleet.db` reads naturally.
    return url if isinstance(url, str) and "://" in url else sqlite_url(Path(url))


class SqlBase:
    """Engine + transactions shared by the store's parts. ``tx()`` nests: inside ``atomic()``
    (same thread) every call joins the outer write transaction."""

    def __init__(self, url: str | Path, settings: StoreSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        try:
            self.url = sa.make_url(_url(url))
        except exc.ArgumentError as e:
            raise StoreUnavailable(f"{url!r} is not a database URL: use sqlite:///PATH or postgresql://…") from e
        self.where = self.url.render_as_string(hide_password=True)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise StoreUnavailable(f"{self.where}: the store runs on SQLite or PostgreSQL, not {self.dialect}")
        self._local = threading.local()
        self.engine = self._make_engine()
        self._read_opts: dict[str, Any] = {"edgectl_begin": "DEFERRED"}
        self._write_opts: dict[str, Any] = {"edgectl_begin": "IMMEDIATE"}
        if self.dialect == "postgresql":
            self._read_opts = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
            self._write_opts = {"isolation_level": "READ COMMITTED"}
        self._open_schema()

    def _make_engine(self) -> Engine:
        if self.dialect != "sqlite":
            return sa.create_engine(self.url, echo=self.settings.echo, pool_pre_ping=True)
        memory = self.url.database in (None, "", ":memory:")
        if not memory:
            Path(str(self.url.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            self.url, echo=self.settings.echo,
            # Pooled connections move between the controller's threads, one thread at a time.
            connect_args={"check_same_thread": False},
            **({"poolclass": StaticPool} if memory else {}),
        )
        settings = self.settings

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we send BEGIN ourselves (see the module docstring)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys = ON")
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal" and not memory:
                log.warning("%s: journal_mode is %s, not wal (network filesystem?): readers will block", self.where,
                            mode)
            cur.execute(f"PRAGMA synchronous = {settings.synchronous}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('edgectl_begin', 'DEFERRED')}")

        return engine

    def _open_schema(self) -> None:
        # Read first: a controller opening a store another one is busy writing to must not
        # queue for the write lock just to learn that the schema is already there.
        with self.tx(write=False) as conn:
            if set(metadata.tables) <= set(sa.inspect(conn).get_table_names()):
                found = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
                if found is not None:
                    return self._check_version(found)
        with self.tx(write=True) as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if devices.name in tables and schema_version.name not in tables:
                raise SchemaError(f"{self.where} has a 'devices' table but is not an edgectl store: use another path")
            metadata.create_all(conn)
            found = conn.execute(sa.select(schema_version.c.version)).scalar_one_or_none()
            if found is None:
                conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            else:
                self._check_version(found)

    def _check_version(self, found: int) -> None:
        if found > SCHEMA_VERSION:
            raise SchemaError(f"{self.where} has store schema {found}, this edgectl knows {SCHEMA_VERSION}: "
                              "upgrade edgectl")
        if found < SCHEMA_VERSION:  # pragma: no cover - no migration exists yet
            raise SchemaError(f"{self.where} has store schema {found} and no migration to {SCHEMA_VERSION} "
                              "exists: file a bug")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        with self.tx(write=True):
            yield

    @contextmanager
    def tx(self, *, write: bool) -> Iterator[Connection]:
        outer: Connection | None = getattr(self._local, "conn", None)
        if outer is not None:
            yield outer
            return
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**(self._write_opts if write else self._read_opts))
                with conn.begin():
                    if write:
                        self._local.conn = conn
                    try:
                        yield conn
                    finally:
                        self._local.conn = None
        except StoreError:
            raise
        except exc.IntegrityError as e:
            raise Conflict(f"{self.where}: a concurrent change won ({_first_line(e.orig)}): retry") from e
        except exc.DBAPIError as e:
            raise self._unavailable(e) from e

    def _unavailable(self, e: exc.DBAPIError) -> StoreError:
        text = _first_line(e.orig)
        if "locked" in text or "busy" in text:
            return StoreUnavailable(f"{self.where} stayed locked for {self.settings.busy_timeout_ms} ms "
                                    "(another controller writing?): retry, or raise busy_timeout_ms")
        if "unable to open" in text:
            return StoreUnavailable(f"cannot open the store {self.where}: check the folder exists and is writable")
        if "not a database" in text:
            return SchemaError(f"{self.where} is not an SQLite database: point the controller at an edgectl store")
        if "full" in text:
            return StoreUnavailable(f"{self.where}: the disk is full: free space, then retry")
        return StoreUnavailable(f"{self.where}: {text}")

    def lock(self, conn: Connection, key: str) -> None:
        """Serialize read-check-write transactions on ``key`` across controllers.

        SQLite needs nothing: BEGIN IMMEDIATE already admits one writer at a time. PostgreSQL
        takes a transaction-scoped advisory lock, so e.g. two controllers publishing the same
        model both see one version instead of one failing on the primary key."""
        if self.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))))

    def insert(self, table: sa.Table) -> Any:
        """INSERT with ``on_conflict_do_update/nothing`` (the same API on both dialects)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)


def _first_line(e: object) -> str:
    return (str(e).strip().splitlines() or ["unknown error"])[0]
