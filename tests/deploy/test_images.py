"""The agent images (Dockerfile.amd64, Dockerfile.arm64) built by scripts/build_images.sh and run
for real: each container (arm64 under qemu) joins the host's Mosquitto, follows its desired state,
pulls an artifact compiled on this x86 host for its arch, self-tests it, and answers an inference
that matches this host's output of the same artifact within the manifest's tolerance.

Needs root (dockerd, binfmt, mmdebstrap); a host that cannot build or run the images fails here,
it never skips. The first run builds the bases (~2 min each) and both images (~10 min); later
runs reuse ~/.cache/edgectl/base and docker's layer cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.artifacts import ArtifactStore
from tests.edge_agent.agent_rig import ControllerSide, deployment, http_json
from tests.mosquitto import free_port

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.mqtt]
REPO = Path(__file__).resolve().parents[2]
# Image arch → the compile target whose artifacts it runs, and its platform.machine().
ARCHES = {"amd64": ("x86_64-avx2", "x86_64"), "arm64": ("arm64-cortex-a72", "aarch64")}
# The arm64 container emulates a Pi 4's core (QEMU_CPU=cortex-a72), as `--verify-on arm64` does:
# qemu's default `max` CPU announces SME, whose XNNPACK int8 kernels give wrong answers under
# qemu 7.2 and which no Pi has. The agent reads that CPU's features from AT_HWCAP; /proc/cpuinfo
# is still the host's x86 text (qemu 7.2 fakes it only for a few other arches), and
# onnxruntime's cpuinfo library needs an arm64 one, so the container gets what a Raspberry Pi 4
# (4x Cortex-A72, Linux 6.1) prints.
PI4_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
    "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(4)
) + "Revision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"


def _run(*cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def agent_images() -> dict[str, str]:
    env = {**os.environ, "PYTHON": sys.executable}
    t0 = time.monotonic()
    proc = subprocess.run([str(REPO / "scripts" / "build_images.sh")], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_images.sh failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                    f"{proc.stderr[-4000:]}", pytrace=False)
    print(f"images built in {time.monotonic() - t0:.0f} s:\n{proc.stdout}")
    return {arch: f"edgectl-agent:{arch}" for arch in ARCHES}


def _variants(artifacts: Any, arch: str) -> list[str]:
    """int8 ONNX, and on LiteRT targets the TFLite variant (int8 as soon as the compiler emits it)."""
    target = ARCHES[arch][0]
    names = {v["variant"] for v in artifacts.variants(target)}
    picked = ["int8"]
    if "tflite-int8" in names:
        picked.append("tflite-int8")
    elif "tflite-fp32" in names:
        picked.append("tflite-fp32")
    return picked


CASES = [("amd64", "int8"), ("arm64", "int8"), ("arm64", "tflite")]


class Container:
    """One agent container on the host network, its config and key in a read-only mount."""

    def __init__(self, image: str, tmp_path: Path, broker_url: str, public_key: Path, device_id: str,
                 cpuinfo: str | None = None) -> None:
        self.name = f"edgectl-test-{device_id}-{os.getpid()}"
        self.port = free_port()
        conf = tmp_path / "etc"
        conf.mkdir()
        (conf / "fleet.pub").write_bytes(public_key.read_bytes())
        (conf / "agent.toml").write_text(
            f'device_id = "{device_id}"\ndata_dir = "/var/lib/edgectl-agent"\ntrusted_keys = ["fleet.pub"]\n'
            f'telemetry_interval_s = 1\ntick_s = 0.2\n[broker]\nurl = "{broker_url}"\nkeepalive_s = 10\n'
            f"[http]\nport = {self.port}\n[fetch]\ntimeout_s = 10\n"
        )
        mounts = ["-v", f"{conf}:/etc/edgectl:ro"]
        if cpuinfo is not None:
            (tmp_path / "cpuinfo").write_text(cpuinfo)
            (tmp_path / "cpuinfo").chmod(0o644)
            mounts += ["-v", f"{tmp_path / 'cpuinfo'}:/proc/cpuinfo:ro", "-e", "QEMU_CPU=cortex-a72"]
        for p in (conf, *conf.iterdir()):  # the container runs as a non-root user
            p.chmod(0o755 if p.is_dir() else 0o644)
        tmp_path.chmod(0o755)
        _run("docker", "rm", "-f", "-v", self.name, check=False)
        _run("docker", "run", "-d", "--name", self.name, "--network", "host", *mounts,
             "-e", f"EDGECTL_HEALTH_URL=http://127.0.0.1:{self.port}/healthz", image,
             "--config", "/etc/edgectl/agent.toml", "--log-level", "DEBUG")

    def logs(self) -> str:
        proc = _run("docker", "logs", "--tail", "60", self.name, check=False)
        return proc.stdout + proc.stderr

    def http(self, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
        return http_json(self.port, method, path, body, timeout)

    def running(self) -> bool:
        return _run("docker", "inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip() == "true"

    def wait_for(self, ctl: ControllerSide, state: str, timeout: float) -> None:
        """``ctl.wait_for`` that gives up at once, with the container's log, when the container exits."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ctl.wait_for("digits", state, timeout=5)
                return
            except AssertionError as exc:
                if not self.running() or time.monotonic() > deadline:
                    raise AssertionError(f"{exc}\n--- container log ---\n{self.logs()}") from None

    def remove(self) -> None:
        _run("docker", "rm", "-f", "-v", self.name, check=False)


