"""MqttTransport against a real Mosquitto: sessions, wills, reconnects and the QoS 1 window.

Nothing here asserts on time; waits have generous deadlines and only fail a test that hangs.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgectl.transport.base import Message, TransportError, TransportOffline, Will
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.mqtt

REPO = Path(__file__).resolve().parents[2]
_ids = itertools.count()


def until(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A topic and client-id prefix of this test's own (the session broker keeps retained
    messages and sessions from other tests)."""
    return f"t{os.getpid()}-{next(_ids)}-{request.node.name[:40]}"


@pytest.fixture
def made() -> Iterator[list[MqttTransport]]:
    transports: list[MqttTransport] = []
    yield transports
    for t in transports:
        t.stop()


def transport(made: list[MqttTransport], broker: Mosquitto, client_id: str, **kw: object) -> MqttTransport:
    settings = MqttSettings(url=broker.url, client_id=client_id, reconnect_min_s=0.05, reconnect_max_s=0.5,
                            **kw)  # type: ignore[arg-type]
    t = MqttTransport(settings)
    made.append(t)
    return t


def started(t: MqttTransport) -> MqttTransport:
    t.start()
    assert t.wait_connected(10), t.last_error
    return t


def collect(t: MqttTransport, topic_filter: str) -> list[Message]:
    got: list[Message] = []
    t.subscribe(topic_filter, got.append)
    return got


def test_round_trip_with_properties(mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str) -> None:
    server = transport(made, mosquitto_session, f"{ns}-server")
    device = transport(made, mosquitto_session, f"{ns}-device")

    def answer(m: Message) -> None:  # request/response as the chunk server does it
        assert m.response_topic is not None
        server.publish(m.response_topic, m.payload[::-1], correlation_data=m.correlation_data,
                       user_properties=(("status", "ok"), ("n", str(len(m.payload)))), content_type="x/reversed")

    server.subscribe(f"{ns}/get", answer)
    replies = collect(device, f"{ns}/reply/+")
    started(server)
    started(device)
    device.publish(f"{ns}/get", b"abc\x00", response_topic=f"{ns}/reply/dev", correlation_data=b"\x00\xffid")
    until(lambda: len(replies) == 1, what="the reply")
    assert replies[0] == Message(f"{ns}/reply/dev", b"\x00cba", retain=False, correlation_data=b"\x00\xffid",
                                 user_properties=(("status", "ok"), ("n", "4")), content_type="x/reversed")


def test_retained_and_cleared(mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str) -> None:
    fleet = started(transport(made, mosquitto_session, f"{ns}-fleet"))
    fleet.publish(f"{ns}/dev/1/desired", b"gen-1", retain=True)
    fleet.publish(f"{ns}/dev/2/desired", b"gen-1", retain=True)
    fleet.publish(f"{ns}/dev/2/desired", b"", retain=True)  # clears dev/2
    assert fleet.flush(10)
    dev = transport(made, mosquitto_session, f"{ns}-dev")
    got = collect(dev, f"{ns}/dev/+/desired")
    started(dev)
    until(lambda: len(got) >= 1, what="the retained message")
    fleet.publish(f"{ns}/dev/1/desired", b"gen-2", retain=True)
    until(lambda: len(got) == 2, what="the live message")
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        (f"{ns}/dev/1/desired", b"gen-1", True),
        (f"{ns}/dev/1/desired", b"gen-2", False),
    ]


_WILL_CHILD = """
import sys, time
from edgectl.transport.base import Will
from edgectl.transport.mqtt import MqttSettings, MqttTransport
url, cid, topic = sys.argv[1:4]
t = MqttTransport(MqttSettings(url=url, client_id=cid, will=Will(topic, b"offline", retain=False)))
t.start()
if not t.wait_connected(10):
    sys.exit(f"not connected: {t.last_error}")
print("ready", flush=True)
time.sleep(120)
"""


