"""Resource sampling (temperature from psutil or a fake sysfs tree, never invented) and the message."""

from __future__ import annotations

import threading
from collections import namedtuple
from pathlib import Path

import pytest

from edge_agent.metrics import MetricsSnapshot
from edge_agent.telemetry import ResourceSampler, telemetry_message
from edgectl.wire import decode

shwtemp = namedtuple("shwtemp", "label current high critical")  # psutil's entry shape


def _zone(root: Path, n: int, kind: str, millidegrees: str) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(millidegrees + "\n")


def _sampler(tmp_path: Path, sensors: dict | None = None, thermal_root: Path | None = None) -> ResourceSampler:
    return ResourceSampler(
        tmp_path, thermal_root=thermal_root or tmp_path / "no-thermal", read_sensors=lambda: sensors or {}
    )


def test_sample_has_every_resource(tmp_path):
    sample = _sampler(tmp_path).sample()
    assert set(sample) == {
        "cpu_percent", "load", "memory_total_bytes", "memory_available_bytes", "memory_percent",
        "rss_bytes", "disk_free_bytes", "disk_total_bytes", "temperature_c",
    }
    assert 0.0 <= sample["cpu_percent"] <= 100.0
    assert len(sample["load"]) == 3
    assert 0 < sample["memory_available_bytes"] <= sample["memory_total_bytes"]
    assert sample["rss_bytes"] > 10 << 20
    assert 0 < sample["disk_free_bytes"] <= sample["disk_total_bytes"]


def test_cpu_percent_sees_a_busy_core_even_when_sampled_from_another_thread(tmp_path):
    sampler = _sampler(tmp_path)  # primed here, in the main thread
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        stop.wait(0.3)
        result: list[float] = []
        reader = threading.Thread(target=lambda: result.append(sampler.cpu_percent()))
        reader.start()
        reader.join()
    finally:
        stop.set()
        spinner.join()
    assert result[0] > 10.0  # one spinning thread on a 2-core box is ~50%


def test_no_sensor_anywhere_gives_none(tmp_path):
    assert _sampler(tmp_path).sample()["temperature_c"] is None


def test_raspberry_pi_thermal_zone(tmp_path):
    root = tmp_path / "thermal"
    _zone(root, 0, "cpu-thermal", "47236")
    assert _sampler(tmp_path, thermal_root=root).temperature_c() == 47.2


def test_sysfs_prefers_the_cpu_zone_and_skips_broken_and_foreign_ones(tmp_path):
    root = tmp_path / "thermal"
    _zone(root, 0, "acpitz", "27800")
    _zone(root, 1, "iwlwifi_1", "41000")
    _zone(root, 2, "x86_pkg_temp", "not-a-number")
    _zone(root, 3, "x86_pkg_temp", "58000")
    _zone(root, 4, "INT3400 Thermal", "20000")
    assert _sampler(tmp_path, thermal_root=root).temperature_c() == 58.0


def test_sysfs_jetson_zones(tmp_path):
    root = tmp_path / "thermal"
    for n, (kind, temp) in enumerate(
        [("cpu-thermal", "51500"), ("gpu-thermal", "49000"), ("soc0-thermal", "50200"), ("tj-thermal", "52100")]
    ):
        _zone(root, n, kind, temp)
    assert _sampler(tmp_path, thermal_root=root).temperature_c() == 51.5


def test_sysfs_only_non_cpu_zones_gives_none(tmp_path):
    root = tmp_path / "thermal"
    _zone(root, 0, "iwlwifi_1", "41000")
    _zone(root, 1, "cpu-thermal", "-273150")  # a sensor that is not there
    assert _sampler(tmp_path, thermal_root=root).temperature_c() is None


@pytest.mark.parametrize(
    ("sensors", "expected"),
    [
        ({"coretemp": [shwtemp("Package id 0", 61.0, 100, 100), shwtemp("Core 0", 64.0, 100, 100)],
          "nvme": [shwtemp("Composite", 39.9, 80, 85)]}, 61.0),
        ({"k10temp": [shwtemp("Tctl", 55.25, None, None), shwtemp("Tccd1", 49.0, None, None)]}, 55.2),
        ({"cpu_thermal": [shwtemp("", 44.303, None, None)]}, 44.3),
        ({"acpitz": [shwtemp("", 27.8, None, None)], "coretemp": [shwtemp("Core 0", 50.0, None, None),
                                                                   shwtemp("Core 1", 53.0, None, None)]}, 53.0),
        ({"nvme": [shwtemp("Composite", 39.9, 80, 85)], "iwlwifi_1": [shwtemp("", 41.0, None, None)]}, None),
        ({"coretemp": [shwtemp("Package id 0", 0.0, None, None)]}, 0.0),
        ({"coretemp": [shwtemp("Package id 0", 255.0, None, None)]}, None),
    ],
    ids=["coretemp-package", "k10temp-tctl", "pi-cpu-thermal", "cpu-over-acpi", "only-foreign", "zero-is-a-reading",
         "implausible"],
)
def test_psutil_sensors(tmp_path, sensors, expected):
    assert _sampler(tmp_path, sensors).temperature_c() == expected


def test_psutil_without_a_cpu_sensor_falls_back_to_sysfs(tmp_path):
    root = tmp_path / "thermal"
    _zone(root, 0, "cpu-thermal", "52000")
    sampler = _sampler(tmp_path, {"nvme": [shwtemp("Composite", 39.9, 80, 85)]}, thermal_root=root)
    assert sampler.temperature_c() == 52.0


def test_telemetry_message_round_trips_through_the_wire():
    snap = MetricsSnapshot(requests=120, errors=2, p50_ms=2.0999999999999996, p95_ms=4.5, p99_ms=None)
    payload = telemetry_message(
        "pi-01", {"cpu_percent": 12.5, "temperature_c": None},
        {"digits": snap, "iforest": {"requests": 0, "errors": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}},
        dropped=3, ts=1_767_225_600.123456,
    )
    msg = decode(payload, "telemetry")
    assert msg["device"] == "pi-01" and msg["dropped"] == 3 and msg["ts"] == 1_767_225_600.123
    assert msg["resources"] == {"cpu_percent": 12.5, "temperature_c": None}
    assert msg["models"]["digits"] == {"requests": 120, "errors": 2, "p50_ms": 2.1, "p95_ms": 4.5, "p99_ms": None}
    assert msg["models"]["iforest"]["requests"] == 0


def test_missing_data_dir_reports_no_disk_numbers(tmp_path):
    sample = _sampler(tmp_path / "gone").sample()
    assert sample["disk_free_bytes"] is None and sample["disk_total_bytes"] is None
