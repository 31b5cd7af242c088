"""The ``ChaosFleet`` of one ``edgectl up`` run: how each fault in ``fleet/chaos.py`` reaches the
broker, the controller process, the devices' links (``fleet/linkproxy.py``) and the in-process
agents. Kept apart from ``fleet/up.py``, which only starts it once the deployment serves."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgectl import wire

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig
    from edge_agent.daemon import Agent
    from fleet.up import _Up


def _real_free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def _no_free_space(path: Path) -> int:
    return 0


class UpChaosFleet:
    def __init__(self, up: _Up) -> None:
        self.up = up
        self.deployment = up.deployment_name
        self.replicas = up.o.replicas
        self._configs: dict[str, AgentConfig] = {}
        self._lock = threading.Lock()

    def _agent(self, device: str) -> Agent | None:
        return next((a for a in self.up.agents if a.device_id == device), None)

    def device_ids(self) -> list[str]:
        return [d.id for d in self.up.devices]

    def kill_device(self, device: str) -> None:
        agent = self._agent(device)
        if agent is None:
            raise KeyError(f"{device} is not running")
        with self._lock:
            self._configs[device] = agent.cfg
            self.up.agents.remove(agent)
        agent.crash()
        self.up.set_http_port(device, None)

    def restart_device(self, device: str) -> None:
        with self._lock:
            cfg = self._configs.pop(device)
        agent = self.up.start_agent(cfg)
        self.up.set_http_port(device, agent.http.port if agent.http is not None else None)
        self.event(f"chaos: {device} started again from its data dir")

    def cut_link(self, device: str, seconds: float) -> None:
        self.up.proxies[device].cut(seconds)

    def throttle_link(self, device: str, bytes_per_s: float | None) -> None:
        self.up.proxies[device].throttle(bytes_per_s)

    def corrupt_link(self, device: str, chunks: int) -> int:
        proxy = self.up.proxies[device]
        proxy.corrupt_next(chunks, wire.chunk_reply_topic(device))
        return proxy.corrupted

    def fill_disk(self, device: str, full: bool) -> None:
        agent = self._agent(device)
        if agent is not None:
            agent.fetcher.free_space = _no_free_space if full else _real_free_space

    def kill_broker(self) -> None:
        assert self.up.broker is not None
        self.up.broker.kill()

    def start_broker(self) -> None:
        assert self.up.broker is not None
        self.up.broker.start()  # its port is known now: the same one again

    def kill_controller(self) -> int:
        assert self.up.ctl_proc is not None
        return self.up.ctl_proc.kill() or 0

    def start_controller(self) -> int:
        assert self.up.ctl_proc is not None
        return self.up.ctl_proc.start()

    def data_dirs(self) -> dict[str, Path]:
        return {d.id: self.up.run_dir / "devices" / d.id for d in self.up.devices}

    def trusted_keys(self) -> dict[str, bytes]:
        from edge_agent.verify import load_trusted_key_bytes

        return load_trusted_key_bytes((self.up.build.public_key.resolve(),))

    def event(self, text: str) -> None:
        self.up.event(text)


def replace_port(devices: list[Any], device: str, port: int | None) -> None:
    for i, d in enumerate(devices):
        if d.id == device:
            devices[i] = dataclasses.replace(d, http_port=port)
