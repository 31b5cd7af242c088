"""A controller's side for agent tests: an artifact store, a chunk server, desired-state and report
helpers, on any transport (the in-memory broker or a real Mosquitto)."""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl import wire
from edgectl.transport.base import Message, Transport
from fleet.artifacts import ArtifactRef, ArtifactStore, ChunkServer


@dataclass
class ControllerSide:
    transport: Transport
    store: ArtifactStore
    device_id: str
    server: ChunkServer = field(init=False)
    reports: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    seen: list[dict[str, Any]] = field(default_factory=list)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    generation: int = 0

    def __post_init__(self) -> None:
        self.server = ChunkServer(self.transport, self.store)
        self.server.start()
        self.transport.subscribe(wire.report_topic(self.device_id), self._on_report)
        self.transport.subscribe(wire.telemetry_topic(self.device_id),
                                 lambda m: self.telemetry.append(json.loads(m.payload)))
        self.transport.subscribe(wire.state_topic(self.device_id), self._on_state)

    def _on_report(self, msg: Message) -> None:
        self.reports.put(json.loads(msg.payload))

    def _on_state(self, msg: Message) -> None:
        if msg.payload:
            self.states.append(json.loads(msg.payload))

    def publish(self, folder: Path) -> ArtifactRef:
        return self.store.put_dir(folder)

    def desire(self, *deployments: wire.Deployment, generation: int | None = None) -> None:
        self.generation = self.generation + 1 if generation is None else generation
        payload = wire.desired_message(wire.Desired(self.generation, tuple(deployments)))
        self.transport.publish(wire.desired_topic(self.device_id), payload, retain=True)

    def wait_for(self, deployment: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next report of ``state`` for ``deployment``; every report is kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {state!r} report for {deployment} in {timeout} s; saw {self.trail()}")
            try:
                rep = self.reports.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(rep)
            if rep["deployment"] == deployment and rep["state"] == state:
                return rep

    def trail(self, deployment: str | None = None) -> list[str]:
        return [r["state"] for r in self.seen if deployment is None or r["deployment"] == deployment]


def deployment(name: str, ref: ArtifactRef, variant_file: str, **guard: float) -> wire.Deployment:
    return wire.Deployment(name, ref.manifest_sha256, ref.manifest_size, variant_file, wire.Guard(**guard))
