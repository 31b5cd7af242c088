"""MemoryBroker / MemoryTransport: the in-process broker the agent and controller unit tests use."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator

import pytest

from edgectl.transport.base import Handler, Message, TransportOffline, Will, topic_matches
from edgectl.transport.memory import MemoryBroker, MemoryTransport


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def clients(broker: MemoryBroker) -> Iterator[list[MemoryTransport]]:
    made: list[MemoryTransport] = []
    yield made
    for t in made:
        t.stop()


def make(broker: MemoryBroker, clients: list[MemoryTransport], client_id: str, **kw: object) -> MemoryTransport:
    t = MemoryTransport(broker, client_id, **kw)  # type: ignore[arg-type]
    clients.append(t)
    return t


def collect(t: MemoryTransport, topic_filter: str, qos: int = 1) -> list[Message]:
    got: list[Message] = []
    t.subscribe(topic_filter, got.append, qos=qos)
    return got


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/b/#", "x/b", True),
        ("#", "anything/at/all", True),
        ("a/b", "a/c", False),
        ("$share/g/a/+", "a/b", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_wildcards_route_to_each_matching_subscription(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    pub, sub = make(broker, clients, "pub"), make(broker, clients, "sub")
    plus, hash_, exact = collect(sub, "d/+/state"), collect(sub, "d/#"), collect(sub, "d/1/state")
    pub.start()
    sub.start()
    pub.publish("d/1/state", b"x")
    pub.publish("d/2/telemetry", b"y")
    assert broker.drain(2)
    assert [m.topic for m in plus] == ["d/1/state"]
    assert [m.topic for m in hash_] == ["d/1/state", "d/2/telemetry"]
    assert [m.topic for m in exact] == ["d/1/state"]


def test_properties_are_carried_through(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    pub, sub = make(broker, clients, "pub"), make(broker, clients, "sub")
    got = collect(sub, "req")
    pub.start()
    sub.start()
    pub.publish("req", b"\x00\x01", response_topic="reply/dev-1", correlation_data=b"\xde\xad",
                user_properties=(("status", "ok"), ("sha256", "ab")), content_type="application/octet-stream")
    assert broker.drain(2)
    [m] = got
    assert m == Message("req", b"\x00\x01", retain=False, response_topic="reply/dev-1", correlation_data=b"\xde\xad",
                        user_properties=(("status", "ok"), ("sha256", "ab")), content_type="application/octet-stream")
    assert m.prop("status") == "ok" and m.prop("missing", "-") == "-"


def test_retained_messages_reach_new_subscribers_and_empty_payload_clears(
    broker: MemoryBroker, clients: list[MemoryTransport]
) -> None:
    pub = make(broker, clients, "pub")
    pub.start()
    pub.publish("dev/1/desired", b"gen-1", retain=True)
    pub.publish("dev/1/desired", b"gen-2", retain=True)  # replaces gen-1
    pub.publish("dev/2/desired", b"other", retain=True)
    late = make(broker, clients, "late")
    got = collect(late, "dev/1/#")
    late.start()
    assert broker.drain(2)
    assert [(m.payload, m.retain) for m in got] == [(b"gen-2", True)]

    pub.publish("dev/1/desired", b"gen-3", retain=True)  # live: retain flag cleared, as in Mosquitto
    assert broker.drain(2)
    assert (got[-1].payload, got[-1].retain) == (b"gen-3", False)

    pub.publish("dev/1/desired", b"", retain=True)  # clears, and live subscribers see the empty message
    assert broker.drain(2)
    assert got[-1].payload == b""
    assert broker.retained("dev/1/desired") is None
    later = make(broker, clients, "later")
    got2 = collect(later, "dev/+/desired")
    later.start()
    assert broker.drain(2)
    assert [m.payload for m in got2] == [b"other"]


def test_will_is_published_on_kill_not_on_stop(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    fleet = make(broker, clients, "fleet")
    states = collect(fleet, "dev/+/state")
    fleet.start()
    will = Will("dev/1/state", b'{"online":false}')
    polite = make(broker, clients, "dev-1", will=will)
    polite.start()
    polite.stop()
    assert broker.drain(2)
    assert states == []

    crashing = make(broker, clients, "dev-1", will=will)
    crashing.start()
    crashing.kill()
    assert broker.drain(2)
    assert [(m.topic, m.payload) for m in states] == [("dev/1/state", b'{"online":false}')]
    assert broker.retained("dev/1/state") is not None  # Will.retain defaults to True


def test_shared_subscription_round_robins_between_members(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    shared = "$share/servers/chunks/get"
    a, b, watcher, pub = (make(broker, clients, n) for n in ("ctl-a", "ctl-b", "watcher", "dev"))
    got_a, got_b, got_all = collect(a, shared), collect(b, shared), collect(watcher, "chunks/get")
    for t in (a, b, watcher, pub):
        t.start()
    for i in range(10):
        pub.publish("chunks/get", str(i).encode())
    assert broker.drain(2)
    assert len(got_a) == len(got_b) == 5
    assert sorted(int(m.payload) for m in got_a + got_b) == list(range(10))
    assert len(got_all) == 10

    b.stop()  # the remaining member gets everything
    pub.publish("chunks/get", b"10")
    assert broker.drain(2)
    assert got_a[-1].payload == b"10"


def test_network_cut_queues_qos1_for_a_persistent_session(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    fleet = make(broker, clients, "fleet")
    states = collect(fleet, "dev/1/state")
    dev = make(broker, clients, "dev-1", will=Will("dev/1/state", b"offline"))
    got = collect(dev, "dev/1/desired")
    events: list[bool] = []
    dev.add_connection_listener(events.append)
    fleet.start()
    dev.start()
    assert dev.wait_connected(1)

    broker.disconnect("dev-1")
    assert not dev.connected
    with pytest.raises(TransportOffline):
        dev.publish("dev/1/report", b"x")
    fleet.publish("dev/1/desired", b"q1-a", qos=1)
    fleet.publish("dev/1/desired", b"q0", qos=0)  # QoS 0 to an absent client is dropped
    fleet.publish("dev/1/desired", b"q1-b", qos=1)
    assert broker.drain(2)
    assert got == []
    assert [m.payload for m in states] == [b"offline"]  # the broker noticed the dead link

    broker.reconnect("dev-1")
    assert dev.connected
    assert broker.drain(2)
    assert [m.payload for m in got] == [b"q1-a", b"q1-b"]
    assert events == [True, False, True]
    dev.publish("dev/1/report", b"back")


def test_subscription_qos0_is_not_queued(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    fleet, dev = make(broker, clients, "fleet"), make(broker, clients, "dev-1")
    got = collect(dev, "dev/1/telemetry-echo", qos=0)
    fleet.start()
    dev.start()
    broker.disconnect("dev-1", will=False)
    fleet.publish("dev/1/telemetry-echo", b"x", qos=1)
    broker.reconnect("dev-1")
    assert broker.drain(2)
    assert got == []


def test_persistent_session_survives_a_restart(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    fleet = make(broker, clients, "fleet")
    fleet.start()
    first = make(broker, clients, "dev-1")
    collect(first, "dev/1/desired")
    first.start()
    first.stop()
    fleet.publish("dev/1/desired", b"while-away")
    again = make(broker, clients, "dev-1")
    got = collect(again, "dev/1/desired")
    again.start()
    assert broker.drain(2)
    assert [m.payload for m in got] == [b"while-away"]

    clean = make(broker, clients, "dev-2", persistent=False)
    collect(clean, "dev/2/desired")
    clean.start()
    clean.stop()
    fleet.publish("dev/2/desired", b"lost")
    clean2 = make(broker, clients, "dev-2", persistent=False)
    got2 = collect(clean2, "dev/2/desired")
    clean2.start()
    assert broker.drain(2)
    assert got2 == []


def test_handler_exceptions_are_logged_and_swallowed(
    broker: MemoryBroker, clients: list[MemoryTransport], caplog: pytest.LogCaptureFixture
) -> None:
    pub, sub = make(broker, clients, "pub"), make(broker, clients, "sub")
    seen: list[bytes] = []

    def flaky(m: Message) -> None:
        seen.append(m.payload)
        if m.payload == b"bad":
            raise ValueError("boom")

    sub.subscribe("t", flaky)
    sub.add_connection_listener(lambda up: 1 / 0)
    pub.start()
    with caplog.at_level(logging.ERROR, logger="edgectl.transport.memory"):
        sub.start()
        for p in (b"ok", b"bad", b"after"):
            pub.publish("t", p)
        assert broker.drain(2)
    assert seen == [b"ok", b"bad", b"after"]
    assert any("handler for t raised" in r.getMessage() for r in caplog.records)
    assert any("listener raised" in r.getMessage() for r in caplog.records)


def test_handlers_run_one_at_a_time_on_the_dispatcher_thread(
    broker: MemoryBroker, clients: list[MemoryTransport]
) -> None:
    pub, sub = make(broker, clients, "pub"), make(broker, clients, "sub")
    threads: set[str] = set()
    active = [0]
    overlap = []

    def handler(m: Message) -> None:
        active[0] += 1
        overlap.append(active[0])
        threads.add(threading.current_thread().name)
        active[0] -= 1

    sub.subscribe("a", handler)
    sub.subscribe("b", handler)
    pub.start()
    sub.start()
    for i in range(50):
        pub.publish("a" if i % 2 else "b", b"")
    assert broker.drain(2)
    assert len(overlap) == 50 and max(overlap) == 1
    assert threads == {"memory-transport-sub"} and threading.current_thread().name not in threads


def test_handler_may_publish_and_drain_waits_for_the_cascade(
    broker: MemoryBroker, clients: list[MemoryTransport]
) -> None:
    ping, pong = make(broker, clients, "ping"), make(broker, clients, "pong")
    hops: list[int] = []

    def bounce(t: MemoryTransport, out: str) -> Handler:
        def handler(m: Message) -> None:
            n = int(m.payload)
            hops.append(n)
            if n < 20:
                t.publish(out, str(n + 1).encode(), qos=1)
        return handler

    ping.subscribe("to-ping", bounce(ping, "to-pong"))
    pong.subscribe("to-pong", bounce(pong, "to-ping"))
    ping.start()
    pong.start()
    ping.publish("to-pong", b"0")
    assert broker.drain(2)
    assert hops == list(range(21))


def test_intercept_drops_and_modifies_messages(broker: MemoryBroker, clients: list[MemoryTransport]) -> None:
    pub, sub = make(broker, clients, "pub"), make(broker, clients, "sub")
    got = collect(sub, "chunk/#")
    pub.start()
    sub.start()

    def corrupt(m: Message) -> Message | None:
        if m.topic == "chunk/drop":
            return None
        if m.topic == "chunk/flip":
            return dataclasses.replace(m, payload=bytes([m.payload[0] ^ 0xFF]) + m.payload[1:])
        return m

    broker.intercept = corrupt
    pub.publish("chunk/drop", b"\x01")
    pub.publish("chunk/flip", b"\x01\x02")
    pub.publish("chunk/ok", b"\x03")
    assert broker.drain(2)
    assert [(m.topic, m.payload) for m in got] == [("chunk/flip", b"\xfe\x02"), ("chunk/ok", b"\x03")]


def test_same_client_id_takes_over_and_the_old_will_goes_out(
    broker: MemoryBroker, clients: list[MemoryTransport]
) -> None:
    fleet = make(broker, clients, "fleet")
    states = collect(fleet, "dev/1/state")
    fleet.start()
    old = make(broker, clients, "dev-1", will=Will("dev/1/state", b"gone"))
    old.start()
    new = make(broker, clients, "dev-1")
    new.start()
    assert broker.drain(2)
    assert not old.connected and new.connected
    assert [m.payload for m in states] == [b"gone"]
    with pytest.raises(TransportOffline):
        old.publish("x", b"")


def test_publish_before_start_and_after_stop_is_offline(broker: MemoryBroker) -> None:
    t = MemoryTransport(broker, "dev-1")
    with pytest.raises(TransportOffline):
        t.publish("x", b"")
    t.start()
    assert t.wait_connected(1)
    t.stop()
    assert not t.connected
    with pytest.raises(TransportOffline):
        t.publish("x", b"")
    with pytest.raises(ValueError):
        MemoryTransport(broker, "dev-2").publish("x", b"", qos=2)


def test_subscribe_while_connected_gets_retained_and_unsubscribe_stops_delivery(
    broker: MemoryBroker, clients: list[MemoryTransport]
) -> None:
    pub, sub = make(broker, clients, "pub"), make(broker, clients, "sub")
    pub.start()
    sub.start()
    pub.publish("cfg", b"v1", retain=True)
    got = collect(sub, "cfg")
    assert broker.drain(2)
    assert [m.payload for m in got] == [b"v1"]
    sub.unsubscribe("cfg")
    pub.publish("cfg", b"v2")
    assert broker.drain(2)
    assert [m.payload for m in got] == [b"v1"]
