"""The state store on SQLite: every method, its idempotency, its errors, and kill -9 safety."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edgectl.errors import EdgectlError
from fleet.model import DeploymentSpec, Device, Measured, Placement, Variant
from fleet.store import (
    Conflict,
    Invalid,
    NotFound,
    ReportItem,
    SchemaError,
    SqlStore,
    StoreError,
    StoreSettings,
    StoreUnavailable,
    TelemetryItem,
    open_store,
    sql_log,
    variants_from_manifest,
)
from fleet.store.base import APPLIED, GONE, INVALID, STALE

REPO = Path(__file__).resolve().parents[2]
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def manifest(target: str, arch: str = "aarch64", files: tuple[str, ...] = ("m.int8.onnx", "m.fp32.onnx")) -> dict[str, Any]:
    return {
        "target": {"name": target, "arch": arch, "isa": ["neon"], "runtimes": ["onnxruntime"]},
        "model": {"name": "m"},
        "variants": [
            {"file": f, "precision": f.split(".")[1], "format": "onnx", "runtime": "onnxruntime",
             "fidelity": {"size_bytes": 1000 * (i + 1), "latency_p50_ms": 1.0}}
            for i, f in enumerate(files)
        ],
    }


def publish(store: SqlStore, name: str = "digits", shas: dict[str, str] | None = None, version: int | None = None) -> int:
    shas = shas or {"arm64-a72": SHA_A}
    manifests = {t: manifest(t) for t in shas}
    variants = [v for t, sha in shas.items() for v in variants_from_manifest(name, manifests[t], sha, 500)]
    return store.register_model(name, variants, manifests, version=version)


def device(i: int | str = 1, **kw: Any) -> Device:
    base: dict[str, Any] = {"id": f"pi-{i}" if isinstance(i, int) else i, "arch": "aarch64", "online": True,
                            "last_seen": 100.0, "memory_total": 4 << 30}
    return Device(**{**base, **kw})


def spec(name: str = "digits", version: int = 1, **kw: Any) -> DeploymentSpec:
    return DeploymentSpec(name=name, model=kw.pop("model", name), version=version, replicas=kw.pop("replicas", 2), **kw)


@pytest.fixture
def store(tmp_path: Path):
    s = SqlStore(tmp_path / "fleet.db")
    yield s
    s.close()


@pytest.fixture
def placed(store: SqlStore) -> tuple[SqlStore, Variant]:
    """digits v1 published and deployed, pi-1 registered and bound to its int8 variant."""
    publish(store)
    store.create_deployment(spec())
    store.upsert_device(device(1), {})
    variant = next(v for v in store.get_variants("digits", 1) if v.precision == "int8")
    assert store.bind(Placement("digits", "pi-1", variant, since=100.0))
    return store, variant


# --- opening -------------------------------------------------------------------------------------

def _pragma(store: SqlStore, name: str) -> Any:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_opens_in_wal_with_foreign_keys_busy_timeout_and_schema_version(store: SqlStore) -> None:
    assert _pragma(store, "journal_mode") == "wal"
    assert _pragma(store, "foreign_keys") == 1
    assert _pragma(store, "busy_timeout") == 5000
    assert _pragma(store, "synchronous") == 2  # FULL
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version").all() == [(1,)]


def test_synchronous_normal_is_a_setting(tmp_path: Path) -> None:
    s = SqlStore(tmp_path / "f.db", StoreSettings(synchronous="NORMAL", busy_timeout_ms=250))
    assert (_pragma(s, "synchronous"), _pragma(s, "busy_timeout")) == (1, 250)


def test_open_store_takes_a_path_or_a_url_and_refuses_others(tmp_path: Path) -> None:
    assert open_store(tmp_path / "a.db").generation("x") == 0
    assert open_store(f"sqlite:///{tmp_path / 'b.db'}").generation("x") == 0
    assert (tmp_path / "a.db").is_file() and (tmp_path / "b.db").is_file()
    with pytest.raises(StoreUnavailable, match="SQLite or PostgreSQL, not mysql"):
        open_store("mysql://db/fleet")


def test_a_newer_schema_is_refused_with_the_fix(tmp_path: Path) -> None:
    SqlStore(tmp_path / "f.db").close()
    with sqlite3.connect(tmp_path / "f.db") as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match="store schema 99, this edgectl knows 1: upgrade edgectl"):
        SqlStore(tmp_path / "f.db")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(SchemaError, match="is not an SQLite database"):
        SqlStore(tmp_path / "f.db")


def test_errors_are_edgectl_errors_with_exit_codes() -> None:
    for cls in (NotFound, Conflict, Invalid, SchemaError, StoreUnavailable):
        assert issubclass(cls, StoreError) and issubclass(cls, EdgectlError)
    assert NotFound.exit_code == Conflict.exit_code == Invalid.exit_code == 2


# --- devices -------------------------------------------------------------------------------------

def test_every_device_field_round_trips(store: SqlStore) -> None:
    # Completeness: a field added to Device without a column fails here, not in production.
    full = Device(id="jetson", arch="aarch64", isa=frozenset({"neon", "dotprod"}), runtimes=frozenset({"litert"}),
                  labels={"site": "lab"}, online=True, draining=True, last_seen=12.5, memory_total=8 << 30,
                  memory_available=3 << 30, memory_budget=1 << 30, disk_free=5 << 30, cpu_percent=33.5,
                  temperature_c=61.0, cpu_count=6, cpu_model="Cortex-A78AE")
    defaults = {f.name for f in dataclasses.fields(Device) if getattr(full, f.name) == getattr(Device("x", "y"), f.name)}
    assert not defaults, f"give these fields a non-default value here: {defaults}"
    assert store.upsert_device(full, {"board": "orin"}) is True
    assert store.get_device("jetson") == full
    assert store.get_capabilities("jetson") == {"board": "orin"}


def test_upsert_updates_capabilities_but_keeps_draining_and_telemetry(store: SqlStore) -> None:
    store.upsert_device(device(1, memory_available=1 << 30, labels={"a": "1"}), {"v": 1})
    store.set_draining("pi-1", True)
    assert store.upsert_device(device(1, labels={"a": "2"}, memory_available=0, last_seen=50.0), {"v": 2}) is False
    d = store.get_device("pi-1")
    assert (d.labels, d.draining, d.memory_available, d.last_seen) == ({"a": "2"}, True, 1 << 30, 100.0)
    assert store.get_capabilities("pi-1") == {"v": 2}
    assert [x.id for x in store.list_devices()] == ["pi-1"]
    store.set_draining("pi-1", False)
    assert store.get_device("pi-1").draining is False


def test_unknown_devices_are_not_found_with_a_reason(store: SqlStore) -> None:
    for call in (lambda: store.get_device("ghost"), lambda: store.set_online("ghost", True, 1.0),
                 lambda: store.touch("ghost", 1.0), lambda: store.set_draining("ghost", True),
                 lambda: store.delete_device("ghost"), lambda: store.get_capabilities("ghost"),
                 lambda: store.record_telemetry("ghost", {}, {}, 1.0)):
        with pytest.raises(NotFound, match="device 'ghost' is not registered: it appears once its agent publishes"):
            call()


def test_last_will_and_missed_heartbeats(store: SqlStore) -> None:
    store.upsert_device(device(1, last_seen=100.0), {})
    store.upsert_device(device(2, last_seen=100.0), {})
    store.upsert_device(device(3, last_seen=300.0), {})
    assert store.mark_stale(older_than=200.0) == ["pi-1", "pi-2"]
    assert store.mark_stale(older_than=200.0) == []  # already offline
    assert store.set_online("pi-2", False, 210.0) is False  # the will of a stale device: no change, but sticks
    assert store.touch("pi-1", 220.0) is True  # a heartbeat revives a stale device ...
    assert store.touch("pi-2", 220.0) is False  # ... not one whose will was published
    assert [d.online for d in store.list_devices()] == [True, False, True]
    assert store.get_device("pi-1").last_seen == 220.0
    assert store.set_online("pi-2", True, 230.0) is True  # its state message brings it back
    assert store.get_device("pi-2").last_seen == 230.0
    assert store.set_online("pi-2", True, 10.0) is False and store.get_device("pi-2").last_seen == 230.0


def test_delete_device_drops_placements_but_keeps_its_generation(placed) -> None:
    store, _ = placed
    store.bump_generation("pi-1")
    store.delete_device("pi-1")
    assert store.list_placements() == [] and store.generation("pi-1") == 1


# --- telemetry -----------------------------------------------------------------------------------

RES = {"memory_available_bytes": 1 << 30, "disk_free_bytes": 2 << 30, "cpu_percent": 12.5, "temperature_c": 48.0}


def test_telemetry_updates_resources_and_keeps_what_is_absent(store: SqlStore) -> None:
    store.upsert_device(device(1), {})
    store.record_telemetry("pi-1", RES, {}, 150.0)
    d = store.get_device("pi-1")
    assert (d.memory_available, d.disk_free, d.cpu_percent, d.temperature_c, d.last_seen) == (1 << 30, 2 << 30, 12.5,
                                                                                              48.0, 150.0)
    store.record_telemetry("pi-1", {"cpu_percent": "junk", "disk_free_bytes": None, "temperature_c": None}, {}, 160.0)
    d = store.get_device("pi-1")
    assert (d.disk_free, d.cpu_percent, d.temperature_c, d.last_seen) == (2 << 30, 12.5, None, 160.0)
    store.touch("pi-1", 170.0)  # a heartbeat carries no readings
    assert store.get_device("pi-1").memory_available == 1 << 30


def test_older_telemetry_does_not_overwrite_newer_but_is_a_heartbeat(store: SqlStore) -> None:
    store.upsert_device(device(1, last_seen=10.0), {})
    store.record_telemetry("pi-1", {**RES, "cpu_percent": 90.0}, {}, 200.0, sent=5000.0)
    store.mark_stale(300.0)
    # A flushed offline buffer: sent earlier by the agent's clock, received later by ours.
    res = store.record_telemetry_batch([TelemetryItem("pi-1", {**RES, "cpu_percent": 5.0}, {}, 400.0, sent=4000.0)])
    assert (res.updated, res.stale, res.revived) == (0, 1, ("pi-1",))
    d = store.get_device("pi-1")
    assert (d.cpu_percent, d.last_seen, d.online) == (90.0, 400.0, True)
    store.record_telemetry("pi-1", {**RES, "cpu_percent": 7.0}, {}, 410.0, sent=5001.0)
    assert store.get_device("pi-1").cpu_percent == 7.0


def test_a_batch_reports_unknown_revived_and_keeps_the_newest_per_device(store: SqlStore) -> None:
    store.upsert_device(device(1, last_seen=10.0), {})
    store.upsert_device(device(2), {})
    store.mark_stale(50.0)
    res = store.record_telemetry_batch([
        TelemetryItem("pi-1", {**RES, "cpu_percent": 1.0}, {}, 120.0),
        TelemetryItem("pi-1", {**RES, "cpu_percent": 2.0}, {}, 130.0),
        TelemetryItem("pi-2", RES, {}, 130.0),
        TelemetryItem("ghost", RES, {}, 130.0),
    ])
    assert (res.updated, res.revived, res.unknown, res.stale) == (2, ("pi-1",), ("ghost",), 1)  # stale: the 120 one
    assert store.get_device("pi-1").cpu_percent == 2.0 and store.get_device("pi-1").online


def test_telemetry_measurements_resolve_to_the_placed_variant(placed) -> None:
    store, variant = placed
    fp32 = next(v for v in store.get_variants("digits", 1) if v.precision == "fp32")
    store.record_telemetry("pi-1", RES, {
        "digits": {"p95_ms": 4.5, "memory_bytes": 7 << 20, "manifest_sha256": SHA_A},
        "other": {"p95_ms": 1.0, "manifest_sha256": SHA_A},  # not placed here: dropped
        "bad": "not an object",
    }, 150.0)
    assert store.measured() == [Measured("pi-1", variant.key, 4.5, 7 << 20)]
    # No requests this window (p95 None): the last p95 stays; another manifest is not this placement.
    store.record_telemetry("pi-1", RES, {"digits": {"p95_ms": None, "memory_bytes": 8 << 20,
                                                    "manifest_sha256": SHA_A}}, 160.0)
    store.record_telemetry("pi-1", RES, {"digits": {"p95_ms": 9.0, "manifest_sha256": SHA_B}}, 170.0)
    assert store.measured("pi-1") == [Measured("pi-1", variant.key, 4.5, 8 << 20)]
    # An entry naming its file is unambiguous even when it is not the placed variant.
    store.record_telemetry("pi-1", RES, {"digits": {"p95_ms": 6.0, "manifest_sha256": SHA_A,
                                                    "variant": fp32.file}}, 180.0)
    assert {m.variant_key: m.p95_ms for m in store.measured()} == {variant.key: 4.5, fp32.key: 6.0}


def test_record_measured(placed) -> None:
    store, variant = placed
    store.record_measured(Measured("pi-1", variant.key, 3.0, 100), ts=1.0)
    assert store.measured() == [Measured("pi-1", variant.key, 3.0, 100)]
    with pytest.raises(NotFound, match="variant 'nope' is not published"):
        store.record_measured(Measured("pi-1", "nope", 3.0, 100), ts=1.0)
    assert store.measured("pi-2") == []


# --- generations ---------------------------------------------------------------------------------

def test_generations_are_monotonic_and_survive_reopening(tmp_path: Path) -> None:
    s = SqlStore(tmp_path / "f.db")
    assert s.generation("pi-1") == 0
    assert [s.bump_generation("pi-1") for _ in range(3)] == [1, 2, 3]
    assert s.bump_generation("pi-2") == 1
    s.close()
    s = SqlStore(tmp_path / "f.db")
    assert (s.generation("pi-1"), s.bump_generation("pi-1")) == (3, 4)


def test_the_same_desired_digest_keeps_its_generation(store: SqlStore) -> None:
    assert store.bump_generation("pi-1", "d1") == 1
    assert store.bump_generation("pi-1", "d1") == 1  # re-derived after a restart: re-publish, no bump
    assert store.bump_generation("pi-1", "d2") == 2
    assert store.bump_generation("pi-1", "d1") == 3  # back to old content is still a newer state
    assert store.bump_generation("pi-1") == 4  # no digest: always bump


def test_two_controllers_bumping_at_once_get_distinct_generations(tmp_path: Path) -> None:
    stores = [SqlStore(tmp_path / "f.db") for _ in range(2)]
    got: list[int] = []
    lock = threading.Lock()

    def work(s: SqlStore) -> None:
        for _ in range(25):
            g = s.bump_generation("pi-1")
            with lock:
                got.append(g)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 101))


# --- models --------------------------------------------------------------------------------------

def test_register_assigns_versions_and_is_idempotent_per_manifest_set(store: SqlStore) -> None:
    assert publish(store) == 1
    assert publish(store) == 1  # the same manifests again
    assert publish(store, shas={"arm64-a72": SHA_A, "x86": SHA_B}) == 2  # a superset is a new version
    assert publish(store, shas={"arm64-a72": SHA_C}) == 3
    assert publish(store, name="other") == 1  # versions count per model
    assert store.latest_version("digits") == 3
    models = store.list_models()
    assert [(m.name, m.version) for m in models] == [("digits", 1), ("digits", 2), ("digits", 3), ("other", 1)]
    assert models[1].manifests == {"arm64-a72": SHA_A, "x86": SHA_B}
    variants = store.get_variants("digits", 2)
    assert {v.key for v in variants} == {f"digits@2/{t}/m.{p}.onnx" for t in ("arm64-a72", "x86") for p in ("int8", "fp32")}
    assert all(v.version == 2 and v.manifest_size == 500 for v in variants)
    assert store.get_manifest("digits", 2, "x86")["target"]["name"] == "x86"


def test_register_refuses_what_it_should(store: SqlStore) -> None:
    publish(store)
    with pytest.raises(Conflict, match="already digits version 1: deploy that version"):
        publish(store, version=5)
    with pytest.raises(Conflict, match="digits version 1 is already published with other artifacts"):
        publish(store, shas={"arm64-a72": SHA_B}, version=1)
    assert publish(store, shas={"arm64-a72": SHA_B}, version=7) == 7
    assert publish(store, shas={"arm64-a72": SHA_C}) == 8
    with pytest.raises(Invalid, match="has no variants"):
        store.register_model("digits", [], {})
    v = variants_from_manifest("x", manifest("t"), SHA_A, 1)
    with pytest.raises(Invalid, match=r"no manifest given for target\(s\) t"):
        store.register_model("x", v, {})
    with pytest.raises(Invalid, match="target t names two manifests"):
        store.register_model("x", v + variants_from_manifest("x", manifest("t"), SHA_B, 1), {"t": manifest("t")})


def test_unknown_models_are_not_found_with_the_fix(store: SqlStore) -> None:
    with pytest.raises(NotFound, match=r"model 'digits' is not published: publish it with `edgectl fleet publish DIR`"):
        store.latest_version("digits")
    publish(store)
    with pytest.raises(NotFound, match=r"digits version 4 is not published \(known: 1\)"):
        store.get_variants("digits", 4)
    with pytest.raises(NotFound, match="has no artifacts for target riscv: compile for it"):
        store.get_manifest("digits", 1, "riscv")


# --- deployments and placements --------------------------------------------------------------------

def test_deployment_lifecycle(store: SqlStore) -> None:
    publish(store)
    publish(store, shas={"arm64-a72": SHA_B})
    s = spec(selector={"site": "lab"}, max_p95_ms=20.0, strategy="spread", precisions=("fp32",))
    store.create_deployment(s)
    assert store.get_deployment("digits") == s
    with pytest.raises(Conflict, match="deployment 'digits' already exists: update it, or delete it first"):
        store.create_deployment(s)
    store.update_deployment(dataclasses.replace(s, version=2, replicas=None))
    assert store.get_deployment("digits").version == 2 and store.get_deployment("digits").replicas is None
    with pytest.raises(NotFound, match=r"digits version 9 is not published"):
        store.update_deployment(dataclasses.replace(s, version=9))
    with pytest.raises(NotFound, match=r"deployment 'nope' does not exist: `edgectl fleet deploy` creates it"):
        store.update_deployment(spec("nope", model="digits"))
    with pytest.raises(NotFound, match="model 'other' is not published"):
        store.create_deployment(spec("other"))
    assert [d.name for d in store.list_deployments()] == ["digits"]
    assert store.delete_deployment("digits") == []
    with pytest.raises(NotFound, match="deployment 'digits' does not exist"):
        store.get_deployment("digits")
    with pytest.raises(NotFound):
        store.delete_deployment("digits")


def test_bind_is_idempotent_and_rebinding_resets_the_state(placed) -> None:
    store, variant = placed
    assert store.bind(Placement("digits", "pi-1", variant, since=200.0)) is False  # one row, untouched
    assert store.set_placement_state("digits", "pi-1", "serving", None, 210.0) is True
    assert store.bind(Placement("digits", "pi-1", variant)) is False
    [p] = store.list_placements()
    assert (p.state, p.since, p.variant) == ("serving", 210.0, variant)
    publish(store, shas={"arm64-a72": SHA_B})
    v2 = store.get_variants("digits", 2)[0]
    assert store.bind(Placement("digits", "pi-1", v2, since=300.0)) is True
    [p] = store.list_placements(device="pi-1")
    assert (p.state, p.variant, p.since) == ("pending", v2, 300.0)


def test_placement_reports_are_checked(placed) -> None:
    store, _ = placed
    assert store.set_placement_state("digits", "pi-1", "failed", "OOM", 150.0, manifest_sha256=SHA_B) is False
    assert store.set_placement_state("digits", "pi-1", "failed", "OOM", 150.0, manifest_sha256=SHA_A) is True
    [p] = store.list_placements(deployment="digits")
    assert (p.state, p.reason, p.since) == ("failed", "OOM", 150.0)
    with pytest.raises(Invalid, match="placement state 'exploded' is not one of pending, downloading"):
        store.set_placement_state("digits", "pi-1", "exploded", None, 1.0)
    with pytest.raises(NotFound, match="deployment 'digits' is not placed on 'pi-9': a late report"):
        store.set_placement_state("digits", "pi-9", "serving", None, 1.0)


def test_a_report_batch_applies_in_order_and_skips_what_cannot_apply(placed) -> None:
    store, variant = placed
    store.upsert_device(device(2), {})
    store.bind(Placement("digits", "pi-2", variant, since=100.0))
    items = [ReportItem("digits", "pi-1", "downloading", None, 201.0, SHA_A),
             ReportItem("digits", "pi-9", "serving", None, 202.0, SHA_A),  # not placed there
             ReportItem("digits", "pi-1", "serving", None, 203.0, SHA_A),
             ReportItem("digits", "pi-2", "failed", "OOM", 204.0, SHA_B),  # about another artifact
             ReportItem("digits", "pi-2", "exploded", None, 205.0)]
    assert store.record_reports(items) == [APPLIED, GONE, APPLIED, STALE, INVALID]
    states = {p.device: (p.state, p.since) for p in store.list_placements("digits")}
    assert states == {"pi-1": ("serving", 203.0), "pi-2": ("pending", 100.0)}  # the later report won
    assert store.record_reports([]) == []


def test_bind_refuses_unknown_records(placed) -> None:
    store, variant = placed
    with pytest.raises(NotFound, match="device 'pi-9' is not registered"):
        store.bind(Placement("digits", "pi-9", variant))
    with pytest.raises(NotFound, match="deployment 'nope' does not exist"):
        store.bind(Placement("nope", "pi-1", variant))
    with pytest.raises(NotFound, match="is not published"):
        store.bind(Placement("digits", "pi-1", dataclasses.replace(variant, file="gone.onnx")))


def test_unbind_commit_and_delete_cascade(placed) -> None:
    store, variant = placed
    store.upsert_device(device(2), {})
    store.upsert_device(device(3), {})
    changed = store.commit(binds=[Placement("digits", "pi-2", variant), Placement("digits", "pi-1", variant)],
                           unbinds=[Placement("digits", "pi-3", variant)])
    assert changed == ["pi-2"]  # pi-1 was already bound, pi-3 never was
    assert store.unbind("digits", "pi-1") is True and store.unbind("digits", "pi-1") is False
    store.create_rollout("digits", 1, from_version=None, canary_percent=10, max_unavailable=1, failure_threshold=0.5,
                         ts=1.0)
    assert store.delete_deployment("digits") == ["pi-2"]
    assert store.list_placements() == [] and store.list_rollouts() == []


def test_a_failing_commit_leaves_nothing(placed) -> None:
    store, variant = placed
    store.upsert_device(device(2), {})
    with pytest.raises(NotFound):
        store.commit(binds=[Placement("digits", "pi-2", variant), Placement("digits", "pi-9", variant)], unbinds=[])
    assert [p.device for p in store.list_placements()] == ["pi-1"]
    with pytest.raises(RuntimeError), store.atomic():
        store.unbind("digits", "pi-1")
        store.bump_generation("pi-1")
        raise RuntimeError("crash in the middle of a plan")
    assert [p.device for p in store.list_placements()] == ["pi-1"] and store.generation("pi-1") == 0


# --- rollouts ------------------------------------------------------------------------------------

def test_rollout_lifecycle(placed) -> None:
    store, _ = placed
    publish(store, shas={"arm64-a72": SHA_B})
    r = store.create_rollout("digits", 2, from_version=1, canary_percent=10.0, max_unavailable=1,
                             failure_threshold=0.25, ts=10.0)
    assert (r.state, r.from_version, r.to_version, r.started) == ("running", 1, 2, 10.0)
    assert store.active_rollout("digits") == r == store.get_rollout(r.id)
    with pytest.raises(Conflict, match=rf"already has rollout {r.id} to version 2 \(running\): finish or roll it back"):
        store.create_rollout("digits", 2, from_version=1, canary_percent=10, max_unavailable=1,
                             failure_threshold=0.25, ts=11.0)
    r = store.update_rollout(r.id, ts=12.0, state="paused", canary_percent=50.0)
    assert (r.state, r.canary_percent, r.updated) == ("paused", 50.0, 12.0)
    r = store.update_rollout(r.id, ts=13.0, state="rolled_back", reason="3 of 10 failed")
    assert (r.state, r.reason) == ("rolled_back", "3 of 10 failed") and store.active_rollout("digits") is None
    with pytest.raises(Conflict, match="is already rolled_back: start a new rollout"):
        store.update_rollout(r.id, ts=14.0, state="running")
    r2 = store.create_rollout("digits", 2, from_version=1, canary_percent=10, max_unavailable=1,
                              failure_threshold=0.25, ts=15.0)
    assert [x.id for x in store.list_rollouts("digits")] == [r.id, r2.id] and store.list_rollouts("x") == []


def test_rollout_errors(placed) -> None:
    store, _ = placed
    with pytest.raises(NotFound, match="digits version 5 is not published: publish it, then roll it out"):
        store.create_rollout("digits", 5, from_version=1, canary_percent=0, max_unavailable=1, failure_threshold=1,
                             ts=0)
    with pytest.raises(NotFound, match="deployment 'nope' does not exist: deploy it before rolling it out"):
        store.create_rollout("nope", 1, from_version=None, canary_percent=0, max_unavailable=1, failure_threshold=1,
                             ts=0)
    with pytest.raises(NotFound, match="rollout 42 does not exist"):
        store.get_rollout(42)
    with pytest.raises(Invalid, match="rollout state 'sideways' is not one of"):
        store.update_rollout(1, ts=0, state="sideways")


# --- events --------------------------------------------------------------------------------------

def test_events_append_list_and_prune(store: SqlStore) -> None:
    ids = [store.append_event("device.offline", f"pi-{i % 2}", f"msg {i}", ts=float(i), data={"i": i})
           for i in range(6)]
    assert ids == [1, 2, 3, 4, 5, 6]
    assert [e.id for e in store.list_events(since_id=2, limit=3)] == [3, 4, 5]
    [e] = store.list_events(since_id=4, subject="pi-1")
    assert (e.id, e.kind, e.message, e.ts, e.data) == (6, "device.offline", "msg 5", 5.0, {"i": 5})
    assert store.prune_events(keep=2) == 4 and store.prune_events(keep=2) == 0
    assert [e.id for e in store.list_events()] == [5, 6]
    assert store.append_event("k", "s", "m", ts=7.0) == 7  # ids are never reused: cursors stay valid
    assert store.list_events(since_id=6)[0].data is None


def test_the_event_log_prunes_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_log, "PRUNE_EVERY", 10)
    s = SqlStore(tmp_path / "f.db", StoreSettings(keep_events=4))
    for i in range(25):
        s.append_event("k", "s", str(i), ts=float(i))
    assert [e.id for e in s.list_events()] == [17, 18, 19, 20, 21, 22, 23, 24, 25]


# --- snapshot ------------------------------------------------------------------------------------

def test_snapshot_holds_what_the_scheduler_needs(placed) -> None:
    store, variant = placed
    for sha in (SHA_B, SHA_C):
        publish(store, shas={"arm64-a72": sha})
    store.create_rollout("digits", 3, from_version=1, canary_percent=10, max_unavailable=1, failure_threshold=0.5,
                         ts=1.0)
    store.record_measured(Measured("pi-1", variant.key, 2.0, 10), ts=1.0)
    store.bump_generation("pi-1")
    snap = store.snapshot()
    assert set(snap.devices) == {"pi-1"} and set(snap.deployments) == {"digits"}
    assert set(snap.variants) == {("digits", 1), ("digits", 3)}  # v2 is referenced by nothing
    assert variant in snap.variants[("digits", 1)] and len(snap.variants[("digits", 3)]) == 2
    assert [p.device for p in snap.placements] == ["pi-1"] and snap.measured == (Measured("pi-1", variant.key, 2.0, 10),)
    assert [r.to_version for r in snap.rollouts] == [3] and snap.generations == {"pi-1": 1}


def test_an_empty_snapshot(store: SqlStore) -> None:
    snap = store.snapshot()
    assert (snap.devices, snap.deployments, snap.variants, snap.placements) == ({}, {}, {}, ())


def test_two_controllers_publishing_the_same_model_agree(tmp_path: Path) -> None:
    stores = [SqlStore(tmp_path / "f.db") for _ in range(3)]
    got: list[int] = []
    threads = [threading.Thread(target=lambda s=s: got.append(publish(s))) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [1, 1, 1] and len(stores[0].list_models()) == 1


# --- kill -9 -------------------------------------------------------------------------------------

CHILD = """
import sys
from fleet.model import DeploymentSpec, Placement
from fleet.store import SqlStore, StoreSettings
store = SqlStore(sys.argv[1], StoreSettings(synchronous=sys.argv[3]))
variant = store.get_variants("digits", 1)[0]
print("ready", flush=True)
i = 0
while True:
    name = f"r{sys.argv[2]}-{i}"
    with store.atomic():
        store.create_deployment(DeploymentSpec(name, "digits", 1, replicas=3))
        for dev in ("pi-1", "pi-2", "pi-3"):
            store.bind(Placement(name, dev, variant))
            store.bump_generation(dev)
        store.append_event("deployment.created", name, "created", ts=float(i), data={"n": i})
    print(name, flush=True)
    i += 1
