"""Fetch one content-addressed file from the artifact server in chunks over MQTT 5.

Requests go to ``edgectl/v1/artifacts/get`` with this device's reply topic and a correlation id;
a window of chunks is in flight at once. Each reply's bytes are checked against the sha256 the
server sent with them (a chunk damaged in flight is asked for again), written in order to
``partial/<sha256>.part``, and the whole file is checked against the sha256 it was asked for —
the one the signed manifest lists — before it is handed over. A disconnect, a broker restart
or an agent restart resumes from the bytes already verified on disk::

    fetcher = ChunkFetcher(transport, "dev-1", data_dir / "partial", FetchConfig())
    fetcher.start()
    fetcher.fetch(sha256, dest=staging / "model.int8.onnx")
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import FetchConfig
from edgectl import wire
from edgectl.errors import EdgectlError
from edgectl.transport.base import Message, Transport, TransportError

log = logging.getLogger(__name__)
MAX_ARTIFACT_BYTES = 4 << 30
# After a reconnect, unanswered requests are asked again this often (without using up retries)
# for timeout_s: the controller may come back after us, and a request that reaches the broker
# while nobody serves the topic is gone.
RECOVERY_RETRY_S = 1.0


class FetchError(EdgectlError):
    """A file could not be fetched: not on the server, corrupt, out of disk, or no answer."""


class DamagedPrefix(FetchError):
    """The partial file kept from an earlier run was not a prefix of the file."""


class FetchCancelled(FetchError):
    """The caller asked to stop (the desired state changed, or the agent is shutting down)."""


@dataclass
class FetchStats:
    chunks: int = 0
    bytes: int = 0
    resent: int = 0
    corrupt: int = 0
    resumed_from: int = 0


class ChunkFetcher:
    """One per agent; ``fetch`` blocks its caller and is safe to call from one thread at a time."""

    def __init__(self, transport: Transport, device_id: str, partial_dir: Path, cfg: FetchConfig,
                 *, disk_reserve_bytes: int = 64 << 20,
                 free_space: Callable[[Path], int] | None = None) -> None:
        self.transport = transport
        self.reply_topic = wire.chunk_reply_topic(device_id)
        self.partial_dir = partial_dir
        self.cfg = cfg
        self.disk_reserve = disk_reserve_bytes
        # How many bytes are free where partial files go; replaceable so fault injection
        # (`edgectl up --chaos disk-full`) can simulate a full disk without filling a real one.
        self.free_space: Callable[[Path], int] = free_space or (lambda path: shutil.disk_usage(path).free)
        self._jobs: dict[bytes, queue.Queue[Message]] = {}
        self._lock = threading.Lock()
        self.reconnects = 0  # sessions (re)established since start(): a change means "ask again"
        partial_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.transport.add_connection_listener(self._on_connection)
        self.transport.subscribe(self.reply_topic, self._on_reply)

    def _on_connection(self, up: bool) -> None:
        if up:
            self.reconnects += 1

    def _on_reply(self, msg: Message) -> None:
        cid = msg.correlation_data or b""
        with self._lock:
            q = self._jobs.get(cid[:8])
        if q is None:
            log.debug("chunk reply for no running fetch dropped")
            return
        q.put(msg)

    def part_path(self, sha256: str) -> Path:
        return self.partial_dir / f"{sha256}.part"

    def fetch(self, sha256: str, dest: Path, *, cancel: threading.Event | None = None,
              on_progress: Callable[[int, int], None] | None = None, max_bytes: int = MAX_ARTIFACT_BYTES) -> FetchStats:
        if not wire.valid_sha256(sha256):
            raise FetchError(f"{sha256!r} is not a sha256")
        job = os.urandom(8)
        replies: queue.Queue[Message] = queue.Queue()
        with self._lock:
            self._jobs[job] = replies
        try:
            cancel = cancel or threading.Event()
            try:
                return _Transfer(self, sha256, job, replies, cancel, on_progress, max_bytes).run(dest)
            except DamagedPrefix:
                # A prefix left on disk by an earlier run did not add up (a torn or altered
                # .part file): it is gone now, so fetch the whole file once more.
                return _Transfer(self, sha256, job, replies, cancel, on_progress, max_bytes).run(dest)
        finally:
            with self._lock:
                self._jobs.pop(job, None)


class _Transfer:
    """The state of one file's transfer: what is on disk, in flight, and waiting to be written."""

    def __init__(self, f: ChunkFetcher, sha256: str, job: bytes, replies: queue.Queue[Message],
                 cancel: threading.Event, on_progress: Callable[[int, int], None] | None, max_bytes: int) -> None:
        self.f, self.sha, self.job, self.replies, self.cancel = f, sha256, job, replies, cancel
        self.on_progress, self.max_bytes = on_progress, max_bytes
        self.size: int | None = None
        self.sessions = f.reconnects
        self.recovering_until = 0.0
        self.in_flight: dict[int, tuple[float, int]] = {}  # offset → (sent at, tries)
        self.waiting: dict[int, bytes] = {}  # verified chunks that arrived ahead of the write point
        self.stats = FetchStats()

    def run(self, dest: Path) -> FetchStats:
        part = self.f.part_path(self.sha)
        hasher = hashlib.sha256()
        done = part.stat().st_size if part.exists() else 0
        if done:
            with part.open("rb") as fh:  # rebuild the running hash from the verified prefix
                for block in iter(lambda: fh.read(1 << 20), b""):
                    hasher.update(block)
            self.stats.resumed_from = done
            log.info("resuming %s… from %d verified bytes on disk", self.sha[:12], done)
        chunk = self.f.cfg.chunk_bytes
        next_offset = done
        with part.open("ab") as out:
            while self.size is None or done < self.size:
                if self.cancel.is_set():
                    raise FetchCancelled(f"fetch of {self.sha[:12]}… cancelled")
                # Until the first reply tells the size, one request; then a full window.
                limit = 1 if self.size is None else self.f.cfg.window
                while len(self.in_flight) < limit and (self.size is None or next_offset < self.size):
                    length = chunk if self.size is None else min(chunk, self.size - next_offset)
                    self._send(next_offset, length, tries=1)
                    next_offset += length
                    if self.size is None:
                        break
                msg = self._next_reply()
                if msg is None:
                    continue
                offset = self._accept(msg, done)
                if offset is None:
                    continue
                while done in self.waiting:
                    data = self.waiting.pop(done)
                    out.write(data)
                    hasher.update(data)
                    done += len(data)
                    self.stats.chunks += 1
                    self.stats.bytes += len(data)
                if self.on_progress is not None and self.size is not None:
                    self.on_progress(done, self.size)
            out.flush()
            os.fsync(out.fileno())
        if hasher.hexdigest() != self.sha:
            part.unlink(missing_ok=True)
            if self.stats.resumed_from:
                log.warning("partial download of %s… was damaged; fetching it again from the start", self.sha[:12])
                raise DamagedPrefix(f"partial download of {self.sha[:12]}… was damaged")
            raise FetchError(
                f"fetched file has sha256 {hasher.hexdigest()[:12]}…, expected {self.sha[:12]}…: "
                "the artifact store holds a different file under this name; re-publish the artifact"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(part), dest)
        return self.stats

    def _send(self, offset: int, length: int, *, tries: int) -> None:
        req = wire.chunk_request_message(wire.ChunkRequest(self.sha, offset, length))
        cid = self.job + offset.to_bytes(8, "big")
        self.in_flight[offset] = (time.monotonic(), tries)
        try:
            self.f.transport.publish(wire.CHUNK_REQUEST_TOPIC, req, qos=1, response_topic=self.f.reply_topic,
                                     correlation_data=cid, timeout=self.f.cfg.timeout_s)
        except TransportError as exc:
            # Offline or a full window that never drained: the timeout path re-sends it later.
            log.debug("chunk request at %d not sent now (%s); will retry", offset, exc)

    def _next_reply(self) -> Message | None:
        if self.f.reconnects != self.sessions and self.f.transport.connected:
            # Back after a disconnect: requests and replies in flight may have died with the link
            # (a controller drops replies it cannot send), so ask for them again now, not after
            # timeout_s. A late duplicate answer is dropped by _accept.
            self.sessions = self.f.reconnects
            self.recovering_until = time.monotonic() + self.f.cfg.timeout_s
            for offset, (_, tries) in list(self.in_flight.items()):
                self.stats.resent += 1
                self._send(offset, self._length(offset), tries=tries)
        now = time.monotonic()
        recovering = now < self.recovering_until
        patience = min(RECOVERY_RETRY_S, self.f.cfg.timeout_s) if recovering else self.f.cfg.timeout_s
        deadline = min((sent for sent, _ in self.in_flight.values()), default=now) + patience
        try:
            return self.replies.get(timeout=max(0.01, min(deadline - now, 0.5)))
        except queue.Empty:
            pass
        now = time.monotonic()
        if not self.f.transport.connected:
            # Waiting out a broker restart or a cut link does not use up retries.
            self.f.transport.wait_connected(0.5)
            for offset, (_, tries) in list(self.in_flight.items()):
                self.in_flight[offset] = (time.monotonic(), tries)
            return None
        for offset, (sent, tries) in list(self.in_flight.items()):
            if recovering and now - sent >= patience:
                self.stats.resent += 1
                self._send(offset, self._length(offset), tries=tries)
            elif now - sent >= self.f.cfg.timeout_s:
                if tries > self.f.cfg.retries:
                    raise FetchError(
                        f"no answer for chunk {offset} of {self.sha[:12]}… after {tries} tries: "
                        "is the fleet controller (artifact server) running?"
                    )
                self.stats.resent += 1
                self._send(offset, self._length(offset), tries=tries + 1)
        return None

    def _length(self, offset: int) -> int:
        chunk = self.f.cfg.chunk_bytes
        return chunk if self.size is None else min(chunk, self.size - offset)

    def _accept(self, msg: Message, done: int) -> int | None:
        """Check one reply; returns its offset when it was new and sound, else None."""
        cid = msg.correlation_data or b""
        offset = int.from_bytes(cid[8:16], "big") if len(cid) == 16 else -1
        if offset not in self.in_flight:
            return None  # a duplicate, or an answer to a request already re-sent and answered
        if msg.prop("status") != "ok":
            raise FetchError(f"artifact server refused {self.sha[:12]}…: {msg.prop('error', 'no reason given')}")
        if self.size is None:
            self._learn_size(msg, done)
        assert self.size is not None
        expected = min(self.f.cfg.chunk_bytes, self.size - offset)
        if len(msg.payload) != expected or hashlib.sha256(msg.payload).hexdigest() != msg.prop("sha256"):
            self.stats.corrupt += 1
            _, tries = self.in_flight[offset]
            log.warning("chunk %d of %s… damaged in flight; asking again", offset, self.sha[:12])
            if tries > self.f.cfg.retries:
                raise FetchError(f"chunk {offset} of {self.sha[:12]}… arrived damaged {tries} times: check the link")
            self._send(offset, expected, tries=tries + 1)
            return None
        del self.in_flight[offset]
        self.waiting[offset] = msg.payload
        return offset

    def _learn_size(self, msg: Message, done: int) -> None:
        try:
            size = int(msg.prop("size") or "")
        except ValueError as exc:
            raise FetchError("artifact server reply lacks its size property: upgrade the controller") from exc
        if size > self.max_bytes or size < done:
            raise FetchError(f"artifact {self.sha[:12]}… claims {size} bytes, more than allowed ({self.max_bytes})")
        free = self.f.free_space(self.f.partial_dir)
        if size - done > free - self.f.disk_reserve:
            raise FetchError(
                f"artifact {self.sha[:12]}… needs {(size - done) / 2**20:.1f} MB, the data dir has "
                f"{max(0, free) / 2**20:.1f} MB free (keeping {self.f.disk_reserve >> 20} MB): "
                "free disk space on the device"
            )
        self.size = size


__all__ = ["ChunkFetcher", "FetchCancelled", "FetchError", "FetchStats"]
