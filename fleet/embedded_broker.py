"""An MQTT 5 broker in pure Python (asyncio, one thread), for ``edgectl up`` where Mosquitto is not
installed. It speaks exactly the subset edgectl's clients use, and refuses the rest with the
reason codes of the MQTT 5 spec::

    python -m fleet.embedded_broker --host 127.0.0.1 --port 40123 [--log broker.log]

    broker = EmbeddedBroker(Path("run/broker")).start()    # fleet/broker.py: the same shape as
    broker.url                                              # MosquittoBroker (start/url/stop/kill)

Supported: MQTT 5 CONNECT (clean start on or off, Session Expiry Interval, Receive Maximum,
Maximum Packet Size), persistent sessions with QoS 1 queued while the client is away and resent
(DUP) on resume, last will (retained or not, published on an abrupt close, a keep-alive timeout,
a protocol error, a session takeover or DISCONNECT 0x04), retained messages (an empty payload
clears one), QoS 0 and 1, wildcard filters (``+``, ``#``; ``$`` topics are not matched by a
leading wildcard), subscription options (QoS, No Local, Retain As Published, Retain Handling
0/1/2), subscription identifiers, shared subscriptions (``$share/group/filter``: each message to
one member, in turn among those online; the controller's chunk servers share requests this way),
PUBLISH properties passed through untouched (User Property, Response Topic, Correlation Data,
Content Type, Payload Format, Message Expiry), flow control towards each client (never more
unacknowledged QoS 1 than its Receive Maximum, capped at ``MAX_INFLIGHT``, and none while 16 MB
wait in its socket's send buffer), packets up to ``MAX_PACKET_SIZE`` (8 MB + 64 KB, as
``fleet.broker`` configures Mosquitto).

Refused, with its reason code: QoS 2 subscriptions are granted QoS 1; a QoS 2 PUBLISH (we announce
Maximum QoS 1) → DISCONNECT 0x9B; a bad filter (shared or not) → SUBACK 0x8F; topic aliases (we
announce none) → DISCONNECT 0x94; a packet over the maximum size → DISCONNECT 0x95; a malformed
packet → DISCONNECT 0x81 and a protocol violation → 0x82 (only that client is dropped); a first
packet that is not CONNECT → the connection is closed; enhanced authentication → CONNACK 0x8C;
MQTT 3.1/3.1.1 → CONNACK "unacceptable protocol version".

Not done: Will Delay Interval (the will is published at once), Message Expiry (passed through,
not counted down), persistence: sessions and retained messages live in memory, so a restart
(SIGTERM or kill -9) loses them. edgectl's clients recover from that on reconnect:
``MqttTransport`` re-subscribes on every connect, the agent re-announces its retained state, and
the controller re-publishes every desired state (``Controller._on_connection`` forgets its
digests); tests/fleet/test_embedded_broker.py and the chaos broker-restart run check it.

Why our own: every candidate was installed and probed with a paho MQTT 5 client (2026-11):

    amqtt 0.12.1        MQTT 3.1.1 only (broker_handler.py: _MQTT_PROTOCOL_LEVEL_SUPPORTED = 4):
                        a v5 CONNECT is answered "unacceptable protocol version", and in the probe
                        the handler crashed in write_eof before paho even saw that CONNACK
    iotcore 0.4.0       (rumqttd in Rust, v5 listener from its TOML config) no persistent session:
                        clean_start=False + Session Expiry 300 resumes with session_present=False
                        and the QoS 1 message published while away is lost; Retain Handling 2
                        still sends the retained message
    moat-lib-mqtt 0.8.7 no persistent session (same probe), no last will at all, and of the
                        PUBLISH properties only User Property reaches the subscriber (Response
                        Topic and Correlation Data, which our chunk requests need, are dropped)
    mqttools 0.50.0     CONNACK says Maximum QoS 0 and Wildcard Subscription Available 0; a
                        2 MB message is never delivered

No library to wrap, so this module is a compact broker on a hand-written codec
(fleet/mqtt_codec.py; no dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from fleet.mqtt_codec import (
    BAD_AUTH_METHOD,
    CONNACK,
    CONNECT,
    DISCONNECT,
    DISCONNECT_WITH_WILL,
    KEEP_ALIVE_TIMEOUT,
    MALFORMED,
    NO_SUBSCRIPTION_EXISTED,
    P_ASSIGNED_ID,
    P_AUTH_METHOD,
    P_MAX_PACKET,
    P_MAX_QOS,
    P_REASON_STRING,
    P_RECEIVE_MAX,
    P_SESSION_EXPIRY,
    P_SUB_ID,
    P_TOPIC_ALIAS,
    P_WILL_DELAY,
    PACKET_TOO_LARGE,
    PINGREQ,
    PINGRESP,
    PROTOCOL_ERROR,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    QOS_NOT_SUPPORTED,
    SERVER_SHUTTING_DOWN,
    SESSION_TAKEN_OVER,
    SUBACK,
    SUBSCRIBE,
    SUCCESS,
    TOPIC_ALIAS_INVALID,
    TOPIC_FILTER_INVALID,
    TOPIC_NAME_INVALID,
    UNSUBACK,
    UNSUBSCRIBE,
    ProtocolViolation,
    Reader,
    encode_properties,
    encode_property,
    filter_matches,
    packet,
    split_fixed_header,
    split_share,
    valid_filter,
    varint,
)

log = logging.getLogger("fleet.embedded_broker")

MAX_PACKET_SIZE = (8 << 20) + (64 << 10)  # as fleet.broker gives Mosquitto: 1 MB chunks and more
MAX_INFLIGHT = 1000  # unacknowledged QoS 1 towards one client, at most (Mosquitto: max_inflight_messages)
MAX_QUEUED = 100_000  # QoS 1 messages waiting for one client (Mosquitto: max_queued_messages)
RECEIVE_MAXIMUM = 1000  # what clients may have in flight towards us (we ack at once)
MAX_WRITE_BUFFER = 64 << 20  # QoS 0 to a client whose socket has this much unsent is dropped
WRITE_HIGH = 16 << 20  # QoS 1 to a client waits (in its queue) while this much is unsent
NEVER_EXPIRES = 0xFFFFFFFF
CONNECT_TIMEOUT_S = 10.0  # a TCP connection that sends no CONNECT for this long is closed

# --- state -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sub:
    client_id: str
    qos: int
    no_local: bool
    retain_as_published: bool
    sub_id: int | None
    share: str | None = None  # "$share/group/filter" for a shared subscription

    @property
    def key(self) -> str:
        """Its key in a tree node: a client may hold a plain and a shared subscription on one filter."""
        return self.client_id if self.share is None else f"{self.share}\0{self.client_id}"


@dataclass(frozen=True, slots=True)
class Msg:
    topic: bytes  # UTF-8, as on the wire
    payload: bytes
    qos: int
    retain: bool
    props: bytes  # raw properties, without their length


@dataclass
class Node:
    """One level of the subscription tree."""

    children: dict[str, Node] = field(default_factory=dict)
    subs: dict[str, Sub] = field(default_factory=dict)


@dataclass
class Session:
    client_id: str
    expiry: int = 0
    subs: dict[str, Sub] = field(default_factory=dict)
    conn: Connection | None = None
    inflight: dict[int, Msg] = field(default_factory=dict)  # packet id → sent, not yet PUBACKed
    queue: deque[Msg] = field(default_factory=deque)
    next_pid: int = 1
    expire_timer: asyncio.TimerHandle | None = None
    dropped: int = 0


def _match(node: Node, levels: list[str], i: int, dollar: bool, out: list[Sub]) -> None:
    if i == len(levels):
        out.extend(node.subs.values())
        hash_node = node.children.get("#")  # "a/#" matches "a" too
        if hash_node is not None:
            out.extend(hash_node.subs.values())
        return
    if not (i == 0 and dollar):  # "$..." topics are not matched by a leading wildcard
        hash_node = node.children.get("#")
        if hash_node is not None:
            out.extend(hash_node.subs.values())
        plus = node.children.get("+")
        if plus is not None:
            _match(plus, levels, i + 1, dollar, out)
    child = node.children.get(levels[i])
    if child is not None:
        _match(child, levels, i + 1, dollar, out)


class Broker:
    """Sessions, subscriptions and retained messages; ``Connection`` objects feed it packets."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.tree = Node()
        self.retained: dict[str, Msg] = {}
        self.share_turn: dict[str, int] = {}  # "$share/g/filter" → round-robin counter
        self.connections: set[Connection] = set()
        self._ids = itertools.count(1)

    def new_client_id(self) -> str:
        return f"edgectl-auto-{next(self._ids)}-{time.monotonic_ns() % 1_000_000}"

    # --- subscriptions ---
    def subscribe(self, session: Session, topic_filter: str, sub: Sub) -> bool:
        """True if the session had no subscription to this filter before."""
        node = self.tree
        for level in split_share(topic_filter)[1].split("/"):
            node = node.children.setdefault(level, Node())
        new = sub.key not in node.subs
        node.subs[sub.key] = sub
        session.subs[topic_filter] = sub
        return new

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        sub = session.subs.pop(topic_filter, None)
        if sub is None:
            return False
        levels = split_share(topic_filter)[1].split("/")
        path = [self.tree]
        for level in levels:
            nxt = path[-1].children.get(level)
            if nxt is None:
                return True
            path.append(nxt)
        path[-1].subs.pop(sub.key, None)
        for depth in range(len(levels), 0, -1):  # prune the branches left empty
            node = path[depth]
            if node.subs or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def end_session(self, session: Session) -> None:
        for topic_filter in list(session.subs):
            self.unsubscribe(session, topic_filter)
        if session.expire_timer is not None:
            session.expire_timer.cancel()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    # --- routing ---
    def publish(self, sender: str | None, topic: str, msg: Msg) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[topic] = msg
            else:
                self.retained.pop(topic, None)
        matched: list[Sub] = []
        _match(self.tree, topic.split("/"), 0, topic.startswith("$"), matched)
        if not matched:
            return
        # One copy per client: the highest QoS of its matching subscriptions, all their ids.
        per_client: dict[str, list[Sub]] = {}
        shared: dict[str, list[Sub]] = {}
        for sub in matched:
            if sub.share is not None:
                shared.setdefault(sub.share, []).append(sub)
            elif not (sub.no_local and sub.client_id == sender):
                per_client.setdefault(sub.client_id, []).append(sub)
        for share, members in shared.items():  # one member per group: the next online one in turn
            chosen = self.pick(share, members)
            if chosen is not None:
                per_client.setdefault(chosen.client_id, []).append(chosen)
        for client_id, subs in per_client.items():
            session = self.sessions.get(client_id)
            if session is None:
                continue
            qos = min(msg.qos, max(s.qos for s in subs))
            retain = msg.retain and any(s.retain_as_published for s in subs)
            ids = b"".join(encode_property(P_SUB_ID, s.sub_id) for s in subs if s.sub_id)
            self.deliver(session, Msg(msg.topic, msg.payload, qos, retain, msg.props + ids))

    def pick(self, share: str, members: list[Sub]) -> Sub | None:
        members.sort(key=lambda s: s.client_id)
        online = [s for s in members if (x := self.sessions.get(s.client_id)) is not None and x.conn is not None]
        pool = online or members
        turn = self.share_turn.get(share, 0)
        self.share_turn[share] = turn + 1
        return pool[turn % len(pool)] if pool else None

    def deliver(self, session: Session, msg: Msg) -> None:
        conn = session.conn
        if msg.qos == 0:
            if conn is not None:
                conn.send_publish(msg, 0, dup=False, droppable=True)
            return
        if len(session.queue) >= MAX_QUEUED:
            session.dropped += 1
            if session.dropped in (1, 10, 100) or session.dropped % 1000 == 0:
                log.warning("%s: %d QoS 1 message(s) dropped: its queue is full (%d)", session.client_id,
                            session.dropped, MAX_QUEUED)
            return
        session.queue.append(msg)
        if conn is not None:
            conn.pump()

    def send_retained(self, conn: Connection, topic_filter: str, sub: Sub) -> None:
        ids = encode_property(P_SUB_ID, sub.sub_id) if sub.sub_id else b""
        assert conn.session is not None
        for topic, msg in list(self.retained.items()):
            if filter_matches(topic_filter, topic):
                self.deliver(conn.session, Msg(msg.topic, msg.payload, min(msg.qos, sub.qos), True, msg.props + ids))

    def expire_later(self, session: Session) -> None:
        if session.expiry == 0:
            self.end_session(session)
        elif session.expiry != NEVER_EXPIRES:
            session.expire_timer = asyncio.get_running_loop().call_later(session.expiry, self.end_session, session)


