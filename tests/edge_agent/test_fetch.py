"""Chunked fetch over the in-memory broker against the real chunk server and artifact store."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from pathlib import Path

import pytest

from edge_agent.config import FetchConfig
from edge_agent.fetch import ChunkFetcher, FetchCancelled, FetchError
from edgectl import wire
from edgectl.transport.base import Message
from edgectl.transport.memory import MemoryBroker, MemoryTransport
from fleet.artifacts import ArtifactStore, ChunkServer

CFG = FetchConfig(chunk_bytes=64 * 1024, window=4, timeout_s=0.5, retries=3)


@pytest.fixture
def rig(tmp_path: Path):
    broker = MemoryBroker()
    server_t = MemoryTransport(broker, "controller")
    store = ArtifactStore(tmp_path / "store")
    server = ChunkServer(server_t, store)
    server.start()
    server_t.start()
    agent_t = MemoryTransport(broker, "dev-1")
    fetcher = ChunkFetcher(agent_t, "dev-1", tmp_path / "partial", CFG)
    fetcher.start()
    agent_t.start()
    assert agent_t.wait_connected(2) and server_t.wait_connected(2)
    yield broker, store, server, fetcher, agent_t
    agent_t.stop()
    server_t.stop()


def _blob(tmp_path: Path, store: ArtifactStore, size: int, name: str = "blob.bin") -> tuple[str, bytes]:
    data = os.urandom(size)
    src = tmp_path / name
    src.write_bytes(data)
    return store.put_file(src), data


def test_fetches_a_file_in_chunks_and_checks_its_hash(rig, tmp_path: Path) -> None:
    _broker, store, _server, fetcher, _ = rig
    sha, data = _blob(tmp_path, store, 1_000_003)  # not a multiple of the chunk size
    progress: list[int] = []
    stats = fetcher.fetch(sha, tmp_path / "out" / "model.onnx", on_progress=lambda done, total: progress.append(done))
    assert (tmp_path / "out" / "model.onnx").read_bytes() == data
    assert stats.chunks == 16 and stats.bytes == len(data) and stats.corrupt == 0
    assert progress[-1] == len(data)
    assert not list((tmp_path / "partial").iterdir())  # the .part was moved, nothing left behind


def test_a_chunk_damaged_in_flight_is_asked_for_again(rig, tmp_path: Path) -> None:
    broker, store, _server, fetcher, _ = rig
    sha, data = _blob(tmp_path, store, 300_000)
    damaged = []

    def corrupt_third_reply(msg: Message) -> Message:
        third = (2 * CFG.chunk_bytes).to_bytes(8, "big")
        if msg.topic == wire.chunk_reply_topic("dev-1") and msg.payload and not damaged \
                and (msg.correlation_data or b"")[8:] == third:
            damaged.append(msg)
            flipped = bytes([msg.payload[0] ^ 0xFF]) + msg.payload[1:]
            return dataclasses.replace(msg, payload=flipped)
        return msg

    broker.intercept = corrupt_third_reply
    stats = fetcher.fetch(sha, tmp_path / "out.bin")
    assert damaged and stats.corrupt == 1
    assert (tmp_path / "out.bin").read_bytes() == data


def test_a_lost_reply_is_re_requested_after_the_timeout(rig, tmp_path: Path) -> None:
    broker, store, _server, fetcher, _ = rig
    sha, data = _blob(tmp_path, store, 200_000)
    dropped = []

    def drop_one(msg: Message) -> Message | None:
        if msg.topic == wire.chunk_reply_topic("dev-1") and not dropped and msg.correlation_data and \
                msg.correlation_data[8:] == CFG.chunk_bytes.to_bytes(8, "big"):
            dropped.append(1)
            return None
        return msg

    broker.intercept = drop_one
    stats = fetcher.fetch(sha, tmp_path / "out.bin")
    assert dropped and stats.resent >= 1
    assert (tmp_path / "out.bin").read_bytes() == data


def test_resumes_from_the_verified_prefix_on_disk(rig, tmp_path: Path) -> None:
    _broker, store, server, fetcher, _ = rig
    sha, data = _blob(tmp_path, store, 500_000)
    # What an agent killed mid-transfer leaves: a verified prefix in partial/.
    fetcher.part_path(sha).write_bytes(data[: 3 * CFG.chunk_bytes])
    served_before = server.served
    stats = fetcher.fetch(sha, tmp_path / "out.bin")
    assert stats.resumed_from == 3 * CFG.chunk_bytes
    assert server.served - served_before == 5  # 8 chunks in all, 3 already here
    assert (tmp_path / "out.bin").read_bytes() == data


def test_a_damaged_partial_file_is_fetched_again_from_the_start(rig, tmp_path: Path) -> None:
    _broker, store, _server, fetcher, _ = rig
    sha, data = _blob(tmp_path, store, 200_000)
    fetcher.part_path(sha).write_bytes(b"\0" * 1000)  # not the file's prefix
    stats = fetcher.fetch(sha, tmp_path / "out.bin")
    assert stats.resumed_from == 0 and stats.bytes == len(data)
    assert (tmp_path / "out.bin").read_bytes() == data and not fetcher.part_path(sha).exists()


def test_a_server_with_the_wrong_bytes_is_refused(rig, tmp_path: Path) -> None:
    _broker, store, _server, fetcher, _ = rig
    sha, _ = _blob(tmp_path, store, 100_000)
    store.path(sha).write_bytes(os.urandom(100_000))  # the store's blob no longer matches its name
    with pytest.raises(FetchError, match="expected"):
        fetcher.fetch(sha, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists() and not fetcher.part_path(sha).exists()


def test_survives_a_network_cut_mid_transfer(rig, tmp_path: Path) -> None:
    broker, store, _server, fetcher, _ = rig
    sha, data = _blob(tmp_path, store, 2_000_000)
    cut = threading.Event()

    def cut_after_some(done: int, total: int) -> None:
        if done > total // 3 and not cut.is_set():
            cut.set()
            broker.disconnect("dev-1")
            threading.Timer(0.3, broker.reconnect, args=("dev-1",)).start()

    stats = fetcher.fetch(sha, tmp_path / "out.bin", on_progress=cut_after_some)
    assert cut.is_set()
    assert (tmp_path / "out.bin").read_bytes() == data
    assert stats.bytes == len(data)


def test_missing_blob_is_a_clear_error(rig, tmp_path: Path) -> None:
    *_, fetcher, _ = rig
    with pytest.raises(FetchError, match="not in the store"):
        fetcher.fetch(hashlib.sha256(b"nothing").hexdigest(), tmp_path / "out.bin")


def test_no_server_means_a_bounded_wait(tmp_path: Path) -> None:
    broker = MemoryBroker()
    t = MemoryTransport(broker, "dev-1")
    fetcher = ChunkFetcher(t, "dev-1", tmp_path / "partial", dataclasses.replace(CFG, timeout_s=0.05, retries=2))
    fetcher.start()
    t.start()
    with pytest.raises(FetchError, match="no answer"):
        fetcher.fetch(hashlib.sha256(b"x").hexdigest(), tmp_path / "out.bin")
    t.stop()


def test_cancel_stops_a_transfer(rig, tmp_path: Path) -> None:
    *_, store, _server, fetcher, _ = rig
    sha, _ = _blob(tmp_path, store, 1_000_000)
    cancel = threading.Event()
    with pytest.raises(FetchCancelled):
        fetcher.fetch(sha, tmp_path / "out.bin", cancel=cancel, on_progress=lambda d, t: cancel.set())
    assert not (tmp_path / "out.bin").exists()


def test_an_empty_file_and_an_exact_multiple_of_the_chunk(rig, tmp_path: Path) -> None:
    *_, store, _server, fetcher, _ = rig
    for size in (0, 2 * CFG.chunk_bytes):
        sha, data = _blob(tmp_path, store, size, name=f"b{size}")
        fetcher.fetch(sha, tmp_path / f"out{size}")
        assert (tmp_path / f"out{size}").read_bytes() == data
