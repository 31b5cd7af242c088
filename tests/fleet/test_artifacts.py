"""The artifact store and chunk server refuse what they should, on the in-memory broker."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import pytest

from edgectl import wire
from edgectl.transport.base import Message
from edgectl.transport.memory import MemoryBroker, MemoryTransport
from fleet.artifacts import ArtifactStore, ArtifactStoreError, ChunkServer
from tests.fleet.fleet_rig import wait_until


@pytest.fixture
def rig(tmp_path: Path):
    broker = MemoryBroker()
    server_t = MemoryTransport(broker, "controller")
    store = ArtifactStore(tmp_path / "store")
    server = ChunkServer(server_t, store)
    server.start()
    server_t.start()
    client = MemoryTransport(broker, "dev-1")
    replies: queue.Queue[Message] = queue.Queue()
    client.subscribe(f"{wire.PREFIX}/#", replies.put)
    client.start()
    yield broker, store, server, client, replies
    client.stop()
    server_t.stop()


def _ask(client: MemoryTransport, payload: bytes, reply_to: str | None) -> None:
    client.publish(wire.CHUNK_REQUEST_TOPIC, payload, response_topic=reply_to, correlation_data=b"c" * 16)


def _reply(replies: queue.Queue[Message]) -> Message:
    while True:
        msg = replies.get(timeout=2)
        if msg.topic != wire.CHUNK_REQUEST_TOPIC:
            return msg


def test_serves_a_chunk_with_its_hash_and_size(rig, tmp_path: Path) -> None:
    _broker, store, _server, client, replies = rig
    src = tmp_path / "f"
    src.write_bytes(os.urandom(5000))
    sha = store.put_file(src)
    _ask(client, wire.chunk_request_message(wire.ChunkRequest(sha, 1000, 2000)), wire.chunk_reply_topic("dev-1"))
    msg = _reply(replies)
    assert msg.payload == src.read_bytes()[1000:3000]
    assert msg.prop("status") == "ok" and msg.prop("size") == "5000" and msg.correlation_data == b"c" * 16


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", "not JSON"),
        (wire.encode("chunk_get", {"sha256": "ab", "offset": 0, "length": 10}), "sha256"),
        (wire.encode("chunk_get", {"sha256": "a" * 64, "offset": -1, "length": 10}), "out of range"),
        (wire.encode("chunk_get", {"sha256": "a" * 64, "offset": 0, "length": 1 << 30}), "out of range"),
        (wire.encode("chunk_get", {"sha256": "a" * 64, "offset": 0, "length": 10}), "not in the store"),
        (b'{"v": 2, "kind": "chunk_get"}', "version"),
    ],
)
def test_bad_requests_get_an_error_reply(rig, payload: bytes, error: str) -> None:
    _broker, _store, server, client, replies = rig
    _ask(client, payload, wire.chunk_reply_topic("dev-1"))
    msg = _reply(replies)
    assert msg.prop("status") == "error" and error in (msg.prop("error") or "")
    assert server.refused == 1


@pytest.mark.parametrize("reply_to", [None, "edgectl/v1/devices/dev-2/desired", "edgectl/v1/artifacts/reply/#"])
def test_never_replies_outside_the_reply_prefix(rig, tmp_path: Path, reply_to: str | None) -> None:
    broker, store, server, client, replies = rig
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100)
    sha = store.put_file(src)
    _ask(client, wire.chunk_request_message(wire.ChunkRequest(sha, 0, 10)), reply_to)
    assert broker.drain(2)
    assert server.refused == 1 and server.served == 0
    seen = []
    while not replies.empty():
        seen.append(replies.get().topic)
    assert seen == [wire.CHUNK_REQUEST_TOPIC]


def test_a_chunk_asked_again_comes_from_the_cache(rig, tmp_path: Path) -> None:
    _broker, store, server, client, replies = rig
    src = tmp_path / "f"
    src.write_bytes(os.urandom(5000))
    sha = store.put_file(src)
    answers = []
    for _ in range(2):
        _ask(client, wire.chunk_request_message(wire.ChunkRequest(sha, 0, 4096)), wire.chunk_reply_topic("dev-1"))
        msg = _reply(replies)
        answers.append((msg.payload, msg.user_properties))
    assert answers[0] == answers[1] and answers[0][0] == src.read_bytes()[:4096]
    assert server._cache.hits == 1 and server.served == 2


def test_a_stuck_reply_holds_up_no_other_handler_and_re_sends_are_queued_once(tmp_path: Path) -> None:
    """Chunks are answered on the server's thread: the transport's dispatcher stays free."""
    release = threading.Event()

    class Stuck(ChunkServer):
        def _reply(self, msg: Message, payload: bytes, props: tuple[tuple[str, str], ...]) -> None:
            release.wait(10)
            super()._reply(msg, payload, props)

    broker = MemoryBroker()
    server_t = MemoryTransport(broker, "controller")
    other: queue.Queue[Message] = queue.Queue()
    server_t.subscribe(f"{wire.PREFIX}/devices/+/report", other.put)
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100)
    sha = store.put_file(src)
    server = Stuck(server_t, store)
    server.start()
    server_t.start()
    client = MemoryTransport(broker, "dev-1")
    client.start()
    try:
        ask = wire.chunk_request_message(wire.ChunkRequest(sha, 0, 10))
        _ask(client, ask, wire.chunk_reply_topic("dev-1"))
        client.publish(wire.report_topic("dev-1"), b"{}")
        assert other.get(timeout=5).topic == wire.report_topic("dev-1")  # while the reply is stuck
        wait_until("the first request taken off the queue", lambda: server.queued == 0, timeout=5)
        # The device re-sends twice while the first answer is stuck: one copy is queued, not two.
        _ask(client, ask, wire.chunk_reply_topic("dev-1"))
        _ask(client, ask, wire.chunk_reply_topic("dev-1"))
        assert broker.drain(5)
        assert server.duplicates == 1 and server.queued == 1
    finally:
        release.set()
        server.stop()
        client.stop()
        server_t.stop()


def test_store_is_content_addressed_and_rejects_bad_names(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "s")
    a = tmp_path / "a"
    a.write_bytes(b"same")
    b = tmp_path / "b"
    b.write_bytes(b"same")
    assert store.put_file(a) == store.put_file(b)
    assert len(list(store.blobs.iterdir())) == 1
    with pytest.raises(ArtifactStoreError):
        store.path("../../etc/passwd")
