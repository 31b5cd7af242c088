"""A bounded offline buffer for telemetry published while the broker is unreachable.

Messages are kept in arrival order and compressed in blocks: the open block holds raw
messages until it reaches ``block_bytes`` (64 KiB by default, ~100 messages), then it is
compressed with zlib as one unit. Telemetry messages repeat the same keys, model names and
number prefixes, so a block stores ~3.4x fewer bytes than the same messages zlib'd one by one
(~350 bytes each).

Measured on realistic 3-model telemetry (~635 bytes of JSON each, values drawn at random so
the digits do not compress away; see tests/edge_agent/test_buffer.py): **~103 bytes per
message**, so the default 5 MiB holds ~51,000 messages — about 5.9 days at one message per
10 s, well over the 24 h goal (8,640 messages in ~0.9 MB). When full, whole oldest blocks are dropped first and
every message lost that way is counted in ``dropped`` (which the agent reports in telemetry).

Flushing never loses a message: ``peek`` copies the oldest messages out without removing
them, and ``commit`` removes only as many as were really published; ``drain`` does both:

    buf = TelemetryBuffer()
    buf.append(payload)                          # broker down: keep it
    ...
    def send(message: bytes) -> bool:           # False or an exception stops the flush
        transport.publish(topic, message, qos=1)
        return True

    sent = buf.drain(send)                       # reconnected: oldest first

Or by hand:

    batch = buf.peek(100)
    ok = 0
    for message in batch:
        if not publish(message):
            break
        ok += 1
    buf.commit(batch, ok)                        # the rest stays, in order, for the next try

``pop_batch`` / ``push_front`` also exist, for callers that take messages out and put back
what failed; they are safe as long as the put-back always happens (``drain`` cannot forget it).

Every method is thread-safe. Run one flusher at a time, with one style (``peek``/``commit`` or
``pop_batch``/``push_front``): two flushers would publish the same messages. Messages appended
during a flush are kept behind the ones being flushed.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_BLOCK_BYTES = 64 * 1024
_LEN = struct.Struct(">I")  # length prefix of each message inside a block
# Level 9 saves ~3% over the default 6 for ~2x the CPU: one ~64 KiB block every ~15 minutes.
_LEVEL = 9


@dataclass(frozen=True)
class Batch:
    """Oldest messages copied out by :meth:`TelemetryBuffer.peek`; ``start`` is the sequence
    number of the first, so ``commit`` still removes the right ones after concurrent appends
    or evictions."""

    start: int
    messages: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.messages)


@dataclass(frozen=True)
class _Block:
    first: int  # sequence number of its first message
    count: int
    data: bytes  # zlib of length-prefixed messages


def _pack(messages: list[bytes]) -> bytes:
    return zlib.compress(b"".join(_LEN.pack(len(m)) + m for m in messages), _LEVEL)


def _unpack(data: bytes) -> list[bytes]:
    raw = zlib.decompress(data)
    out, pos = [], 0
    while pos < len(raw):
        (size,) = _LEN.unpack_from(raw, pos)
        pos += _LEN.size
        out.append(raw[pos : pos + size])
        pos += size
    return out


class TelemetryBuffer:
    """FIFO of telemetry payloads bounded to ``max_bytes`` of storage (compressed blocks plus the
    raw open block; Python's per-object overhead, ~100 bytes per block, is not counted)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        if max_bytes <= 0 or block_bytes <= 0:
            raise ValueError(f"max_bytes ({max_bytes}) and block_bytes ({block_bytes}) must be positive")
        self.max_bytes = max_bytes
        self._block_bytes = block_bytes
        self._lock = threading.Lock()
        # Messages carry implicit sequence numbers: _head is the oldest still held (everything
        # before it was committed or dropped), _next the one the next append gets.
        self._head = 0
        self._next = 0
        self._blocks: deque[_Block] = deque()
        self._tail: deque[bytes] = deque()  # the open block, raw; its last message is _next - 1
        self._tail_bytes = 0
        self._stored = 0  # compressed bytes in _blocks
        self._dropped = 0
        # peek during a flush reads the same head block again and again: keep it decompressed.
        self._cache: tuple[int, list[bytes]] | None = None

    # --- state ----------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return self._next - self._head

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._stored + self._tail_bytes

    @property
    def dropped(self) -> int:
        """Messages lost since start: evicted when full, or larger than ``max_bytes`` on arrival."""
        with self._lock:
            return self._dropped

    # --- writing --------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        with self._lock:
            if len(payload) > self.max_bytes:
                self._dropped += 1  # could never fit; evicting everything else for it helps no one
                return
            self._tail.append(bytes(payload))
            self._tail_bytes += len(payload)
            self._next += 1
            if self._tail_bytes >= self._block_bytes:
                self._close_tail()
            self._evict()

    def _close_tail(self) -> None:
        data = _pack(list(self._tail))
        self._blocks.append(_Block(self._next - len(self._tail), len(self._tail), data))
        self._stored += len(data)
        self._tail.clear()
        self._tail_bytes = 0

    def _pop_block(self) -> _Block:
        block = self._blocks.popleft()
        if self._cache is not None and self._cache[0] == block.first:
            self._cache = None
        return block

    def _evict(self) -> None:
        while self._stored + self._tail_bytes > self.max_bytes:
            if self._blocks:
                block = self._pop_block()
                end = block.first + block.count
                self._dropped += end - max(self._head, block.first)
                self._head = end
                self._stored -= len(block.data)
            else:
                self._tail_bytes -= len(self._tail.popleft())
                self._dropped += 1
                self._head += 1

    # --- flushing -------------------------------------------------------------------------

    def peek(self, n: int) -> Batch:
        """Copies of the oldest ``n`` messages (fewer if the buffer holds fewer); nothing is removed."""
        with self._lock:
            return self._peek(n)

    def commit(self, batch: Batch, sent: int | None = None) -> None:
        """Remove the first ``sent`` messages of ``batch`` (all of them by default): the ones that
        were published. Messages evicted or committed since the peek are skipped, not counted twice."""
        count = len(batch) if sent is None else sent
        if not 0 <= count <= len(batch):
            raise ValueError(f"sent={sent} is outside 0..{len(batch)} (the batch's size)")
        with self._lock:
            self._commit(batch.start + count)

    def pop_batch(self, n: int) -> list[bytes]:
        """Remove and return the oldest ``n`` messages. The caller owns them from here on: give
        back the unpublished ones with :meth:`push_front` (or use ``peek``/``commit``/``drain``,
        which cannot lose messages to a forgotten or skipped put-back)."""
        with self._lock:
            batch = self._peek(n)
            self._commit(batch.start + len(batch))
            return list(batch.messages)

    def push_front(self, messages: Sequence[bytes]) -> None:
        """Put messages taken with :meth:`pop_batch` back at the head, in order (oldest first).
        They are the oldest held, so they are the first to go if the buffer is full."""
        if not messages:
            return
        with self._lock:
            self._trim_head_block()
            data = _pack([bytes(m) for m in messages])
            self._head -= len(messages)
            self._blocks.appendleft(_Block(self._head, len(messages), data))
            self._stored += len(data)
            self._evict()

    def _peek(self, n: int) -> Batch:
        out: list[bytes] = []
        for block in self._blocks:
            if len(out) >= n:
                break
            messages = self._messages(block)
            skip = max(0, self._head - block.first)
            out.extend(messages[skip : skip + n - len(out)])
        for message in self._tail:
            if len(out) >= n:
                break
            out.append(message)
        return Batch(self._head, tuple(out))

    def _messages(self, block: _Block) -> list[bytes]:
        if self._cache is None or self._cache[0] != block.first:
            self._cache = (block.first, _unpack(block.data))
        return self._cache[1]

    def _commit(self, upto: int) -> None:
        upto = min(upto, self._next)
        if upto <= self._head:
            return
        self._head = upto
        while self._blocks and self._blocks[0].first + self._blocks[0].count <= self._head:
            self._stored -= len(self._pop_block().data)
        # Once no closed block is left, the head is in the open block: remove its sent messages.
        while not self._blocks and self._tail and self._next - len(self._tail) < self._head:
            self._tail_bytes -= len(self._tail.popleft())

    def _trim_head_block(self) -> None:
        # Sequence numbers below the head must be free before push_front reuses them: recompress a
        # partly sent head block without its sent part.
        if not self._blocks or self._blocks[0].first >= self._head:
            return
        block = self._blocks[0]
        rest = self._messages(block)[self._head - block.first :]
        self._cache = None
        data = _pack(rest)
        self._blocks[0] = _Block(self._head, len(rest), data)
        self._stored += len(data) - len(block.data)

    def drain(self, publish: Callable[[bytes], bool], *, batch_size: int = 100) -> int:
        """Publish oldest first until empty or until ``publish`` returns False or raises (the
        exception propagates); returns how many were published and removed."""
        total = 0
        while True:
            batch = self.peek(batch_size)
            if not batch:
                return total
            sent = 0
            try:
                for message in batch:
                    if not publish(message):
                        break
                    sent += 1
            finally:
                self.commit(batch, sent)
                total += sent
            if sent < len(batch):
                return total
