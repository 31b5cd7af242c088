"""The scheduler against in-memory state: one row per filter reason, scorer direction and variant rule."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from fleet.model import DeploymentSpec, Device, Measured, Placement, Variant
from fleet.scheduler import (
    DEFAULTS,
    ClusterView,
    Planner,
    UnknownDeviceError,
    estimate_memory,
    explain,
    schedule,
    variant_for,
)

MB, GB = 1 << 20, 1 << 30
EXHAUSTIVE = dataclasses.replace(DEFAULTS, sample_size=0)
A76 = frozenset({"neon", "asimddp", "asimdhp"})
AVX2 = frozenset({"sse4.2", "avx", "avx2", "fma", "f16c"})
VNNI = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}


def var(target: str, precision: str = "int8", *, runtime: str = "onnxruntime", size: int = 10 * MB,
        model: str = "digits") -> Variant:
    arch, isa = {
        "arm64-cortex-a72": ("aarch64", frozenset({"neon"})),
        "arm64-cortex-a76": ("aarch64", A76),
        "x86_64-avx2": ("x86_64", AVX2),
        "x86_64-avx512-vnni": ("x86_64", VNNI),
    }[target]
    fmt = "tflite" if runtime == "litert" else "onnx"
    return Variant(model=model, version=1, target=target, arch=arch, isa=isa, runtime=runtime, precision=precision,
                   format=fmt, file=f"{model}.{precision}.{fmt}", size_bytes=size, manifest_sha256="0" * 64,
                   manifest_size=0)


VARIANTS = [
    var("arm64-cortex-a72", "int8"), var("arm64-cortex-a72", "fp32"),
    var("arm64-cortex-a76", "int8"), var("arm64-cortex-a76", "fp16"), var("arm64-cortex-a76", "fp32"),
    var("arm64-cortex-a76", "int8", runtime="litert"),
    var("x86_64-avx2", "int8"), var("x86_64-avx2", "fp32"),
    var("x86_64-avx512-vnni", "int8"), var("x86_64-avx512-vnni", "fp32"),
]
A76_INT8 = VARIANTS[2]  # what a default device runs: estimate 10 MB × 2 + 40 MB onnxruntime = 60 MB


def dev(id: str = "d1", **kw: Any) -> Device:
    base: dict[str, Any] = dict(
        arch="aarch64", isa=A76, runtimes=frozenset({"onnxruntime"}), labels={"zone": "a"}, online=True,
        last_seen=100.0, memory_total=4 * GB, memory_available=2 * GB, disk_free=10 * GB, cpu_percent=10.0,
        temperature_c=50.0, cpu_model="Cortex-A76",
    )
    base.update(kw)
    return Device(id=id, **base)


def spec(**kw: Any) -> DeploymentSpec:
    base: dict[str, Any] = dict(name="digits", model="digits", version=1, replicas=1)
    base.update(kw)
    return DeploymentSpec(**base)


def view(*devices: Device, placements: tuple[Placement, ...] = (), measured: tuple[Measured, ...] = ()) -> ClusterView:
    return ClusterView(devices=devices, variants=VARIANTS, placements=placements, measured=measured, now=100.0)


def measured(device: str, p95: float | None = None, memory: int | None = None, v: Variant = A76_INT8) -> Measured:
    return Measured(device, v.key, p95, memory)


# ------------------------------------------------------------------------------------ filters

# (case, device overrides, spec overrides, extra devices, placements, measurements, filter, reason)
FILTER_CASES: list[tuple[str, dict[str, Any], dict[str, Any], tuple[Device, ...], tuple[Placement, ...],
                         tuple[Measured, ...], str, str]] = [
    ("offline", {"online": False, "last_seen": 40.0}, {}, (), (), (),
     "online", "online: device is offline (last seen 60 s ago)"),
    ("never-seen", {"online": False, "last_seen": 0.0}, {}, (), (), (),
     "online", "online: device is offline (never seen)"),
    ("draining", {"draining": True}, {}, (), (), (),
     "draining", "draining: device is draining: it takes no new replicas"),
    ("cpu", {"cpu_percent": 95.0}, {}, (), (), (),
     "cpu", "cpu: load 95.0% > max 90%"),
    ("hot", {"temperature_c": 84.0}, {}, (), (), (),
     "temperature", "temperature: 84.0 °C > max 80 °C"),
    ("disk", {"disk_free": 261 * MB}, {}, (), (), (),
     "disk", "disk: needs 10 MB for the artifact, 5.0 MB free after the 256 MB reserve"),
    ("disk-unknown", {"disk_free": 0}, {}, (), (), (),
     "disk", "disk: free space not reported yet"),
    ("memory-measured", {"memory_available": (64 + 23) * MB}, {}, (), (), (measured("d1", memory=41 * MB),),
     "memory", "memory: needs 41 MB (measured), 23 MB free after the 64 MB reserve"),
    ("memory-estimate", {"memory_available": (64 + 50) * MB}, {}, (), (), (),
     "memory", "memory: needs 60 MB (estimate), 50 MB free after the 64 MB reserve"),
    ("memory-class", {"memory_available": (64 + 23) * MB}, {}, (dev("peer", memory_available=3 * GB),), (),
     (measured("peer", memory=41 * MB),),
     "memory", "memory: needs 41 MB (class), 23 MB free after the 64 MB reserve"),
    ("memory-in-flight", {"memory_available": (64 + 100) * MB}, {}, (),
     (Placement("other", "d1", A76_INT8, state="downloading"),), (),
     "memory", "memory: needs 60 MB (estimate), 40 MB free after the 64 MB reserve and 60 MB promised to "
               "replicas not loaded yet"),
    ("memory-budget", {"memory_budget": 100 * MB}, {}, (),
     (Placement("other", "d1", VARIANTS[3], state="serving"),),
     (measured("d1", memory=41 * MB), measured("d1", memory=70 * MB, v=VARIANTS[3])),
     "memory", "memory: needs 41 MB (measured), the agent's 100 MB model budget has 30 MB left"),
    ("latency-device", {}, {"max_p95_ms": 20.0}, (), (), (measured("d1", p95=38.2),),
     "latency", "latency: measured p95 38.2 ms on this device > SLO 20 ms"),
    ("latency-class", {}, {"max_p95_ms": 20.0}, (dev("p1"), dev("p2"), dev("p3")), (),
     (measured("p1", p95=30.0), measured("p2", p95=38.2), measured("p3", p95=50.0)),
     "latency", "latency: p95 38.2 ms on aarch64/Cortex-A76 (median of 3 devices) > SLO 20 ms"),
    ("selector", {}, {"selector": {"zone": "b"}}, (), (), (),
     "selector", "selector: wants zone=b, device has zone=a"),
    ("selector-missing", {}, {"selector": {"tier": "prod"}}, (), (), (),
     "selector", "selector: wants tier=prod, device has no tier label"),
    ("arch", {"arch": "armv7l", "isa": frozenset({"neon"})}, {}, (), (), (),
     "arch", "arch: no variant for armv7l (model has aarch64, x86_64)"),
    ("no-variants", {}, {"model": "ghost"}, (), (), (),
     "arch", "arch: no variant for aarch64 (ghost@1 has no published variants)"),
    ("runtime", {"arch": "x86_64", "isa": VNNI, "runtimes": frozenset({"tflite_runtime"})}, {}, (), (), (),
     "runtime", "runtime: the x86_64 variants need onnxruntime; device has tflite_runtime"),
    ("isa", {"arch": "x86_64", "isa": frozenset({"sse4.2", "avx"})}, {}, (), (), (),
     "isa", "isa: every x86_64 variant needs ISA features the device lacks (x86_64-avx2 needs avx2, f16c, fma; "
            "x86_64-avx512-vnni needs avx2, avx512_vnni, avx512bw, avx512f, avx512vl, f16c, fma)"),
    ("precision", {"isa": frozenset({"neon"})}, {"precisions": ("fp16",)}, (), (), (),
     "precision", "precision: the device can run int8, fp32, the deployment accepts fp16"),
]


@pytest.mark.parametrize(("overrides", "spec_kw", "others", "placements", "measurements", "name", "reason"),
                         [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES])
def test_filter_rejects_with_its_reason(overrides, spec_kw, others, placements, measurements, name, reason):
    v = view(dev("d1", **overrides), *others, placements=placements, measured=measurements)
    s = spec(**spec_kw)
    (verdict,) = explain(v, s, device_id="d1")
    assert not verdict.feasible
    assert [(r.filter, r.reason) for r in verdict.rejections] == [(name, reason)]
    # The scheduler gives the same reason when the device is the only candidate.
    only = ClusterView(devices=[v.devices["d1"]], variants=VARIANTS, placements=placements, measured=measurements,
                       now=100.0)
    if others:  # class measurements need the class's other members
        only = v
    decision = schedule(only, s, 1, Planner(), rng=random.Random(0))
    assert decision.choices == [] or decision.choices[0].device != "d1"
    assert reason in [r.reason for r in decision.rejections if r.device == "d1"]


def test_every_filter_has_a_case() -> None:
    from fleet.scheduler.filters import DYNAMIC_FILTERS, STATIC_FILTERS

    covered = {c[6] for c in FILTER_CASES}
    assert {name for name, _ in DYNAMIC_FILTERS} | set(STATIC_FILTERS) <= covered


def test_explain_lists_every_failing_filter() -> None:
    bad = dev("d1", arch="armv7l", online=False, cpu_percent=99.0, labels={"zone": "a"})
    (verdict,) = explain(view(bad), spec(selector={"zone": "b"}), device_id="d1")
    assert [r.filter for r in verdict.rejections] == ["selector", "arch", "online", "cpu"]


def test_explain_scores_feasible_devices_and_orders_them_first() -> None:
    v = view(dev("busy", cpu_percent=80.0), dev("idle", cpu_percent=5.0), dev("off", online=False))
    verdicts = explain(v, spec())
    assert [x.device for x in verdicts] == ["idle", "busy", "off"]
    idle = verdicts[0]
    assert idle.variant == A76_INT8 and set(idle.scores) == {"binpack", "load"}
    assert "latency: not measured on this device or its class; allowed as a probe" in idle.notes
    assert "memory: 60 MB (estimate: 10 MB artifact × 2 + 40 MB onnxruntime)" in idle.notes


def test_explain_unknown_device() -> None:
    with pytest.raises(UnknownDeviceError, match="no device 'nope'"):
        explain(view(dev()), spec(), device_id="nope")


def test_unknown_latency_is_allowed_as_a_probe() -> None:
    decision = schedule(view(dev("new")), spec(max_p95_ms=5.0), 1, Planner(), rng=random.Random(0))
    assert [c.device for c in decision.choices] == ["new"]
    assert "latency" not in decision.choices[0].scores  # no opinion, neither reward nor penalty


def test_never_a_device_that_already_hosts_a_replica() -> None:
    placed = Placement("digits", "d1", A76_INT8, state="serving")
    v = view(dev("d1"), dev("d2"), placements=(placed,))
    decision = schedule(v, spec(), 2, Planner(), rng=random.Random(0))
    assert [c.device for c in decision.choices] == ["d2"] and decision.unplaced == 1
    assert decision.reason_summary == ("placed 1 of 2 replicas of digits; 1 unplaced: no other device fits "
                                       "(2 devices: 1 already run it)")
    (verdict,) = explain(v, spec(), device_id="d1")
    assert [r.reason for r in verdict.rejections] == ["replica: already runs a replica of digits"]


def test_unplaced_summary_counts_every_device() -> None:
    v = view(dev("a", arch="armv7l"), dev("b", cpu_percent=99.0), dev("c", memory_available=70 * MB))
    decision = schedule(v, spec(), 1, Planner(), rng=random.Random(0))
    assert decision.unplaced == 1
    assert decision.reason_summary == ("placed 0 of 1 replica of digits; 1 unplaced: no other device fits "
                                       "(3 devices: 1 arch, 1 cpu, 1 memory)")
    assert {r.device for r in decision.rejections} == {"a", "b", "c"}


# ------------------------------------------------------------------------------------ scorers

# (case, strategy, spec overrides, devices (the expected winner first), measurements, scorer)
SCORER_CASES: list[tuple[str, str, dict[str, Any], tuple[Device, ...], tuple[Measured, ...], str]] = [
    ("binpack-prefers-fuller", "binpack", {}, (dev("full", memory_available=1 * GB), dev("empty")), (), "binpack"),
    ("spread-prefers-emptier", "spread", {}, (dev("empty"), dev("full", memory_available=1 * GB)), (), "spread"),
    ("latency-lower-wins", "binpack", {}, (dev("fast"), dev("slow")),
     (measured("fast", p95=10.0), measured("slow", p95=30.0)), "latency"),
    ("latency-under-slo", "binpack", {"max_p95_ms": 40.0}, (dev("fast"), dev("slow")),
     (measured("fast", p95=12.0), measured("slow", p95=35.0)), "latency"),
    ("load-lower-wins", "binpack", {}, (dev("idle", cpu_percent=5.0), dev("busy", cpu_percent=70.0)), (), "load"),
]


@pytest.mark.parametrize(("strategy", "spec_kw", "devices", "measurements", "scorer"),
                         [c[1:] for c in SCORER_CASES], ids=[c[0] for c in SCORER_CASES])
def test_scorer_direction(strategy, spec_kw, devices, measurements, scorer):
    v = view(*devices, measured=measurements)
    s = spec(strategy=strategy, **spec_kw)
    by_id = {x.device: x for x in explain(v, s)}
    winner, loser = devices[0].id, devices[1].id
    assert -1.0 <= by_id[loser].scores[scorer] < by_id[winner].scores[scorer] <= 1.0
    for seed in range(5):
        decision = schedule(v, s, 1, Planner(), rng=random.Random(seed))
        assert decision.choices[0].device == winner


def test_anti_affinity_spreads_replicas_across_zones() -> None:
    devices = [dev(f"{z}{i}", labels={"zone": z}) for z in "ab" for i in range(3)]
    for seed in range(10):
        decision = schedule(view(*devices), spec(replicas=2), 2, Planner(), EXHAUSTIVE, random.Random(seed))
        zones = {d.labels["zone"] for d in devices if d.id in {c.device for c in decision.choices}}
        assert zones == {"a", "b"}
    # An existing replica in zone a sends the next one to zone b.
    existing = Placement("digits", "a0", A76_INT8, state="serving")
    v = view(*devices, placements=(existing,))
    decision = schedule(v, spec(), 1, Planner(), rng=random.Random(3))
    assert decision.choices[0].device.startswith("b") and decision.choices[0].scores["anti_affinity"] == 1.0


def test_scores_are_averaged_over_the_scorers_with_an_opinion() -> None:
    decision = schedule(view(dev()), spec(), 1, Planner(), rng=random.Random(0))
    choice = decision.choices[0]
    assert set(choice.scores) == {"binpack", "load"}
    assert choice.score == pytest.approx(sum(choice.scores.values()) / 2)


# ------------------------------------------------------------------------------------ variants

# (case, device overrides, precisions, expected variant (target, precision, runtime) or None)
VARIANT_CASES: list[tuple[str, dict[str, Any], tuple[str, ...], tuple[str, str, str] | None]] = [
    ("int8-first", {}, ("int8", "fp16", "fp32"), ("arm64-cortex-a76", "int8", "onnxruntime")),
    ("fp16-preferred", {}, ("fp16", "fp32"), ("arm64-cortex-a76", "fp16", "onnxruntime")),
    ("most-specific-target", {}, ("fp32",), ("arm64-cortex-a76", "fp32", "onnxruntime")),
    ("isa-subset-pi4", {"isa": frozenset({"neon"})}, ("fp16", "int8"), ("arm64-cortex-a72", "int8", "onnxruntime")),
    ("tflite-runtime-runs-litert", {"runtimes": frozenset({"tflite_runtime"})}, ("int8", "fp32"),
     ("arm64-cortex-a76", "int8", "litert")),
    ("litert", {"runtimes": frozenset({"litert"})}, ("int8",), ("arm64-cortex-a76", "int8", "litert")),
    ("litert-has-no-fp32", {"runtimes": frozenset({"litert"})}, ("fp32",), None),
    ("both-runtimes-onnx-wins-ties", {"runtimes": frozenset({"onnxruntime", "litert"})}, ("int8",),
     ("arm64-cortex-a76", "int8", "onnxruntime")),
    ("vnni", {"arch": "x86_64", "isa": VNNI}, ("int8",), ("x86_64-avx512-vnni", "int8", "onnxruntime")),
    ("avx2-only", {"arch": "x86_64", "isa": AVX2 | {"avx_vnni"}}, ("int8",), ("x86_64-avx2", "int8", "onnxruntime")),
    ("armv7l", {"arch": "armv7l", "isa": frozenset({"neon"})}, ("int8",), None),
]


@pytest.mark.parametrize(("overrides", "precisions", "expected"), [c[1:] for c in VARIANT_CASES],
                         ids=[c[0] for c in VARIANT_CASES])
def test_variant_for(overrides, precisions, expected):
    chosen = variant_for(dev(**overrides), VARIANTS, spec(precisions=precisions))
    assert (None if chosen is None else (chosen.target, chosen.precision, chosen.runtime)) == expected


def test_estimate_memory_sources() -> None:
    v = view(dev("d1"), dev("peer"), dev("x86", arch="x86_64", isa=AVX2, cpu_model="i5"),
             measured=(measured("peer", memory=41 * MB),))
    assert estimate_memory(A76_INT8, v.devices["peer"], v) == (41 * MB, "measured")
    assert estimate_memory(A76_INT8, v.devices["d1"], v) == (41 * MB, "class")
    assert estimate_memory(A76_INT8, v.devices["x86"], v) == (60 * MB, "estimate")


# ------------------------------------------------------------------------------------ planner


def test_two_replicas_in_one_pass_do_not_both_take_the_last_100_mb() -> None:
    v = view(dev("d1", memory_available=(64 + 100) * MB))
    planner = Planner()
    first = schedule(v, spec(name="digits-a"), 1, planner, rng=random.Random(0))
    second = schedule(v, spec(name="digits-b"), 1, planner, rng=random.Random(0))
    assert [c.device for c in first.choices] == ["d1"] and second.unplaced == 1
    assert planner.memory_promised("d1") == 60 * MB
    assert [r.reason for r in second.rejections if r.device == "d1"] == [
        "memory: needs 60 MB (estimate), 40 MB free after the 64 MB reserve and 60 MB promised to replicas "
        "not loaded yet"]
    # Cancelling the first bind releases its promise.
    planner.unbind(planner.binds[0])
    assert planner.memory_promised("d1") == 0 and planner.binds == []
    assert schedule(v, spec(name="digits-b"), 1, planner, rng=random.Random(0)).unplaced == 0


def test_planner_apply_and_unbind_of_existing_replica() -> None:
    existing = Placement("digits", "d1", A76_INT8, state="serving")
    v = view(dev("d1"), dev("d2"), placements=(existing,))
    planner = Planner()
    planner.unbind(existing)
    decision = schedule(v, spec(), 1, planner, rng=random.Random(0))
    assert [c.device for c in decision.choices] == ["d2"]  # d1 still blocked while it unloads
    assert planner.memory_promised("d1") == 0  # an unbind credits nothing back
    with pytest.raises(ValueError, match="already bound"):
        planner.bind(planner.binds[0], memory_bytes=0, disk_bytes=0)
    planner.apply(v)
    assert set(v.placements_of("digits")) == {"d2"}


# ------------------------------------------------------------------------------------ sampling


def random_fleet(n: int, seed: int) -> ClusterView:
    rng = random.Random(seed)
    devices = []
    for i in range(n):
        arch, isa = rng.choice([("aarch64", A76), ("aarch64", frozenset({"neon"})), ("x86_64", AVX2),
                                ("armv7l", frozenset({"neon"}))])
        devices.append(dev(f"d{i:03d}", arch=arch, isa=isa, online=rng.random() < 0.8,
                           cpu_percent=rng.uniform(0, 100), memory_available=int(rng.uniform(50, 400) * MB),
                           temperature_c=rng.uniform(40, 90), labels={"zone": rng.choice("abc")}))
    measurements = [measured(d.id, p95=rng.uniform(1, 40)) for d in devices if rng.random() < 0.5]
    return view(*devices, measured=tuple(measurements))


def test_sampling_never_picks_an_infeasible_device() -> None:
    v = random_fleet(300, seed=1)
    s = spec(max_p95_ms=25.0)
    feasible = {x.device for x in explain(v, s) if x.feasible}
    assert 0 < len(feasible) < 100
    small_k = dataclasses.replace(DEFAULTS, sample_size=3)
    for seed in range(40):
        decision = schedule(v, s, 3, Planner(), small_k, random.Random(seed))
        chosen = [c.device for c in decision.choices]
        assert len(chosen) == 3 and len(set(chosen)) == 3 and set(chosen) <= feasible
        assert not {r.device for r in decision.rejections} & feasible


def test_exhaustive_picks_explains_best() -> None:
    v = random_fleet(200, seed=2)
    best = explain(v, spec())[0]
    decision = schedule(v, spec(), 1, Planner(), EXHAUSTIVE, random.Random(0))
    assert decision.choices[0].score == pytest.approx(best.score)


def test_seeded_rng_is_deterministic() -> None:
    v = random_fleet(300, seed=3)
    runs = [schedule(v, spec(replicas=5), 5, Planner(), rng=random.Random(42)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert len(runs[0].choices) == 5


def test_count_covering_every_device_places_on_all_that_fit() -> None:
    v = random_fleet(120, seed=4)
    feasible = {x.device for x in explain(v, spec()) if x.feasible}
    decision = schedule(v, spec(replicas=None), 10_000, Planner(), rng=random.Random(0))
    assert {c.device for c in decision.choices} == feasible
    assert decision.unplaced == 10_000 - len(feasible)


def test_static_index_survives_telemetry_and_follows_capabilities() -> None:
    v = view(dev("d1"), dev("d2", arch="armv7l"))
    index = v.static_index(spec())
    assert index.ids == ["d1"]
    v.upsert_device(dataclasses.replace(v.devices["d1"], cpu_percent=50.0))  # telemetry only
    assert v.static_index(spec()) is index and index.ids == ["d1"]
    v.upsert_device(dataclasses.replace(v.devices["d2"], arch="aarch64"))  # re-announced capabilities
    assert sorted(index.ids) == ["d1", "d2"]
    v.remove_device("d1")
    assert index.ids == ["d2"]
    v.set_variants("digits", 1, [])  # a new set of variants drops the cached index
    assert v.static_index(spec()).ids == []


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'pack'"):
        schedule(view(dev()), spec(strategy="pack"), 1, Planner())
