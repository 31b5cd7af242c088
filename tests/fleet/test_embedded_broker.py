"""The embedded MQTT 5 broker (fleet/embedded_broker.py) as its own process, spoken to by real
clients: our MqttTransport, plain paho-mqtt 2.x, raw sockets for what no well-behaved client
sends, and the real agent daemon fetching artifacts over it.

Absence ("no retained message was sent", "no more than N in flight") is checked with a sentinel
sent after the step on the same connection: the broker handles one connection's packets in order,
so when the sentinel arrives everything the step caused has arrived before it.
"""

from __future__ import annotations

import queue
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgectl.transport.base import Message, TransportError, Will
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.artifacts import ArtifactStore
from fleet.broker import EmbeddedBroker
from fleet.embedded_broker import MAX_PACKET_SIZE
from fleet.mqtt_codec import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    P_RECEIVE_MAX,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    encode_properties,
    packet,
    utf8,
    varint,
)
from tests.edge_agent.agent_rig import AgentProcess, ControllerSide, SlowChunkServer, deployment, install_digits

WAIT_S = 20.0  # a liveness bound for deliveries, never a speed check
X86 = "x86_64-avx2"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(tmp_path / "broker").start()
    yield b
    b.stop()


# --- clients -----------------------------------------------------------------------------------

class Inbox:
    """Messages as a handler receives them, with a wait for the next one."""

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.all: list[Any] = []

    def __call__(self, msg: Any) -> None:
        self.all.append(msg)
        self.q.put(msg)

    def next(self) -> Any:
        try:
            return self.q.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no message within {WAIT_S} s; got so far: {self.all}") from None

    def take(self, n: int) -> list[Any]:
        return [self.next() for _ in range(n)]

    def until(self, topic: str) -> list[Any]:
        """Everything before the first message on ``topic`` (which is consumed)."""
        got = []
        while (m := self.next()).topic != topic:
            got.append(m)
        return got


def transport(broker: EmbeddedBroker, client_id: str, subs: dict[str, Inbox] | None = None,
              **settings: Any) -> MqttTransport:
    t = MqttTransport(MqttSettings(url=broker.url, client_id=client_id, **settings))
    for topic_filter, inbox in (subs or {}).items():
        t.subscribe(topic_filter, inbox)
    t.start()
    assert t.wait_connected(WAIT_S), t.last_error
    return t


