"""The artifact store and the MQTT chunk server that feeds agents from it.

The store is content-addressed: every file of a compile output (``manifest.json`` included)
is kept once as ``blobs/<sha256>``, so versions that share files share bytes and a request
names exactly the bytes it wants. Agents fetch by sha256 in chunks::

    store = ArtifactStore(Path("/var/lib/edgectl/artifacts"))
    ref = store.put_dir(Path("build/digits/x86_64-avx2"))   # ArtifactRef(manifest_sha256, size, files)
    server = ChunkServer(transport, store)
    server.start()        # answers edgectl/v1/artifacts/get through a shared subscription

Requests are validated (``edgectl.wire.parse_chunk_request``) and replies go only to topics
under ``edgectl/v1/artifacts/reply/``: the server cannot be used to publish elsewhere (say, on
a device's desired-state topic).

The server answers on a thread of its own, not on the transport's dispatcher thread: a QoS 1
reply may wait for the in-flight window, and the controller's other handlers (states,
telemetry, reports) must not queue behind 5 GB of chunks, nor chunks behind them. A rollout
asks every device for the same chunks, so the last ones served are kept with their hash
(``cache_bytes``): each is read and hashed once, not once per device. A request that is already
queued (a device re-sends with the same correlation data when an answer is late, and answers go
to the same reply topic) is not queued twice: under load, answering every re-send would double
the work just when the server is behind, and make more requests late.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edgectl import wire
from edgectl.errors import EdgectlError
from edgectl.hashing import sha256_file
from edgectl.manifest import MANIFEST_NAME, read_manifest
from edgectl.transport.base import Message, Transport, TransportError

log = logging.getLogger(__name__)
REPLY_PREFIX = f"{wire.PREFIX}/artifacts/reply/"
DEFAULT_CACHE_BYTES = 64 << 20  # chunks kept with their hash: a few artifacts' worth at 5-20 MB each


class ArtifactStoreError(EdgectlError):
    """A blob is missing or the store folder cannot be written."""


@dataclass(frozen=True)
class ArtifactRef:
    """What a desired-state message needs to name an artifact."""

    manifest_sha256: str
    manifest_size: int
    files: dict[str, str]  # file name → sha256, as listed in the manifest


class ArtifactStore:
    """Blobs by sha256 under ``root/blobs``; writes are atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not wire.valid_sha256(sha256):
            raise ArtifactStoreError(f"{sha256!r} is not a sha256")
        return self.blobs / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, src: Path, sha256: str | None = None) -> str:
        sha = sha256 or sha256_file(src)
        dest = self.path(sha)
        if dest.is_file():
            return sha
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            if sha256_file(Path(tmp)) != sha:
                raise ArtifactStoreError(f"{src} changed while it was stored: publish it again")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def put_dir(self, folder: Path) -> ArtifactRef:
        """Store every file a compile folder's manifest lists, then the manifest itself.

        The caller verifies the folder (hashes, signature) first; this re-checks each hash as
        it copies, so a file changed in between is refused rather than served."""
        manifest = read_manifest(folder)
        files = {str(k): str(v) for k, v in manifest["files"].items()}
        for name, sha in files.items():
            self.put_file(folder / name, sha)
        msha = self.put_file(folder / MANIFEST_NAME)
        return ArtifactRef(msha, (folder / MANIFEST_NAME).stat().st_size, files)

    def manifest(self, sha256: str) -> dict[str, object]:
        return dict(json.loads(self.path(sha256).read_bytes()))


class _FdCache:
    """A few open blob descriptors, so each chunk is one pread and not an open/close."""

    def __init__(self, size: int = 32) -> None:
        self._fds: OrderedDict[Path, int] = OrderedDict()
        self._size = size

    def get(self, path: Path) -> int:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self._fds) >= self._size:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _ChunkCache:
    """Chunks by (blob sha256, offset, length) → (data, blob size, chunk sha256), least recently
    used out first once over ``max_bytes``. Blobs are content-addressed, so a cached chunk never
    goes stale. Used by the serving thread only."""

    def __init__(self, max_bytes: int) -> None:
        self._chunks: OrderedDict[tuple[str, int, int], tuple[bytes, int, str]] = OrderedDict()
        self._max = max_bytes
        self._bytes = 0
        self.hits = 0

    def get(self, key: tuple[str, int, int]) -> tuple[bytes, int, str] | None:
        hit = self._chunks.get(key)
        if hit is not None:
            self._chunks.move_to_end(key)
            self.hits += 1
        return hit

    def put(self, key: tuple[str, int, int], value: tuple[bytes, int, str]) -> None:
        if len(value[0]) > self._max or key in self._chunks:
            return
        self._chunks[key] = value
        self._bytes += len(value[0])
        while self._bytes > self._max:
            _, (old, _, _) = self._chunks.popitem(last=False)
            self._bytes -= len(old)