"""


def _check_consistent(store: SqlStore) -> int:
    snap = store.snapshot()  # one read transaction: its counts must agree with each other
    n = len(snap.deployments)
    assert len(snap.placements) == 3 * n
    assert snap.generations == ({f"pi-{i}": n for i in (1, 2, 3)} if n else {})
    return n


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    store = SqlStore(path)
    publish(store)
    for i in (1, 2, 3):
        store.upsert_device(device(i), {})
    store.close()
    rng = random.Random(os.getpid())
    reported: list[str] = []
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(round_), ("FULL", "NORMAL")[round_ % 2]],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        reader = SqlStore(path)  # a concurrent reader never sees half a transaction
        deadline = time.monotonic() + rng.uniform(0.15, 0.6)
        while time.monotonic() < deadline:
            _check_consistent(reader)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        reader.close()
        reported += out.split()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = SqlStore(path)
        names = [d.name for d in store.list_deployments()]
        assert len(names) == len(set(names))
        assert set(reported) <= set(names)  # every reported commit survived ...
        assert len(set(names) - set(reported)) <= round_ + 1  # ... plus at most the one killed before printing
        n = _check_consistent(store)
        assert len(store.list_events(limit=10_000)) == n
        store.close()
    assert len(reported) > 30, "the writer barely ran: the kills tested little"


def test_opening_reads_past_a_busy_writer_and_a_blocked_write_says_so(tmp_path: Path) -> None:
    fast = StoreSettings(busy_timeout_ms=100)
    first = SqlStore(tmp_path / "f.db", fast)
    with first.atomic():  # holds the write lock, as a busy controller would
        first.bump_generation("pi-1")
        other = SqlStore(tmp_path / "f.db", fast)  # opening needs no write lock ...
        assert other.generation("pi-1") == 0  # ... and reads the last committed state
        with pytest.raises(StoreUnavailable, match=r"stayed locked for 100 ms .*: retry, or raise busy_timeout_ms"):
            other.bump_generation("pi-1")
    assert other.bump_generation("pi-1") == 2
