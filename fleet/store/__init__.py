"""The controller's state store: one interface (``base.Store``), SQLite or PostgreSQL behind it.

    from fleet.store import open_store, sqlite_url
    store = open_store(sqlite_url(data_dir / DB_NAME))

    base.py          Store protocol, errors, record types
    schema.py        tables, schema version, row → dataclass conversions
    sql_engine.py    engine, pragmas (WAL …), transactions, error translation
    sql_devices.py   devices, telemetry, measurements, generations
    sql_catalog.py   models, variants, deployments, placements
    sql_log.py       rollouts, events, snapshot
    sql.py           SqlStore = the three above; open_store()
"""

from fleet.store.base import (
    Conflict,
    Event,
    Ingested,
    Invalid,
    ModelVersion,
    NotFound,
    ReportItem,
    Rollout,
    SchemaError,
    Snapshot,
    Store,
    StoreError,
    StoreUnavailable,
    TelemetryItem,
    variants_from_manifest,
)
from fleet.store.sql import DB_NAME, DEFAULT_SETTINGS, SqlStore, StoreSettings, open_store, sqlite_url

__all__ = [
    "DB_NAME", "DEFAULT_SETTINGS", "Conflict", "Event", "Ingested", "Invalid", "ModelVersion", "NotFound",
    "ReportItem", "Rollout", "SchemaError", "Snapshot", "SqlStore", "Store", "StoreError", "StoreSettings",
    "StoreUnavailable", "TelemetryItem", "open_store", "sqlite_url", "variants_from_manifest",
]
