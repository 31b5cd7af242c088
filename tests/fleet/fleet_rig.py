"""Fleet test helpers: new model versions made from a real compile output, and a fleet of real
agents on the in-memory broker around a real controller."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import AgentConfig, HttpConfig
from edge_agent.daemon import Agent, state_message
from edgectl import wire
from edgectl.hashing import sha256_file
from edgectl.manifest import attach_signature, dumps
from edgectl.signing import load_private_key
from edgectl.transport.base import Will
from edgectl.transport.memory import MemoryBroker, MemoryTransport
from fleet.config import FleetConfig, OverloadConfig
from fleet.scheduler import DEFAULTS


def make_version(src: Path, dst: Path, private_key: Path, *, tag: str, break_selftest: bool = False) -> Path:
    """A copy of a compile output that is a new version (its manifests differ), re-signed.

    ``break_selftest`` perturbs the recorded reference outputs, so every agent's self-test of
    the new version fails: a bad release, as far as the devices can tell."""
    shutil.copytree(src, dst)
    key = load_private_key(private_key)
    for folder in (p for p in dst.iterdir() if (p / "manifest.json").is_file()):
        manifest = json.loads((folder / "manifest.json").read_text())
        if break_selftest:
            path = folder / "selftest.npz"
            with np.load(path) as npz:
                arrays = {k: (npz[k] + 100.0 if k.startswith("output.") else npz[k]) for k in npz.files}
            np.savez(path, **arrays)
            manifest["files"]["selftest.npz"] = sha256_file(path)
        manifest["toolchain"]["release"] = tag
        (folder / "manifest.json").write_bytes(dumps(attach_signature(manifest, key)))
    return dst


def wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class MemoryFleet:
    """N real agents (x86, this host) on one in-memory broker."""

    def __init__(self, tmp_path: Path, public_key: Path) -> None:
        self.tmp_path = tmp_path
        self.public_key = public_key
        self.broker = MemoryBroker()
        self.agents: dict[str, Agent] = {}

    def fleet_config(self, **over: Any) -> FleetConfig:
        # Every agent here reports this host's CPU, which whatever else runs on the machine loads:
        # with the default 90 % limit a busy host left every device unschedulable until a calm
        # sample came in (tests took 20-60 s instead of 2, or timed out). The CPU filter and the
        # overload move have their own tests with fake devices; here they are switched off.
        base: dict[str, Any] = dict(store_url=str(self.tmp_path / "fleet.db"), artifact_dir=self.tmp_path / "artifacts",
                                    trusted_keys=(self.public_key,), heartbeat_timeout_s=30.0,
                                    reconcile_interval_s=0.1,
                                    scheduler=dataclasses.replace(DEFAULTS, max_cpu_percent=100.0),
                                    overload=OverloadConfig(cpu_percent=100.0))
        base.update(over)
        return FleetConfig(**base)

    def start_agent(self, device_id: str, labels: dict[str, str] | None = None) -> Agent:
        cfg = AgentConfig(device_id=device_id, data_dir=self.tmp_path / device_id, trusted_keys=(self.public_key,),
                          http=HttpConfig(enabled=False), telemetry_interval_s=0.2, tick_s=0.05,
                          labels=tuple(sorted((labels or {}).items())))
        will = Will(wire.state_topic(device_id), state_message(device_id, False, None))
        agent = Agent(cfg, transport=MemoryTransport(self.broker, f"edgectl-agent-{device_id}", will=will))
        agent.start()
        self.agents[device_id] = agent
        return agent

    def kill_agent(self, device_id: str) -> None:
        """An abrupt death: the broker publishes its will; nothing is cleaned up."""
        agent = self.agents.pop(device_id)
        transport = agent.transport
        assert isinstance(transport, MemoryTransport)
        agent._stop.set()
        transport.kill()
        agent.server.close()

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()

    def serving(self, deployment: str) -> dict[str, str]:
        """device → version serving ``deployment``, from the agents themselves."""
        return {d: a.server.version(deployment) for d, a in self.agents.items() if deployment in a.server}
