"""The offline telemetry buffer: 24 h in 5 MiB, oldest dropped first, flushes that lose nothing."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from edge_agent.buffer import DEFAULT_MAX_BYTES, TelemetryBuffer
from edge_agent.metrics import MetricsSnapshot
from edge_agent.telemetry import telemetry_message

DAY_AT_10S = 24 * 3600 // 10  # 8,640


def realistic_telemetry(n: int, seed: int = 0) -> Iterator[bytes]:
    """Telemetry of a Pi serving 3 models. Values are drawn at random (real ones drift more
    slowly and compress better), so the measured bytes/message is a pessimistic figure."""
    rng = random.Random(seed)
    ts = 1_767_225_600.0
    requests = {"digits-cnn": 0, "person-detector": 0, "anomaly-iforest": 0}
    errors = dict.fromkeys(requests, 0)
    rss = 41_000_000
    for i in range(n):
        ts += 10 + rng.uniform(-0.05, 0.05)
        rss += rng.randrange(-4096, 8192) * 16
        resources = {
            "cpu_percent": round(rng.uniform(3, 85), 1),
            "load": [round(rng.uniform(0, 4), 2) for _ in range(3)],
            "memory_total_bytes": 4_156_547_072,
            "memory_available_bytes": 3_100_000_000 + rng.randrange(-50_000_000, 50_000_000),
            "memory_percent": round(rng.uniform(20, 30), 1),
            "rss_bytes": rss,
            "disk_free_bytes": 21_000_000_000 - i * 4096 * rng.randrange(0, 3),
            "disk_total_bytes": 31_025_147_904,
            "temperature_c": round(rng.uniform(45, 70), 1),
        }
        models = {}
        for name in requests:
            requests[name] += rng.randrange(0, 400)
            errors[name] += rng.random() < 0.05
            p50 = rng.uniform(2, 40)
            models[name] = MetricsSnapshot(
                requests[name], errors[name], p50, p50 * rng.uniform(1.2, 2), p50 * rng.uniform(2, 4)
            )
        yield telemetry_message("pi-kitchen-01", resources, models, dropped=0, ts=ts)


def _numbered(n: int, start: int = 0, size: int = 100) -> list[bytes]:
    # Random filler so the messages do not compress away and overflow is reached on purpose.
    return [f"{i:08d}".encode() + random.Random(i).randbytes(size - 8) for i in range(start, start + n)]


def _drain_all(buf: TelemetryBuffer) -> list[bytes]:
    out: list[bytes] = []
    buf.drain(lambda m: out.append(m) is None)
    return out


def test_a_day_of_realistic_telemetry_fits_in_5_mib_with_nothing_dropped():
    messages = list(realistic_telemetry(DAY_AT_10S))
    raw = sum(map(len, messages))
    assert 600 <= raw / len(messages) <= 900  # the size the issue describes

    buf = TelemetryBuffer()
    for m in messages:
        buf.append(m)

    per_message = buf.nbytes / len(buf)
    assert (len(buf), buf.dropped) == (DAY_AT_10S, 0)
    assert buf.nbytes <= DEFAULT_MAX_BYTES
    # Measured ~100 B/message (about 6x smaller than the JSON): ~50,000 messages in 5 MiB, ~6 days.
    assert per_message <= 130, per_message
    assert DEFAULT_MAX_BYTES / per_message >= 5 * DAY_AT_10S
    assert _drain_all(buf) == messages
    assert (len(buf), buf.nbytes) == (0, 0)


def test_overflow_drops_the_oldest_and_counts_them():
    buf = TelemetryBuffer(max_bytes=4_000, block_bytes=1_000)
    messages = _numbered(500)
    for m in messages:
        buf.append(m)
        assert buf.nbytes <= 4_000
    kept = _drain_all(buf)
    assert buf.dropped > 0 and buf.dropped + len(kept) == 500
    assert kept == messages[-len(kept):]  # the newest, in order, with no gap


def test_overflow_inside_the_open_block_drops_one_message_at_a_time():
    buf = TelemetryBuffer(max_bytes=1_000, block_bytes=1 << 20)
    for m in _numbered(25):
        buf.append(m)
    assert (len(buf), buf.dropped, buf.nbytes) == (10, 15, 1_000)
    assert _drain_all(buf) == _numbered(10, start=15)


def test_a_message_larger_than_the_whole_buffer_is_dropped_not_kept():
    buf = TelemetryBuffer(max_bytes=1_000)
    buf.append(b"small")
    buf.append(b"x" * 1_001)
    assert (len(buf), buf.dropped) == (1, 1)
    assert _drain_all(buf) == [b"small"]


@pytest.mark.parametrize("block_bytes", [1 << 20, 1_000, 250], ids=["open-block-only", "blocks", "tiny-blocks"])
def test_a_failed_publish_mid_flush_loses_nothing(block_bytes):
    buf = TelemetryBuffer(block_bytes=block_bytes)
    messages = _numbered(300)
    for m in messages:
        buf.append(m)
    published: list[bytes] = []

    def flaky(m: bytes) -> bool:
        if len(published) == 137:
            return False
        published.append(m)
        return True

    assert buf.drain(flaky, batch_size=50) == 137
    assert len(buf) == 300 - 137
    buf.append(b"late")
    assert published + _drain_all(buf) == [*messages, b"late"]


def test_a_publish_that_raises_keeps_the_unsent_and_propagates():
    buf = TelemetryBuffer(block_bytes=1_000)
    messages = _numbered(120)
    for m in messages:
        buf.append(m)
    published: list[bytes] = []

    def broken(m: bytes) -> bool:
        if len(published) == 42:
            raise ConnectionError("broker went away")
        published.append(m)
        return True

    with pytest.raises(ConnectionError):
        buf.drain(broken)
    assert published + _drain_all(buf) == messages


def test_peek_copies_and_commit_removes_only_what_was_sent():
    buf = TelemetryBuffer(block_bytes=1_000)
    messages = _numbered(60)
    for m in messages:
        buf.append(m)
    batch = buf.peek(25)
    assert list(batch) == messages[:25] and len(buf) == 60
    assert list(buf.peek(25)) == messages[:25]  # peeking twice gives the same, removes nothing
    buf.commit(batch, 10)
    assert list(buf.peek(3)) == messages[10:13]
    buf.commit(batch)  # the rest of the same batch
    assert list(buf.peek(100)) == messages[25:]
    with pytest.raises(ValueError):
        buf.commit(batch, 26)


def test_commit_after_the_batch_was_evicted_does_not_remove_newer_messages():
    buf = TelemetryBuffer(max_bytes=2_000, block_bytes=500)
    for m in _numbered(10):
        buf.append(m)
    batch = buf.peek(5)
    newer = _numbered(40, start=10)
    for m in newer:  # the broker stays slow: these push the peeked ones out
        buf.append(m)
    before = (len(buf), buf.dropped)
    assert before[1] >= 5  # the whole batch is gone already
    buf.commit(batch)
    assert (len(buf), buf.dropped) == before
    assert _drain_all(buf) == newer[-before[0]:]


def test_concurrent_appends_and_flushes_keep_every_message_once_and_in_order():
    buf = TelemetryBuffer(block_bytes=2_000)
    producers, per_producer = 4, 1_500
    rng = random.Random(1)
    received: list[bytes] = []
    done = threading.Event()

    def produce(p: int) -> None:
        for i in range(per_producer):
            buf.append(f"{p}:{i:06d}".encode())

    def flush() -> None:
        def publish(m: bytes) -> bool:
            if rng.random() < 0.02:
                return False  # the broker drops out now and then
            received.append(m)
            return True

        while not done.is_set():
            buf.drain(publish, batch_size=rng.randrange(1, 64))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    flusher = threading.Thread(target=flush)
    flusher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    flusher.join()
    received += _drain_all(buf)

    assert buf.dropped == 0 and len(received) == producers * per_producer
    for p in range(producers):
        mine = [m for m in received if m.startswith(f"{p}:".encode())]
        assert mine == [f"{p}:{i:06d}".encode() for i in range(per_producer)]


def test_rejects_a_nonsense_size():
    with pytest.raises(ValueError):
        TelemetryBuffer(max_bytes=0)


@pytest.mark.parametrize("block_bytes", [1 << 20, 1_000, 250], ids=["open-block-only", "blocks", "tiny-blocks"])
def test_pop_and_push_back_what_failed_loses_nothing(block_bytes):
    buf = TelemetryBuffer(block_bytes=block_bytes)
    messages = _numbered(300)
    for m in messages:
        buf.append(m)
    published: list[bytes] = []
    batch = buf.pop_batch(64)
    while batch:
        for i, m in enumerate(batch):
            if len(published) == 137:  # the broker goes away here
                buf.push_front(batch[i:])
                break
            published.append(m)
        else:
            batch = buf.pop_batch(64)
            continue
        break
    assert len(buf) == 300 - 137
    buf.append(b"late")
    assert published + _drain_all(buf) == [*messages, b"late"]


def test_pushed_back_messages_are_the_oldest_and_go_first_when_full():
    buf = TelemetryBuffer(max_bytes=3_000, block_bytes=500)
    for m in _numbered(20):
        buf.append(m)
    taken = buf.pop_batch(7)  # ends inside a block: push_front must not duplicate its rest
    assert taken == _numbered(7)
    buf.push_front(taken)
    assert list(buf.peek(20)) == _numbered(20)
    taken = buf.pop_batch(10)
    for m in _numbered(25, start=20):  # meanwhile the buffer fills up
        buf.append(m)
    buf.push_front(taken)
    kept = _drain_all(buf)
    assert buf.dropped > 0 and buf.dropped + len(kept) == 45
    assert kept == (taken + _numbered(25 + 10, start=10))[-len(kept):]