_STOP = object()


class ChunkServer:
    """Answers chunk requests from the store, on its own thread (see the module docstring)."""

    def __init__(self, transport: Transport, store: ArtifactStore, *, shared: bool = True,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.transport = transport
        self.store = store
        self.topic = wire.CHUNK_REQUEST_SHARED if shared else wire.CHUNK_REQUEST_TOPIC
        self._fds = _FdCache()
        self._cache = _ChunkCache(cache_bytes)
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._queued: set[tuple[str, bytes | None, bytes]] = set()  # (reply topic, correlation, request)
        self._qlock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.served = 0
        self.refused = 0
        self.duplicates = 0  # re-sent requests dropped because the first one was still queued

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve_loop, name="chunk-server", daemon=True)
            self._thread.start()
        self.transport.subscribe(self.topic, self._on_request)

    def stop(self) -> None:
        """Unsubscribe, answer what is queued already (while the transport is up), end the thread."""
        try:
            self.transport.unsubscribe(self.topic)
        except TransportError as exc:
            log.info("chunk server: unsubscribe failed (%s)", exc)
        if self._thread is not None:
            self._requests.put(_STOP)
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._fds.close()

    @property
    def queued(self) -> int:
        """Requests received and not answered yet."""
        return self._requests.qsize()

    def _reply(self, msg: Message, payload: bytes, props: tuple[tuple[str, str], ...]) -> None:
        assert msg.response_topic is not None
        try:
            self.transport.publish(
                msg.response_topic, payload, qos=1, correlation_data=msg.correlation_data, user_properties=props
            )
        except TransportError as exc:
            log.warning("chunk reply to %s not sent: %s", msg.response_topic, exc)

    def _on_request(self, msg: Message) -> None:
        """On the transport's thread: refuse a bad reply topic at once, queue the rest."""
        if not msg.response_topic or not msg.response_topic.startswith(REPLY_PREFIX) or "+" in msg.response_topic \
                or "#" in msg.response_topic:
            self.refused += 1
            log.warning("chunk request without a reply topic under %s dropped", REPLY_PREFIX)
            return
        key = _key(msg)
        with self._qlock:
            if key in self._queued:
                self.duplicates += 1
                return
            self._queued.add(key)
        self._requests.put(msg)

    def _serve_loop(self) -> None:
        while (msg := self._requests.get()) is not _STOP:
            assert isinstance(msg, Message)
            with self._qlock:
                self._queued.discard(_key(msg))  # from now on a re-send is answered again
            try:
                self._serve(msg)
            except Exception:  # the thread must outlive a bug in one request
                log.exception("chunk request on %s failed", msg.topic)

    def _serve(self, msg: Message) -> None:
        try:
            req = wire.parse_chunk_request(msg.payload)
            data, size, digest = self._chunk(req)
        except (wire.WireError, ArtifactStoreError) as exc:
            self.refused += 1
            self._reply(msg, b"", (("status", "error"), ("error", str(exc))))
            return
        self.served += 1
        self._reply(msg, data, (("status", "ok"), ("sha256", digest), ("size", str(size))))

    def _chunk(self, req: wire.ChunkRequest) -> tuple[bytes, int, str]:
        key = (req.sha256, req.offset, req.length)
        hit = self._cache.get(key)
        if hit is None:
            data, size = self._read(req)
            hit = (data, size, hashlib.sha256(data).hexdigest())
            self._cache.put(key, hit)
        return hit

    def _read(self, req: wire.ChunkRequest) -> tuple[bytes, int]:
        path = self.store.path(req.sha256)
        with self._lock:
            try:
                fd = self._fds.get(path)
            except FileNotFoundError as exc:
                raise ArtifactStoreError(f"artifact blob {req.sha256[:12]}… is not in the store") from exc
            size = os.fstat(fd).st_size
            if req.offset > size:
                raise ArtifactStoreError(f"offset {req.offset} is past the end of blob {req.sha256[:12]}… ({size} B)")
            return os.pread(fd, req.length, req.offset), size


def _key(msg: Message) -> tuple[str, bytes | None, bytes]:
    return msg.response_topic or "", msg.correlation_data, msg.payload