@dataclass
class Will:
    topic: str
    msg: Msg


class Connection(asyncio.Protocol):
    """One client's TCP connection: parses its packets and writes what the broker sends it."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.session: Session | None = None
        self.will: Will | None = None
        self.keepalive = 0
        self.last_seen = self.opened = time.monotonic()
        self.window = MAX_INFLIGHT
        self.max_packet = MAX_PACKET_SIZE
        self.peer = "?"
        self.closed = False
        self.paused = False  # the socket's send buffer is over WRITE_HIGH: no more QoS 1 until it drains

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_HIGH // 4)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.broker.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.buf += data
        self.last_seen = time.monotonic()
        try:
            while not self.closed:
                head = split_fixed_header(self.buf)
                if head is None:
                    return
                header_len, length = head
                if self.session is None and self.buf[0] != CONNECT << 4:
                    raise ProtocolViolation(PROTOCOL_ERROR, "the first packet is not CONNECT")
                if header_len + length > MAX_PACKET_SIZE:
                    raise ProtocolViolation(PACKET_TOO_LARGE, f"a {header_len + length}-byte packet exceeds the "
                                                              f"maximum packet size of {MAX_PACKET_SIZE}")
                if len(self.buf) < header_len + length:
                    return
                first = self.buf[0]
                body = bytes(self.buf[header_len:header_len + length])
                del self.buf[:header_len + length]
                self.handle(first >> 4, first & 0x0F, body)
        except ProtocolViolation as exc:
            log.warning("%s (%s): %s; disconnecting it (reason 0x%02x)", self.name, self.peer, exc, exc.code)
            self.disconnect(exc.code, str(exc))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.connections.discard(self)
        if not self.closed:
            self.close(publish_will=True)

    @property
    def name(self) -> str:
        return self.session.client_id if self.session is not None else "a client"

    # --- packets in ---
    def handle(self, kind: int, flags: int, body: bytes) -> None:
        expected = 0b0010 if kind in (SUBSCRIBE, UNSUBSCRIBE, PUBREL) else 0
        if kind != PUBLISH and flags != expected:
            raise ProtocolViolation(MALFORMED, f"packet type {kind} with flags {flags:#06b}")
        if self.session is None and kind != CONNECT:
            raise ProtocolViolation(PROTOCOL_ERROR, f"packet type {kind} before CONNECT")
        r = Reader(body)
        if kind == PUBLISH:
            self.on_publish(flags, r)
        elif kind == PUBACK:
            self.on_puback(r)
        elif kind == CONNECT:
            self.on_connect(r)
        elif kind == SUBSCRIBE:
            self.on_subscribe(r)
        elif kind == UNSUBSCRIBE:
            self.on_unsubscribe(r)
        elif kind == PINGREQ:
            self.send(packet(PINGRESP, b""))
        elif kind == DISCONNECT:
            self.on_disconnect(r)
        elif kind in (PUBREC, PUBREL, PUBCOMP):
            raise ProtocolViolation(PROTOCOL_ERROR, "QoS 2 flow, but the maximum QoS is 1")
        else:
            raise ProtocolViolation(PROTOCOL_ERROR, f"packet type {kind} is not supported")

    def on_connect(self, r: Reader) -> None:
        if self.session is not None:
            raise ProtocolViolation(PROTOCOL_ERROR, "a second CONNECT")
        name, level = r.string(), r.u8()
        if name not in ("MQTT", "MQIsdp") or level != 5:
            # MQTT 3.x CONNACK: return code 1, unacceptable protocol version.
            log.warning("%s: MQTT protocol %s level %d refused: this broker speaks MQTT 5 only", self.peer, name, level)
            self.send(bytes([CONNACK << 4, 2, 0, 1]))
            self.close(publish_will=False)
            return
        flags = r.u8()
        if flags & 0x01:
            raise ProtocolViolation(MALFORMED, "CONNECT reserved flag set")
        clean_start, will_flag = bool(flags & 0x02), bool(flags & 0x04)
        will_qos, will_retain = (flags >> 3) & 0x03, bool(flags & 0x20)
        if not will_flag and (will_qos or will_retain):
            raise ProtocolViolation(MALFORMED, "will QoS or retain without a will")
        self.keepalive = r.u16()
        props = dict(r.properties()[0])
        client_id = r.string()
        will: Will | None = None
        if will_flag:
            will_items, _ = r.properties()
            will_topic = r.string()
            will_payload = r.binary()
            if will_qos > 1:
                return self.refuse(QOS_NOT_SUPPORTED, "will QoS 2: the maximum QoS is 1")
            if not will_topic or "+" in will_topic or "#" in will_topic:
                return self.refuse(TOPIC_NAME_INVALID, f"will topic {will_topic!r} is not a topic name")
            will_props = b"".join(encode_property(p, v) for p, v in will_items if p != P_WILL_DELAY)
            will = Will(will_topic, Msg(will_topic.encode(), will_payload, will_qos, will_retain, will_props))
        if flags & 0x80:
            r.string()  # user name: anonymous clients are fine (loopback only)
        if flags & 0x40:
            r.binary()
        if P_AUTH_METHOD in props:
            return self.refuse(BAD_AUTH_METHOD, "enhanced authentication is not supported")
        receive_max = int(props.get(P_RECEIVE_MAX, 65535))
        if receive_max == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "Receive Maximum 0")
        self.window = min(receive_max, MAX_INFLIGHT)
        self.max_packet = int(props.get(P_MAX_PACKET, MAX_PACKET_SIZE))
        self.will = will
        connack_props: list[tuple[int, object]] = [
            (P_RECEIVE_MAX, RECEIVE_MAXIMUM), (P_MAX_QOS, 1), (P_MAX_PACKET, MAX_PACKET_SIZE),
        ]
        if not client_id:
            client_id = self.broker.new_client_id()
            connack_props.append((P_ASSIGNED_ID, client_id))
        session, present = self.attach(client_id, clean_start)
        session.expiry = int(props.get(P_SESSION_EXPIRY, 0))
        self.send(packet(CONNACK, bytes([int(present), SUCCESS]) + encode_properties(connack_props)))
        log.info("%s connected from %s (session %s, %d queued)", client_id, self.peer,
                 "resumed" if present else "new", len(session.queue) + len(session.inflight))
        for pid, msg in sorted(session.inflight.items()):  # resent first, in order, as DUP
            self.send_publish(msg, pid, dup=True)
        self.pump()
        return None

    def attach(self, client_id: str, clean_start: bool) -> tuple[Session, bool]:
        broker = self.broker
        session = broker.sessions.get(client_id)
        if session is not None and session.conn is not None:
            old = session.conn
            log.info("%s: session taken over by a new connection from %s", client_id, self.peer)
            old.disconnect(SESSION_TAKEN_OVER, "another connection took the session over")
            session = broker.sessions.get(client_id)  # ended just now if it had no expiry
        if session is not None and clean_start:
            broker.end_session(session)
            session = None
        present = session is not None
        if session is None:
            session = broker.sessions[client_id] = Session(client_id)
        if session.expire_timer is not None:
            session.expire_timer.cancel()
            session.expire_timer = None
        session.conn = self
        self.session = session
        return session, present

    def refuse(self, code: int, why: str) -> None:
        log.warning("%s: CONNECT refused (0x%02x): %s", self.peer, code, why)
        self.send(packet(CONNACK, bytes([0, code]) + encode_properties([(P_REASON_STRING, why)])))
        self.close(publish_will=False)

    def on_publish(self, flags: int, r: Reader) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos == 3:
            raise ProtocolViolation(MALFORMED, "PUBLISH with QoS 3")
        if qos == 2:
            raise ProtocolViolation(QOS_NOT_SUPPORTED, "PUBLISH with QoS 2: the maximum QoS is 1")
        topic_raw = r.binary()
        try:
            topic = topic_raw.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation(MALFORMED, "topic is not UTF-8") from None
        pid = r.u16() if qos else 0
        if qos and pid == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "QoS 1 PUBLISH with packet id 0")
        items, raw_props = r.properties()
        for p, _ in items:
            if p == P_TOPIC_ALIAS:
                raise ProtocolViolation(TOPIC_ALIAS_INVALID, "topic alias, but the Topic Alias Maximum is 0")
            if p == P_SUB_ID:
                raise ProtocolViolation(PROTOCOL_ERROR, "subscription identifier in a client's PUBLISH")
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise ProtocolViolation(TOPIC_NAME_INVALID, f"topic {topic!r} is not a topic name")
        payload = r.rest()
        if qos:
            self.send(packet(PUBACK, struct.pack("!HB", pid, SUCCESS)))
        assert self.session is not None
        self.broker.publish(self.session.client_id, topic, Msg(topic_raw, payload, qos, retain, raw_props))

    def on_puback(self, r: Reader) -> None:
        assert self.session is not None
        self.session.inflight.pop(r.u16(), None)  # an unknown id (resent after a resume) is harmless
        self.pump()

    def on_subscribe(self, r: Reader) -> None:
        assert self.session is not None
        pid = r.u16()
        props = r.properties()[0]
        sub_id = next((int(v) for p, v in props if p == P_SUB_ID), None)
        if sub_id == 0:
            raise ProtocolViolation(PROTOCOL_ERROR, "subscription identifier 0")
        requests: list[tuple[str, int]] = []
        while r.pos < len(r.data):
            requests.append((r.string(), r.u8()))
        if not requests:
            raise ProtocolViolation(PROTOCOL_ERROR, "SUBSCRIBE without a topic filter")
        codes = bytearray()
        retained: list[tuple[str, Sub]] = []
        for topic_filter, options in requests:
            qos, handling = options & 0x03, (options >> 4) & 0x03
            if qos == 3 or handling == 3 or options & 0xC0:
                raise ProtocolViolation(MALFORMED, f"subscription options {options:#010b}")
            share, inner = split_share(topic_filter)
            if not valid_filter(inner):
                codes.append(TOPIC_FILTER_INVALID)
                continue
            if share is not None and options & 0x04:
                raise ProtocolViolation(PROTOCOL_ERROR, "No Local on a shared subscription")
            sub = Sub(self.session.client_id, min(qos, 1), bool(options & 0x04), bool(options & 0x08), sub_id, share)
            new = self.broker.subscribe(self.session, topic_filter, sub)
            codes.append(sub.qos)
            if share is None and (handling == 0 or (handling == 1 and new)):
                retained.append((topic_filter, sub))
        self.send(packet(SUBACK, struct.pack("!H", pid) + b"\x00" + bytes(codes)))
        for topic_filter, sub in retained:  # after the SUBACK
            self.broker.send_retained(self, topic_filter, sub)

    def on_unsubscribe(self, r: Reader) -> None:
        assert self.session is not None
        pid = r.u16()
        r.properties()
        codes = bytearray()
        while r.pos < len(r.data):
            codes.append(SUCCESS if self.broker.unsubscribe(self.session, r.string()) else NO_SUBSCRIPTION_EXISTED)
        if not codes:
            raise ProtocolViolation(PROTOCOL_ERROR, "UNSUBSCRIBE without a topic filter")
        self.send(packet(UNSUBACK, struct.pack("!H", pid) + b"\x00" + bytes(codes)))

    def on_disconnect(self, r: Reader) -> None:
        assert self.session is not None
        code = r.u8() if r.pos < len(r.data) else SUCCESS
        if r.pos < len(r.data):
            props = dict(r.properties()[0])
            if P_SESSION_EXPIRY in props:
                if self.session.expiry == 0 and props[P_SESSION_EXPIRY] != 0:
                    raise ProtocolViolation(PROTOCOL_ERROR, "DISCONNECT sets a session expiry on a session without one")
                self.session.expiry = int(props[P_SESSION_EXPIRY])
        self.close(publish_will=code == DISCONNECT_WITH_WILL)

    # --- packets out ---
    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_publish(self, msg: Msg, pid: int, *, dup: bool, droppable: bool = False) -> bool:
        """False if the client's Maximum Packet Size (or, for QoS 0, a full socket) keeps it out."""
        var = struct.pack("!H", len(msg.topic)) + msg.topic + (struct.pack("!H", pid) if msg.qos else b"") \
            + varint(len(msg.props)) + msg.props
        remaining = len(var) + len(msg.payload)
        head = bytes([PUBLISH << 4 | dup << 3 | msg.qos << 1 | msg.retain]) + varint(remaining)
        if len(head) + remaining > self.max_packet:
            log.warning("%s: a %d-byte message on %s exceeds its maximum packet size (%d); not sent", self.name,
                        len(head) + remaining, msg.topic.decode(errors="replace"), self.max_packet)
            return False
        if self.transport is None or self.transport.is_closing():
            return False
        if droppable and self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            return False
        self.transport.writelines((head, var, msg.payload))
        return True

    def pump(self) -> None:
        """Send queued QoS 1 messages while the client's window has room."""
        session = self.session
        if session is None or session.conn is not self or self.closed or self.paused:
            return
        if self.transport is None or self.transport.is_closing():
            return  # the messages stay queued for the next connection
        while session.queue and len(session.inflight) < self.window and not self.paused:
            msg = session.queue.popleft()
            pid = session.next_pid
            while pid in session.inflight:
                pid = pid % 65535 + 1
            session.next_pid = pid % 65535 + 1
            if self.send_publish(msg, pid, dup=False):
                session.inflight[pid] = msg

    def disconnect(self, code: int, why: str) -> None:
        """Send DISCONNECT with ``code`` and close; the will is published (an abnormal end)."""
        if self.session is not None:  # before CONNECT no DISCONNECT may be sent
            self.send(packet(DISCONNECT, bytes([code]) + encode_properties([(P_REASON_STRING, why[:200])])))
        self.close(publish_will=True)

    def close(self, *, publish_will: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        session, self.session = self.session, None
        will, self.will = self.will, None
        if session is None or session.conn is not self:
            return
        session.conn = None
        log.info("%s disconnected%s", session.client_id, " (will published)" if publish_will and will else "")
        if publish_will and will is not None:
            self.broker.publish(session.client_id, will.topic, will.msg)
        self.broker.expire_later(session)


# --- the process -----------------------------------------------------------------------------

async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (SIGTERM/SIGINT in ``main``)."""
    broker = Broker()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(broker), host, port, reuse_address=True, backlog=1024)
    log.info("MQTT 5 broker listening on %s:%d", host, port)

    async def keepalive_sweep() -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(broker.connections):
                if conn.session is None and now - conn.opened > CONNECT_TIMEOUT_S:
                    conn.close(publish_will=False)  # connected, never said CONNECT
                elif conn.keepalive and now - conn.last_seen > 1.5 * conn.keepalive:
                    log.info("%s: no packet for %.0f s (keep-alive %d s)", conn.name, now - conn.last_seen,
                             conn.keepalive)
                    conn.disconnect(KEEP_ALIVE_TIMEOUT, "keep-alive timeout")

    sweeper = asyncio.create_task(keepalive_sweep())
    if ready is not None:
        ready.set()
    try:
        async with server:
            await server.serve_forever()
    finally:
        sweeper.cancel()
        for conn in list(broker.connections):
            conn.send(packet(DISCONNECT, bytes([SERVER_SHUTTING_DOWN]) + encode_properties([])))
            conn.close(publish_will=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet.embedded_broker", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1883, help="TCP port (default 1883)")
    parser.add_argument("--log", type=Path, help="log file (default: stderr)")
    parser.add_argument("--debug", action="store_true", help="log every connection at debug level too")
    args = parser.parse_args(argv)
    handler: logging.Handler = logging.FileHandler(args.log) if args.log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, handlers=[handler])

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(args.host, args.port)

    try:
        asyncio.run(run())
    except OSError as exc:  # the port is taken, or the address is not ours
        print(f"embedded broker: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