@pytest.mark.parametrize(("arch", "kind"), CASES, ids=[f"{a}-{k}" for a, k in CASES])
def test_image_pulls_selftests_and_serves_the_promised_answer(
    arch: str, kind: str, agent_images, digits_artifacts, mosquitto, tmp_path: Path
) -> None:
    from compiler.fidelity import run

    a = digits_artifacts
    target, machine = ARCHES[arch]
    variant = next(v for v in _variants(a, arch) if (v == "int8") == (kind == "int8"))
    device = f"{arch}-{kind}"
    t = MqttTransport(MqttSettings(url=mosquitto.url, client_id=f"ctl-{device}"))
    ctl = ControllerSide(t, ArtifactStore(tmp_path / "store"), device)
    t.start()
    assert t.wait_connected(10)
    box = tmp_path / "box"
    box.mkdir()
    container = Container(agent_images[arch], box, mosquitto.url, a.public_key, device,
                          cpuinfo=PI4_CPUINFO if arch == "arm64" else None)
    try:
        ref = ctl.publish(a.folder(target))
        entry = a.variant(target, variant)
        ctl.desire(deployment("digits", ref, entry["file"]))
        container.wait_for(ctl, "serving", timeout=300)  # arm64: emulated imports and probe
        assert ctl.trail("digits")[-1] == "serving" and "failed" not in ctl.trail("digits")
        deadline = time.monotonic() + 30  # the retained state may come after the first reports
        while not any(s.get("capabilities", s).get("arch") == machine for s in ctl.states if s.get("online")):
            assert time.monotonic() < deadline, ctl.states
            time.sleep(0.1)
        sample = a.sample(1)
        status, body = container.http("POST", "/v1/models/digits:predict",
                                      json.dumps({"inputs": {k: v.tolist() for k, v in sample.items()}}).encode())
        assert status == 200, body
        got = np.asarray(body["outputs"]["output"], dtype=np.float32)
        host = run(a.artifact(target, variant), sample).values[0]  # the same artifact on this x86 host
        assert got.shape == host.shape
        assert np.abs(got - host).max() <= entry["selftest_atol"], (np.abs(got - host).max(), entry["selftest_atol"])
        assert got.argmax(axis=1).tolist() == host.argmax(axis=1).tolist()
        # The image's own HEALTHCHECK command passes, and the agent is not root.
        check = json.loads(_run("docker", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", container.name).stdout)
        assert check[0] == "CMD"
        _run("docker", "exec", container.name, *check[1:], timeout=120)
        assert _run("docker", "exec", container.name, "id", "-u").stdout.strip() != "0"
        assert _run("docker", "exec", container.name, "uname", "-m").stdout.strip() == machine
    finally:
        container.remove()
        t.stop()


def test_the_controller_runs_from_the_agent_image(agent_images, digits_artifacts, mosquitto, tmp_path: Path) -> None:
    """deploy/k8s/controller.yaml runs `edgectl fleet serve` from the agent image: here the amd64
    image as that non-root user, its SQLite store on the image's volume, against the host's
    Mosquitto, and a real agent (a host process) shows up online in its status."""
    from tests.edge_agent.agent_rig import AgentProcess

    port = free_port()
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "fleet.pub").write_bytes(digits_artifacts.public_key.read_bytes())
    (conf / "fleet.toml").write_text(
        f'broker_url = "{mosquitto.url}"\nstore_url = "/var/lib/edgectl-agent/fleet.db"\n'
        f'artifact_dir = "/var/lib/edgectl-agent/artifacts"\ntrusted_keys = ["fleet.pub"]\n'
        f'http_host = "127.0.0.1"\nhttp_port = {port}\n'
    )
    for p in (tmp_path, conf, *conf.iterdir()):  # the container runs as a non-root user
        p.chmod(0o755 if p.is_dir() else 0o644)
    name = f"edgectl-test-controller-{os.getpid()}"
    _run("docker", "rm", "-f", "-v", name, check=False)
    _run("docker", "run", "-d", "--name", name, "--network", "host", "-v", f"{conf}:/etc/edgectl:ro",
         "--entrypoint", "edgectl", agent_images["amd64"], "fleet", "serve", "--config", "/etc/edgectl/fleet.toml")
    agent = AgentProcess(tmp_path, "dev-host-1", mosquitto.url, digits_artifacts.public_key)
    try:
        agent.start()
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = http_json(port, "GET", "/v1/status", timeout=5)
            except OSError:  # not listening yet
                status, body = 0, None
            devices = {d["id"]: d for d in body["devices"]} if status == 200 else {}
            if devices.get("dev-host-1", {}).get("online"):
                break
            logs = _run("docker", "logs", "--tail", "30", name, check=False)
            assert time.monotonic() < deadline, (status, body, logs.stdout[-2000:], logs.stderr[-2000:])
            time.sleep(0.5)
        assert http_json(port, "GET", "/healthz")[0] == 200
        assert _run("docker", "exec", name, "id", "-u").stdout.strip() != "0"
    finally:
        agent.terminate()
        _run("docker", "rm", "-f", "-v", name, check=False)