class Paho:
    """A plain paho MQTT 5 client on its own loop thread."""

    def __init__(self, broker: EmbeddedBroker, client_id: str, *, receive_max: int | None = None,
                 manual_ack: bool = False) -> None:
        self.inbox = Inbox()
        self.connack: queue.Queue[Any] = queue.Queue()
        self.c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=paho.MQTTv5, manual_ack=manual_ack)
        self.c.on_message = lambda c, u, m: self.inbox(m)
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put((rc, p))
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(codes)
        props = Properties(PacketTypes.CONNECT)
        if receive_max is not None:
            props.ReceiveMaximum = receive_max
        self.c.connect(broker.host, broker.port, properties=props)
        self.c.loop_start()
        rc, self.props = self.connack.get(timeout=WAIT_S)
        assert not rc.is_failure, rc

    def subscribe(self, topic_filter: str, qos: int = 1, retain_handling: int = 0) -> None:
        """Returns once the SUBACK is in: a publisher on another connection is then seen."""
        self.c.subscribe(topic_filter, options=SubscribeOptions(qos=qos, retainHandling=retain_handling))
        codes = self.subacks.get(timeout=WAIT_S)
        assert not any(c.is_failure for c in codes), codes

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class Raw:
    """A socket speaking MQTT 5 byte by byte, for what a real client would never send."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=WAIT_S)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read(self) -> tuple[int, bytes] | None:
        """(packet type, body), or None once the broker closed the connection."""
        if not self._fill(2):
            return None
        length, shift, i = 0, 0, 1
        while True:
            if not self._fill(i + 1):
                return None
            length |= (self.buf[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not self.buf[i - 1] & 0x80:
                break
        if not self._fill(i + length):
            return None
        kind, body = self.buf[0] >> 4, self.buf[i:i + length]
        self.buf = self.buf[i + length:]
        return kind, body

    def connect(self, client_id: str, *, level: int = 5, props: bytes = encode_properties([])) -> bytes:
        self.send(packet(CONNECT, utf8("MQTT") + bytes([level, 0x02]) + struct.pack("!H", 30) + props
                         + utf8(client_id)))
        got = self.read()
        assert got is not None and got[0] == CONNACK, got
        return got[1]

    def close(self) -> None:
        self.sock.close()


# --- sessions, wills, retained messages, wildcards, properties ---------------------------------

def test_a_persistent_session_keeps_qos1_messages_while_the_client_is_away(broker: EmbeddedBroker) -> None:
    first = Inbox()
    away = transport(broker, "away", {"q/away": first}, session_expiry_s=300)
    away.stop()  # a clean DISCONNECT: the session (and its subscription) stays
    pub = transport(broker, "pub")
    for i in range(50):
        pub.publish("q/away", b"%d" % i, qos=1)
    pub.flush(WAIT_S)
    back = Inbox()
    again = transport(broker, "away", {"q/away": back}, session_expiry_s=300)
    assert [m.payload for m in back.take(50)] == [b"%d" % i for i in range(50)]
    again.stop()
    pub.stop()
    assert first.all == []


def test_a_client_without_session_expiry_gets_nothing_queued(broker: EmbeddedBroker) -> None:
    gone = Paho(broker, "no-expiry")
    gone.subscribe("q/gone")
    gone.publish("q/gone-sentinel", b"", qos=1)  # the SUBSCRIBE was handled before this
    gone.close()
    pub = Paho(broker, "pub-gone")
    pub.publish("q/gone", b"lost")
    back = Paho(broker, "no-expiry")
    back.subscribe("q/sentinel", qos=0)
    back.publish("q/sentinel", b"", qos=0)
    assert back.inbox.until("q/sentinel") == []
    back.close()
    pub.close()


def test_the_will_is_published_retained_when_a_client_drops(broker: EmbeddedBroker) -> None:
    watch = Inbox()
    watcher = transport(broker, "watcher", {"dev/+/state": watch})
    will = Will("dev/d1/state", b"offline", qos=1, retain=True)
    dev = transport(broker, "d1", will=will)
    dev.publish("dev/d1/state", b"online", qos=1, retain=True)
    assert watch.next().payload == b"online"
    dev.kill()  # no DISCONNECT: a crash
    m = watch.next()
    assert (m.topic, m.payload) == ("dev/d1/state", b"offline")
    late = Paho(broker, "late")
    late.subscribe("dev/#")
    got = late.inbox.next()
    assert (got.topic, got.payload, got.retain) == ("dev/d1/state", b"offline", True)
    late.close()
    watcher.stop()


def test_retained_messages_follow_retain_handling(broker: EmbeddedBroker) -> None:
    pub = Paho(broker, "retainer")
    pub.publish("r/a", b"one", retain=True)
    pub.publish("r/b", b"two", retain=True)
    s = Paho(broker, "retain-sub")
    s.subscribe("s/#", qos=0)

    def step(n: int, topic_filter: str, handling: int) -> list[tuple[str, bytes, bool]]:
        s.subscribe(topic_filter, retain_handling=handling)
        s.publish(f"s/{n}", b"", qos=0)
        return sorted((m.topic, m.payload, bool(m.retain)) for m in s.inbox.until(f"s/{n}"))

    both = [("r/a", b"one", True), ("r/b", b"two", True)]
    assert step(1, "r/+", 0) == both  # 0: on every subscribe
    assert step(2, "r/+", 0) == both
    assert step(3, "r/+", 1) == []  # 1: only if the subscription is new
    assert step(4, "r/#", 1) == both
    assert step(5, "r/a", 2) == []  # 2: never
    pub.publish("r/a", b"", retain=True)  # an empty payload clears it, and reaches subscribers once each
    s.publish("s/6", b"", qos=0)
    assert [(m.topic, m.payload) for m in s.inbox.until("s/6")] == [("r/a", b"")]
    fresh = Paho(broker, "retain-fresh")
    fresh.subscribe("r/#")
    fresh.subscribe("s/end", qos=0)
    fresh.publish("s/end", b"", qos=0)
    assert [(m.topic, m.payload) for m in fresh.inbox.until("s/end")] == [("r/b", b"two")]
    for c in (pub, s, fresh):
        c.close()


def test_wildcards_match_as_the_spec_says(broker: EmbeddedBroker) -> None:
    inboxes = {f: Inbox() for f in ("w/+/x", "w/#", "+/y", "#")}
    sub = transport(broker, "wild", dict(inboxes))
    pub = transport(broker, "wild-pub")
    for topic in ("w/a/x", "w/a/b/x", "w", "q/y", "$SYS/y", "other"):
        pub.publish(topic, topic.encode(), qos=1)
    pub.publish("end", b"", qos=1)
    assert [m.topic for m in inboxes["#"].until("end")] == ["w/a/x", "w/a/b/x", "w", "q/y", "other"]
    assert [m.topic for m in inboxes["w/+/x"].all] == ["w/a/x"]
    assert [m.topic for m in inboxes["w/#"].all] == ["w/a/x", "w/a/b/x", "w"]
    assert [m.topic for m in inboxes["+/y"].all] == ["q/y"]  # a leading wildcard skips $ topics
    sub.stop()
    pub.stop()


def test_publish_properties_pass_through(broker: EmbeddedBroker) -> None:
    inbox = Inbox()
    sub = transport(broker, "props-sub", {"p/+": inbox})
    pub = transport(broker, "props-pub")
    pub.publish("p/x", b"\x00\xff", qos=1, response_topic="p/reply", correlation_data=b"\x01\x02",
                user_properties=(("a", "1"), ("a", "2"), ("b", "")), content_type="application/json")
    pub.publish("p/y", b"plain", qos=0)
    m: Message = inbox.next()
    assert (m.topic, m.payload, m.response_topic, m.correlation_data, m.content_type) == (
        "p/x", b"\x00\xff", "p/reply", b"\x01\x02", "application/json")
    assert m.user_properties == (("a", "1"), ("a", "2"), ("b", ""))
    plain = inbox.next()
    assert (plain.payload, plain.response_topic, plain.user_properties) == (b"plain", None, ())
    sub.stop()
    pub.stop()


# --- flow control and limits -------------------------------------------------------------------

def test_receive_maximum_bounds_the_unacknowledged_messages(broker: EmbeddedBroker) -> None:
    r = Paho(broker, "slow-reader", receive_max=3, manual_ack=True)
    r.subscribe("rm/#")
    r.subscribe("probe/#", qos=0)
    pub = Paho(broker, "fast-writer")
    for i in range(10):
        pub.publish(f"rm/{i}", b"%d" % i)
    # Each round: acknowledge what arrived, then a QoS 0 probe from the reader itself, which the
    # broker handles after those acks: what arrives before it is all the broker let through.
    batches, n = [], 0
    pub.publish("probe/0", b"", qos=0)
    pending = r.inbox.until("probe/0")
    while pending:
        batches.append([m.topic for m in pending])
        for m in pending:
            r.c.ack(m.mid, 1)
        n += 1
        r.publish(f"probe/{n}", b"", qos=0)
        pending = r.inbox.until(f"probe/{n}")
    assert [len(b) for b in batches] == [3, 3, 3, 1], batches
    assert [t for b in batches for t in b] == [f"rm/{i}" for i in range(10)]
    r.close()
    pub.close()


def test_a_message_over_the_brokers_maximum_packet_size(broker: EmbeddedBroker) -> None:
    t = transport(broker, "big-sender", max_payload=16 << 20)
    with pytest.raises(TransportError, match="maximum packet size"):  # the CONNACK told it the limit
        t.publish("big", b"x" * (9 << 20), qos=1)
    t.stop()
    raw = Raw(broker)
    raw.connect("oversize")
    raw.send(bytes([PUBLISH << 4]) + varint(MAX_PACKET_SIZE) + b"\x00\x01t")  # the header is enough
    got = raw.read()
    assert got is not None and got[0] == DISCONNECT and got[1][0] == 0x95, got  # Packet too large
    assert raw.read() is None
    raw.close()


def test_one_megabyte_chunks_in_qos1_windows(broker: EmbeddedBroker) -> None:
    inbox = Inbox()
    sink = transport(broker, "chunk-sink", {"chunks/#": inbox}, max_payload=2 << 20)
    source = transport(broker, "chunk-source", max_inflight=4)
    blobs = [bytes([i]) * (1 << 20) for i in range(24)]
    for i, blob in enumerate(blobs):
        source.publish("chunks/a", blob, qos=1, correlation_data=struct.pack("!I", i))
    got = inbox.take(24)
    assert [struct.unpack("!I", m.correlation_data)[0] for m in got] == list(range(24))
    assert all(m.payload == blob for m, blob in zip(got, blobs, strict=True))
    source.stop()
    sink.stop()


@pytest.mark.parametrize(("name", "data", "code"), [
    ("QoS 3", bytes([PUBLISH << 4 | 0x06, 3, 0, 1, 0x74]), 0x81),
    ("QoS 2 (maximum is 1)", bytes([PUBLISH << 4 | 0x04, 6, 0, 1, 0x74, 0, 1, 0]), 0x9B),
    ("a topic that is not UTF-8", bytes([PUBLISH << 4, 4, 0, 1, 0xFF, 0]), 0x81),
    ("a wildcard in a topic name", bytes([PUBLISH << 4, 4, 0, 1, 0x23, 0]), 0x90),
    ("reserved subscription options", packet(SUBSCRIBE, b"\x00\x01\x00" + utf8("a") + b"\xc1", 0x02), 0x81),
    ("a property running past its length", bytes([PUBLISH << 4, 6, 0, 1, 0x74, 3, 0x26, 0]), 0x81),
    ("a topic alias (maximum 0)", bytes([PUBLISH << 4, 7, 0, 1, 0x74, 3, 0x23, 0, 1]), 0x94),
    ("a second CONNECT", packet(CONNECT, utf8("MQTT") + b"\x05\x02\x00\x1e\x00" + utf8("x")), 0x82),
])
def test_a_bad_packet_drops_that_client_and_the_broker_serves_on(broker: EmbeddedBroker, name: str, data: bytes,
                                                                  code: int) -> None:
    inbox = Inbox()
    sub = transport(broker, "bystander", {"ok/#": inbox})
    pub = transport(broker, "bystander-pub")
    raw = Raw(broker)
    raw.connect("bad-client")
    raw.send(data)
    got = raw.read()
    assert got is not None and got[0] == DISCONNECT and got[1][0] == code, (name, got)
    assert raw.read() is None
    raw.close()
    pub.publish("ok/after", b"still here", qos=1)
    assert inbox.next().payload == b"still here"
    assert broker.running and sub.connected
    sub.stop()
    pub.stop()


def test_subscribe_grants_qos1_and_refuses_bad_filters(broker: EmbeddedBroker) -> None:
    raw = Raw(broker)
    connack = raw.connect("subscriber")
    assert connack[:2] == b"\x00\x00"
    filters = [("q2/x", 2), ("$share/g/x", 1), ("bad/#/x", 0), ("ok/+", 1), ("a+/b", 0), ("$share/g", 1),
               ("$share//x", 0)]
    raw.send(packet(SUBSCRIBE, b"\x00\x07\x00" + b"".join(utf8(f) + bytes([q]) for f, q in filters), 0x02))
    assert raw.read() == (SUBACK, b"\x00\x07\x00" + bytes([1, 1, 0x8F, 1, 0x8F, 0x8F, 0x8F]))
    raw.close()


def test_a_shared_subscription_gives_each_message_to_one_member(broker: EmbeddedBroker) -> None:
    inboxes = [Inbox(), Inbox()]
    members = [transport(broker, f"member-{i}", {"$share/workers/jobs/+": inbox}) for i, inbox in enumerate(inboxes)]
    plain = Inbox()
    watcher = transport(broker, "plain", {"jobs/+": plain})
    pub = transport(broker, "jobs-pub")
    for i in range(10):
        pub.publish(f"jobs/{i}", b"%d" % i, qos=1)
    assert [m.topic for m in plain.take(10)] == [f"jobs/{i}" for i in range(10)]  # not shared: every one
    got = [inboxes[0].take(5), inboxes[1].take(5)]  # in turn: five each
    assert sorted(m.topic for m in got[0] + got[1]) == sorted(f"jobs/{i}" for i in range(10))
    for t in (*members, watcher, pub):
        t.stop()


def test_connack_and_protocol_versions(broker: EmbeddedBroker) -> None:
    c = Paho(broker, "props")
    assert (c.props.ReceiveMaximum, c.props.MaximumQoS, c.props.MaximumPacketSize) == (1000, 1, MAX_PACKET_SIZE)
    c.close()
    raw = Raw(broker)
    assert raw.connect("", props=encode_properties([(P_RECEIVE_MAX, 5)]))[:2] == b"\x00\x00"  # an id is assigned
    raw.close()
    old = Raw(broker)
    old.send(packet(CONNECT, utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + utf8("v311")))
    assert old.read() == (CONNACK, b"\x00\x01")  # MQTT 3.1.1: unacceptable protocol version
    assert old.read() is None
    old.close()


def test_garbage_before_connect_closes_the_connection(broker: EmbeddedBroker) -> None:
    raw = Raw(broker)
    raw.send(b"GET / HTTP/1.1\r\n\r\n")
    assert raw.read() is None  # no DISCONNECT before a CONNACK
    raw.close()
    ok = transport(broker, "after-garbage")
    ok.stop()


# --- the agent over it ---------------------------------------------------------------------------

@pytest.fixture
def controller(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[ControllerSide]:
    t = MqttTransport(MqttSettings(url=broker.url, client_id="controller"))
    ctl = ControllerSide(t, ArtifactStore(tmp_path / "store"), "dev-1", server_class=SlowChunkServer)
    ctl.server.delay_s = 0.0  # type: ignore[attr-defined]
    t.start()
    assert t.wait_connected(WAIT_S)
    yield ctl
    t.stop()


def test_the_agent_fetches_installs_and_serves_over_the_embedded_broker(broker: EmbeddedBroker,
                                                                         controller: ControllerSide,
                                                                         tmp_path: Path, digits_artifacts: Any) -> None:
    a = digits_artifacts
    agent = AgentProcess(tmp_path, "dev-1", broker.url, a.public_key, chunk_kb=4, window=8)
    try:
        install_digits(controller, agent, a, X86)
        assert agent.predict(a.sample(2))[0] == 200
    finally:
        agent.terminate()


def test_a_broker_restart_mid_transfer_loses_sessions_and_the_install_still_resumes(
        broker: EmbeddedBroker, controller: ControllerSide, tmp_path: Path, digits_artifacts: Any) -> None:
    a = digits_artifacts
    agent = AgentProcess(tmp_path, "dev-1", broker.url, a.public_key, chunk_kb=4, window=1)
    try:
        ref = controller.publish(a.folder(X86))
        controller.server.delay_s = 0.03  # type: ignore[attr-defined]
        agent.start()
        controller.desire(deployment("digits", ref, a.variant(X86, "fp32")["file"]))
        controller.wait_for("digits", "downloading")
        broker.kill()  # kill -9: every session and retained message is gone
        broker.start()  # same port; both sides reconnect and subscribe again
        controller.wait_for("digits", "serving", timeout=90)
        assert "failed" not in controller.trail("digits")
        agent.wait_http()
        assert agent.predict(a.sample(1))[0] == 200
    finally:
        agent.terminate()


def test_the_broker_process_stops_on_sigterm_and_restarts_on_its_port(tmp_path: Path) -> None:
    b = EmbeddedBroker(tmp_path / "b").start()
    port, proc = b.port, b.proc
    assert proc is not None
    b.stop()
    assert proc.returncode == 0
    b.start()
    assert b.port == port and b.running
    holder = EmbeddedBroker(tmp_path / "c", port=port)  # the port is taken: a clear error with the log
    with pytest.raises(Exception, match="in use"):
        holder.start()
    b.stop()
    assert "listening" in b.log_path.read_text()
