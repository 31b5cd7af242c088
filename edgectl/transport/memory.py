"""An in-process broker and transport, for unit tests of the agent and the controller.

``MemoryBroker`` keeps what a real MQTT 5 broker keeps: sessions (subscriptions and the QoS 1
messages queued while a persistent client is away), retained messages, last wills and shared
subscriptions (``$share/<group>/<filter>``: each message goes to one member, round-robin).
``MemoryTransport`` implements the ``Transport`` protocol against it. Deliveries are
asynchronous, on one dispatcher thread per transport, one message at a time, exactly like
``MqttTransport``; ``broker.drain()`` waits until every queued delivery (and every delivery
those handlers caused) has run, so tests stay deterministic::

    broker = MemoryBroker()
    agent = MemoryTransport(broker, "dev-1", will=Will("edgectl/v1/devices/dev-1/state", b"off"))
    agent.subscribe("edgectl/v1/devices/dev-1/desired", on_desired)
    agent.start()
    broker.disconnect("dev-1")       # network cut: publish raises TransportOffline, and the will
                                     # goes out as after a keepalive timeout (will=False: it doesn't)
    broker.reconnect("dev-1")        # queued QoS 1 messages are delivered now
    agent.kill()                     # abrupt drop: the broker publishes the will
    assert broker.drain(2.0)

Fault injection: ``broker.intercept = fn`` sees every published message (wills included) before
routing, on the publisher's thread with the broker locked; it returns the message to deliver
(possibly modified, e.g. ``dataclasses.replace(m, payload=...)``) or ``None`` to drop it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgectl.transport.base import (
    ConnectionListener,
    Handler,
    Message,
    TransportError,
    TransportOffline,
    Will,
    topic_matches,
)

log = logging.getLogger(__name__)

Intercept = Callable[[Message], "Message | None"]


@dataclass
class _Session:
    """What the broker keeps per client id, across connections when the session is persistent."""

    client_id: str
    persistent: bool
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    queued: list[tuple[str, Message]] = field(default_factory=list)  # (filter, message) while away
    transport: MemoryTransport | None = None
    online: bool = False
    cut: bool = False  # broker.disconnect(): the transport is attached but the network is down


class MemoryBroker:
    """An MQTT 5 broker in memory; see the module docstring."""

    def __init__(self) -> None:
        self.intercept: Intercept | None = None
        self._lock = threading.RLock()
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, Message] = {}
        self._share_turn: dict[str, int] = {}  # full $share filter -> next member index
        self._pending = 0  # deliveries queued on dispatchers and not finished yet
        self._idle = threading.Condition()
        self.published = 0  # messages routed (after intercept), for tests that count traffic

    # --- test controls --------------------------------------------------------------------

    def disconnect(self, client_id: str, *, will: bool = True) -> None:
        """Cut ``client_id``'s network. Like a real broker noticing the dead link (keepalive),
        the will is published unless ``will=False``; the session is kept for ``reconnect``."""
        with self._lock:
            session = self._sessions.get(client_id)
            if session is None or not session.online:
                raise KeyError(f"client {client_id!r} is not connected")
            session.cut = True
            self._go_offline(session, publish_will=will)
            if session.transport is not None:
                session.transport._on_connection(False)

    def reconnect(self, client_id: str) -> None:
        """Restore a client cut by ``disconnect``: it resubscribes and gets what was queued."""
        with self._lock:
            session = self._sessions.get(client_id)
            if session is None or not session.cut or session.transport is None:
                raise KeyError(f"client {client_id!r} was not cut with broker.disconnect()")
            session.cut = False
            transport = session.transport
        transport._connect(first=False)

    def connected_clients(self) -> list[str]:
        with self._lock:
            return sorted(s.client_id for s in self._sessions.values() if s.online)

    def retained(self, topic: str) -> Message | None:
        with self._lock:
            return self._retained.get(topic)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every queued delivery has been handled; returns False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # --- used by MemoryTransport ----------------------------------------------------------

    def _attach(self, transport: MemoryTransport, *, persistent: bool, first: bool) -> None:
        """Connect ``transport``: resume or create its session, take over an older connection,
        subscribe its filters, then deliver what was queued while it was away."""
        old: MemoryTransport | None = None
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is not None and session.online and session.transport is not transport:
                # Session takeover (same client id twice): the old connection drops without a
                # DISCONNECT, so its will goes out, as MQTT 5 brokers do.
                old = session.transport
                self._go_offline(session, publish_will=True)
            if session is None or not (persistent and session.persistent):
                session = _Session(transport.client_id, persistent)
                self._sessions[transport.client_id] = session
            session.transport, session.online, session.cut = transport, True, False
            # Connected before anything is delivered, so listeners hear True first (as with MQTT:
            # CONNACK, then the queued messages).
            transport._on_connection(True)
            for topic_filter, qos in transport._filters().items():
                new = topic_filter not in session.subscriptions
                session.subscriptions[topic_filter] = qos
                # Retained messages go to a new subscriber: a new transport object, or a
                # subscription the broker session did not have (mirrors MqttTransport).
                if first or new:
                    self._send_retained(session, topic_filter)
            queued, session.queued = session.queued, []
            for topic_filter, msg in queued:
                self._enqueue(transport, topic_filter, msg)
        if old is not None:
            old._taken_over()

    def _detach(self, transport: MemoryTransport, *, publish_will: bool) -> None:
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is None or session.transport is not transport:
                return
            if session.online:
                self._go_offline(session, publish_will=publish_will)
            session.transport, session.cut = None, False
            if not session.persistent:
                del self._sessions[transport.client_id]

    def _go_offline(self, session: _Session, *, publish_will: bool) -> None:
        session.online = False
        transport = session.transport
        if publish_will and transport is not None and transport.will is not None:
            w = transport.will
            self._route(Message(w.topic, w.payload, retain=w.retain), w.qos)

    def _subscribe(self, transport: MemoryTransport, topic_filter: str, qos: int) -> None:
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is None or session.transport is not transport or not session.online:
                return  # applied on the next connect
            session.subscriptions[topic_filter] = qos
            self._send_retained(session, topic_filter)

    def _unsubscribe(self, transport: MemoryTransport, topic_filter: str) -> None:
        with self._lock:
            session = self._sessions.get(transport.client_id)
            if session is not None and session.transport is transport:
                session.subscriptions.pop(topic_filter, None)

    def _publish(self, sender: MemoryTransport, msg: Message, qos: int) -> None:
        with self._lock:
            session = self._sessions.get(sender.client_id)
            if session is None or session.transport is not sender or not session.online:
                raise TransportOffline(f"{sender.client_id}: not connected to the broker")
            self._route(msg, qos)

    def _route(self, msg: Message, qos: int) -> None:
        if self.intercept is not None:
            try:
                out = self.intercept(msg)
            except Exception:
                log.exception("broker.intercept raised; message on %s dropped", msg.topic)
                return
            if out is None:
                return
            msg = out
        self.published += 1
        if msg.retain:
            # An empty retained payload clears the topic (and still reaches live subscribers).
            if msg.payload:
                self._retained[msg.topic] = msg
            else:
                self._retained.pop(msg.topic, None)
        live = dataclasses.replace(msg, retain=False)  # retain-as-published is off, as in Mosquitto
        shared: dict[str, list[tuple[_Session, int]]] = {}
        for session in self._sessions.values():
            for topic_filter, sub_qos in session.subscriptions.items():
                if not topic_matches(topic_filter, msg.topic):
                    continue
                if topic_filter.startswith("$share/"):
                    shared.setdefault(topic_filter, []).append((session, sub_qos))
                else:
                    self._deliver(session, topic_filter, live, min(qos, sub_qos))
        for topic_filter, members in shared.items():
            self._deliver_shared(topic_filter, members, live, qos)

    def _deliver_shared(self, topic_filter: str, members: list[tuple[_Session, int]], msg: Message, qos: int) -> None:
        # Round-robin over connected members; with none connected, a persistent QoS 1 member
        # queues it (one copy for the whole group, never one per member).
        online = [m for m in members if m[0].online]
        pool = online or [m for m in members if m[0].persistent and min(qos, m[1]) == 1]
        if not pool:
            return
        turn = self._share_turn.get(topic_filter, 0)
        self._share_turn[topic_filter] = turn + 1
        session, sub_qos = pool[turn % len(pool)]
        self._deliver(session, topic_filter, msg, min(qos, sub_qos))

    def _deliver(self, session: _Session, topic_filter: str, msg: Message, qos: int) -> None:
        if session.online and session.transport is not None:
            self._enqueue(session.transport, topic_filter, msg)
        elif qos == 1 and session.persistent:
            session.queued.append((topic_filter, msg))
        # QoS 0 to an absent client is dropped, as MQTT says.

    def _send_retained(self, session: _Session, topic_filter: str) -> None:
        if topic_filter.startswith("$share/") or session.transport is None:
            return  # MQTT 5: shared subscriptions get no retained messages
        for topic, msg in sorted(self._retained.items()):
            if topic_matches(topic_filter, topic):
                self._enqueue(session.transport, topic_filter, msg)

    def _enqueue(self, transport: MemoryTransport, topic_filter: str, msg: Message) -> None:
        self._begin()
        transport._queue.put((topic_filter, msg))

    def _begin(self) -> None:
        with self._idle:
            self._pending += 1

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            if not self._pending:
                self._idle.notify_all()


class MemoryTransport:
    """The ``Transport`` protocol on a ``MemoryBroker``; see the module docstring.

    ``persistent=True`` (the default, like ``MqttTransport``) keeps the session — subscriptions
    and queued QoS 1 messages — while the client is stopped, killed or cut. ``timeout`` on
    ``publish`` is accepted and ignored: there is no in-flight window in memory.
    """

    def __init__(self, broker: MemoryBroker, client_id: str, *, will: Will | None = None,
                 persistent: bool = True) -> None:
        if not client_id:
            raise TransportError("a transport needs a non-empty client id")
        self.broker = broker
        self.client_id = client_id
        self.will = will
        self.persistent = persistent
        # (filter, message) deliveries, (None, bool) connection events, or None to stop.
        self._queue: queue.SimpleQueue[tuple[str | None, Message | bool] | None] = queue.SimpleQueue()
        self._subs: dict[str, tuple[Handler, int]] = {}
        self._listeners: list[ConnectionListener] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._thread = threading.Thread(target=self._dispatch, name=f"memory-transport-{self.client_id}",
                                        daemon=True)
        self._thread.start()
        self._connect(first=True)

    def stop(self) -> None:
        """Clean disconnect: no will; a persistent session keeps queueing QoS 1 messages."""
        self._shutdown(publish_will=False)

    def kill(self) -> None:
        """Abrupt drop (process killed, cable pulled for good): the broker publishes the will."""
        self._shutdown(publish_will=True)

    def _shutdown(self, *, publish_will: bool) -> None:
        if not self._started:
            return
        self._started = False
        was_connected = self._connected.is_set()
        self._connected.clear()
        self.broker._detach(self, publish_will=publish_will)
        if was_connected:
            self._post(None, False)
        self._queue.put(None)
        # A handler may call stop(): never join our own thread.
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def flush(self, timeout: float) -> bool:
        """Parity with ``MqttTransport.flush``: a publish here is routed before it returns."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # --- messages -------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
        content_type: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos}")
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish to topic {topic!r}")
        if not self._connected.is_set():
            raise TransportOffline(f"{self.client_id}: not connected to the broker")
        msg = Message(topic, bytes(payload), retain=retain, response_topic=response_topic,
                      correlation_data=correlation_data, user_properties=tuple(user_properties),
                      content_type=content_type)
        self.broker._publish(self, msg, qos)

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos}")
        with self._lock:
            self._subs[topic_filter] = (handler, qos)
        if self._connected.is_set():
            self.broker._subscribe(self, topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.pop(topic_filter, None)
        self.broker._unsubscribe(self, topic_filter)

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # --- called by the broker -------------------------------------------------------------

    def _filters(self) -> dict[str, int]:
        with self._lock:
            return {f: qos for f, (_, qos) in self._subs.items()}

    def _connect(self, *, first: bool) -> None:
        self.broker._attach(self, persistent=self.persistent, first=first)

    def _on_connection(self, up: bool) -> None:
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        self._post(None, up)

    def _taken_over(self) -> None:
        log.warning("%s: another connection with the same client id took over the session", self.client_id)
        self._connected.clear()
        self._post(None, False)

    def _post(self, topic_filter: str | None, item: Message | bool) -> None:
        self.broker._begin()
        self._queue.put((topic_filter, item))

    # --- the dispatcher thread ------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                break
            try:
                self._handle(*entry)
            finally:
                self.broker._done()
        # Deliveries that raced with stop() are dropped; keep drain()'s count right.
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                self.broker._done()

    def _handle(self, topic_filter: str | None, item: Message | bool) -> None:
        if isinstance(item, bool):
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(item)
                except Exception:
                    log.exception("%s: connection listener raised; ignored", self.client_id)
            return
        with self._lock:
            sub = self._subs.get(topic_filter) if topic_filter is not None else None
            # A queued message for a filter this transport no longer handles: route by topic.
            subs = [s for f, s in self._subs.items() if topic_matches(f, item.topic)] if sub is None else [sub]
        if not subs:
            log.debug("%s: no handler for %s; dropped", self.client_id, item.topic)
        for handler, _ in subs:
            try:
                handler(item)
            except Exception:
                log.exception("%s: handler for %s raised; message dropped", self.client_id, item.topic)

