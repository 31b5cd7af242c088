"""The requests ``edgectl up`` sends: HTTP round-robin over the serving replicas, each answer
checked against its label.

    load = LoadGenerator(inputs, labels, "input", rate=10, seed=0).start()
    load.targets = (("dev-01", 40123),)     # set by the caller as replicas come and go
    load.stats()                            # RequestStats
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RequestStats:
    sent: int = 0
    ok: int = 0  # HTTP 200 with an output
    correct: int = 0  # ... whose top-1 matches the label
    failed: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    by_device: Mapping[str, int] = field(default_factory=dict)  # answered requests per device

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.ok if self.ok else None


class LoadGenerator:
    """Sends ``rate`` requests/s in total to the devices in ``targets`` (set by the caller)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, input_name: str, *, rate: float, seed: int,
                 deployment: str) -> None:
        order = list(range(len(labels)))
        random.Random(seed).shuffle(order)
        # Bodies are encoded once: the load thread should measure the agents, not json.dumps.
        self._samples = [(json.dumps({"inputs": {input_name: inputs[i : i + 1].tolist()}}).encode(), int(labels[i]))
                         for i in order]
        self.path = f"/v1/models/{deployment}:predict"
        self.rate = rate
        self.targets: tuple[tuple[str, int], ...] = ()  # (device, HTTP port); replaced, never mutated
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._sent = self._ok = self._correct = self._failed = 0
        self._by_device: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=5000)
        self._conns: dict[int, http.client.HTTPConnection] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="up-requests", daemon=True)

    def start(self) -> LoadGenerator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(REQUEST_TIMEOUT_S + 1)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _post(self, port: int, body: bytes) -> tuple[int, Any]:
        """One request on the port's keep-alive connection; a connection the agent closed while
        idle (its timeout is 30 s, so at low rates) is replaced once, as browsers do."""
        for attempt in (1, 2):
            conn = self._conns.get(port)
            reused = conn is not None
            if conn is None:
                conn = self._conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
            try:
                conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conns.pop(port, None)
                conn.close()
                if not reused or attempt == 2:
                    raise
            except (OSError, http.client.HTTPException):
                self._conns.pop(port, None)
                conn.close()
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def stats(self) -> RequestStats:
        with self._lock:
            lat = sorted(self._latencies)
            return RequestStats(
                sent=self._sent, ok=self._ok, correct=self._correct, failed=self._failed,
                p50_ms=round(lat[len(lat) // 2], 2) if lat else None,
                p95_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.95))], 2) if lat else None,
                by_device=dict(sorted(self._by_device.items())),
            )

    def _run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + 1 / self.rate, time.monotonic() - 1.0)  # no burst after a stall
            targets = self.targets
            if not targets:
                continue
            device, port = targets[i % len(targets)]
            body, label = self._samples[i % len(self._samples)]
            i += 1
            self._one(device, port, body, label)

    def _one(self, device: str, port: int, body: bytes, label: int) -> None:
        t0 = time.perf_counter()
        error = None
        predicted = None
        try:
            status, doc = self._post(port, body)
            if status != 200:
                error = f"{device}: HTTP {status}: {doc.get('error', '?')}"
            else:
                row = next(iter(doc["outputs"].values()))[0]
                predicted = max(range(len(row)), key=row.__getitem__)
        except (OSError, http.client.HTTPException, ValueError, LookupError, TypeError, AttributeError,
                StopIteration) as exc:
            error = f"{device}: {exc.__class__.__name__}: {exc}"
        ms = (time.perf_counter() - t0) * 1e3
        with self._lock:
            self._sent += 1
            if error is None:
                self._ok += 1
                self._correct += predicted == label
                self._by_device[device] += 1
                self._latencies.append(ms)
            else:
                self._failed += 1
                self.errors[error] += 1