def test_will_is_delivered_when_the_client_process_is_killed(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    watcher = transport(made, mosquitto_session, f"{ns}-watcher")
    states = collect(watcher, f"{ns}/dev/+/state")
    started(watcher)
    child = subprocess.Popen(
        [sys.executable, "-c", _WILL_CHILD, mosquitto_session.url, f"{ns}-dev", f"{ns}/dev/1/state"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.stderr else line
        assert states == []
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    until(lambda: len(states) == 1, what="the will")
    assert (states[0].topic, states[0].payload) == (f"{ns}/dev/1/state", b"offline")


def test_will_on_kill_but_not_on_stop(mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str) -> None:
    watcher = transport(made, mosquitto_session, f"{ns}-watcher")
    states = collect(watcher, f"{ns}/state")
    started(watcher)
    will = Will(f"{ns}/state", b"gone", retain=False)
    started(transport(made, mosquitto_session, f"{ns}-polite", will=will)).stop()
    crash = started(transport(made, mosquitto_session, f"{ns}-crash", will=will))
    crash.kill()
    until(lambda: len(states) == 1, what="the will")
    time.sleep(0.2)  # the polite client's will would have arrived first; give a stray copy a chance
    assert [m.payload for m in states] == [b"gone"]


def test_persistent_session_keeps_qos1_while_away(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    topic = f"{ns}/dev/1/desired"
    first = transport(made, mosquitto_session, f"{ns}-dev")
    collect(first, topic)
    started(first).stop()
    fleet = started(transport(made, mosquitto_session, f"{ns}-fleet"))
    for i in range(20):
        fleet.publish(topic, str(i).encode(), qos=1)
    assert fleet.flush(10)
    again = transport(made, mosquitto_session, f"{ns}-dev")  # same client id: same session
    got = collect(again, topic)
    started(again)
    until(lambda: len(got) == 20, what="the queued messages")
    assert [int(m.payload) for m in got] == list(range(20))


def test_reconnects_after_broker_restart_with_listener_events(mosquitto: Mosquitto, made: list[MqttTransport],
                                                              ns: str) -> None:
    events: list[bool] = []
    dev = transport(made, mosquitto, f"{ns}-dev")
    got = collect(dev, f"{ns}/desired")
    dev.add_connection_listener(events.append)
    started(dev)
    until(lambda: events == [True], what="the first connect event")

    mosquitto.stop()
    until(lambda: events == [True, False], what="the disconnect event")
    assert not dev.connected
    with pytest.raises(TransportOffline):
        dev.publish(f"{ns}/report", b"x")
    assert dev.last_error is not None

    mosquitto.start()  # same port, sessions restored from its persistence file
    assert dev.wait_connected(15), dev.last_error
    until(lambda: events == [True, False, True], what="the reconnect event")
    fleet = started(transport(made, mosquitto, f"{ns}-fleet"))
    fleet.publish(f"{ns}/desired", b"after-restart")
    until(lambda: len(got) == 1, what="a message after the restart")


def test_first_connect_may_fail_and_is_retried(tmp_path: Path, made: list[MqttTransport], ns: str) -> None:
    broker = Mosquitto(tmp_path / "late")  # not started yet
    dev = transport(made, broker, f"{ns}-dev")
    dev.start()  # returns at once
    until(lambda: dev.last_error is not None, what="a failed attempt")
    assert "cannot connect" in (dev.last_error or "")
    broker.start()
    try:
        assert dev.wait_connected(15), dev.last_error
    finally:
        dev.stop()
        broker.stop()


def test_refused_credentials_are_retried_with_last_error(
    tmp_path: Path, made: list[MqttTransport], ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "closed", anonymous=False)
    broker.start()
    try:
        with caplog.at_level(logging.INFO, logger="edgectl.transport.mqtt"):
            dev = transport(made, broker, f"{ns}-dev", username="nobody", password="wrong")
            dev.start()
            until(lambda: sum("reconnecting in" in r.getMessage() for r in caplog.records) >= 3,
                  what="three retries")
        assert not dev.connected
        assert "refused" in (dev.last_error or "")
        dev.stop()
    finally:
        broker.stop()


def test_handler_publishing_qos1_in_a_loop_does_not_deadlock(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    # A window of 4 makes the handler block on acks many times; the acks are read by the
    # network thread while the handler waits on the dispatcher thread.
    worker = transport(made, mosquitto_session, f"{ns}-worker", max_inflight=4)
    sink = transport(made, mosquitto_session, f"{ns}-sink")
    out = collect(sink, f"{ns}/out")

    def burst(m: Message) -> None:
        for i in range(int(m.payload)):
            worker.publish(f"{ns}/out", str(i).encode(), qos=1)

    worker.subscribe(f"{ns}/in", burst)
    started(worker)
    started(sink)
    worker.publish(f"{ns}/in", b"300")  # to itself: the handler runs on its own dispatcher
    until(lambda: len(out) == 300, what="300 messages from the handler")
    assert sorted(int(m.payload) for m in out) == list(range(300))


def test_window_moves_5000_small_qos1_messages(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    sink = transport(made, mosquitto_session, f"{ns}-sink")
    got = collect(sink, f"{ns}/n")
    started(sink)
    src = started(transport(made, mosquitto_session, f"{ns}-src"))
    for i in range(5000):
        src.publish(f"{ns}/n", i.to_bytes(4, "big"), qos=1)
    assert src.flush(20)
    until(lambda: len(got) == 5000, timeout=20, what="5000 messages")
    assert sorted(int.from_bytes(m.payload, "big") for m in got) == list(range(5000))


def test_full_window_times_out_and_a_lost_link_releases_waiters(
    mosquitto: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    src = started(transport(made, mosquitto, f"{ns}-src", max_inflight=4))
    mosquitto.freeze()  # no more acks
    try:
        for i in range(4):
            src.publish(f"{ns}/x", bytes([i]))
        with pytest.raises(TransportError) as timed_out:
            src.publish(f"{ns}/x", b"5", timeout=0.3)
        assert not isinstance(timed_out.value, TransportOffline)

        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                src.publish(f"{ns}/x", b"6", timeout=60)
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=blocked)
        waiter.start()
        time.sleep(0.2)  # let it block on the window (the test passes either way)
    finally:
        mosquitto.kill()  # the kernel resets the connection: the client sees the loss
    waiter.join(30)
    assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TransportOffline)

    # The four the broker never acknowledged are still ours: resent after the reconnect.
    mosquitto.start()
    assert src.wait_connected(15), src.last_error
    assert src.flush(15)


def test_shared_subscription_splits_messages(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    shared = f"$share/{ns}/{ns}/get"
    a, b = (transport(made, mosquitto_session, f"{ns}-{n}") for n in "ab")
    got_a, got_b = collect(a, shared), collect(b, shared)
    started(a)
    started(b)
    src = started(transport(made, mosquitto_session, f"{ns}-src"))
    for i in range(40):
        src.publish(f"{ns}/get", str(i).encode())
    until(lambda: len(got_a) + len(got_b) == 40, what="40 shared messages")
    assert sorted(int(m.payload) for m in got_a + got_b) == list(range(40))
    assert got_a and got_b


def test_size_limits(mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str,
                     caplog: pytest.LogCaptureFixture) -> None:
    small = transport(made, mosquitto_session, f"{ns}-small", max_payload=1000)
    got = collect(small, f"{ns}/big")
    started(small)
    src = started(transport(made, mosquitto_session, f"{ns}-src"))
    with caplog.at_level(logging.WARNING, logger="edgectl.transport.mqtt"):
        src.publish(f"{ns}/big", b"x" * 1001)
        src.publish(f"{ns}/big", b"y" * 1000)
        until(lambda: len(got) == 1, what="the message within the limit")
    assert got[0].payload == b"y" * 1000
    assert any("exceeds max_payload" in r.getMessage() for r in caplog.records)
    with pytest.raises(TransportError, match="maximum packet size"):
        src.publish(f"{ns}/big", b"z" * (mosquitto_session.max_packet_size + 1))
    assert src.connected


def test_overlapping_subscriptions_each_get_one_copy(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    dev = transport(made, mosquitto_session, f"{ns}-dev")
    wide, narrow = collect(dev, f"{ns}/#"), collect(dev, f"{ns}/a/+")
    started(dev)
    src = started(transport(made, mosquitto_session, f"{ns}-src"))
    src.publish(f"{ns}/a/b", b"1")
    src.publish(f"{ns}/c", b"2")
    until(lambda: len(wide) == 2 and len(narrow) == 1, what="both subscriptions")
    time.sleep(0.2)  # a duplicate would arrive right behind
    assert [m.payload for m in wide] == [b"1", b"2"] and [m.payload for m in narrow] == [b"1"]


def test_subscribe_while_connected_and_unsubscribe(
    mosquitto_session: Mosquitto, made: list[MqttTransport], ns: str
) -> None:
    src = started(transport(made, mosquitto_session, f"{ns}-src"))
    src.publish(f"{ns}/cfg", b"v1", retain=True)
    assert src.flush(10)
    dev = started(transport(made, mosquitto_session, f"{ns}-dev"))
    cfg = collect(dev, f"{ns}/cfg")  # returns once the broker has acknowledged it
    until(lambda: [m.payload for m in cfg] == [b"v1"], what="the retained message")
    sentinel = collect(dev, f"{ns}/sentinel")
    dev.unsubscribe(f"{ns}/cfg")
    src.publish(f"{ns}/cfg", b"v2")
    src.publish(f"{ns}/sentinel", b"")  # had v2 been routed to us, it would arrive before this
    until(lambda: len(sentinel) == 1, what="the sentinel")
    assert [m.payload for m in cfg] == [b"v1"]


def test_offline_publish_and_bad_settings() -> None:
    t = MqttTransport(MqttSettings(url="mqtt://127.0.0.1:1", client_id="never-started"))
    with pytest.raises(TransportOffline):
        t.publish("x", b"")
    with pytest.raises(TransportError, match="not mqtt://"):
        MqttSettings(url="http://host", client_id="x")
    with pytest.raises(TransportError, match="client_id"):
        MqttSettings(url="mqtt://host", client_id="")
    assert MqttSettings(url="mqtts://broker.example", client_id="x").endpoint() == ("broker.example", 8883, True)
