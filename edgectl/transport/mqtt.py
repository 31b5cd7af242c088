"""``MqttTransport``: the ``Transport`` protocol on paho-mqtt 2.x, speaking MQTT 5.

What it adds to paho, and why:

* **Persistent session.** Every CONNECT has clean start off and a Session Expiry Interval, so
  QoS 1 messages wait at the broker while a device is away; subscriptions are still re-sent on
  every (re)connect, in case the broker lost the session.
* **Reconnect forever, with exponential backoff and jitter** (paho's own delay has no jitter, so
  a fleet that lost its broker would reconnect in lock-step). ``start()`` returns at once; a
  broker that is down, unreachable or refusing credentials is retried until ``stop()``, and the
  reason is in ``last_error``.
* **Handlers on one dispatcher thread**, fed by a queue from paho's network thread. A handler
  may therefore publish QoS 1 and block on the in-flight window while the network thread keeps
  reading the acks. Handler and listener exceptions are logged and dropped.
* **A bounded QoS 1 window** (``max_inflight``, capped by the broker's Receive Maximum).
  paho's own queue beyond its window costs O(n) per ack, which made a naive loop crawl at tens of
  messages per second; we hand paho at most a window's worth and wait for acks instead.
* **Exceptions, not return codes.** Callers see ``TransportError`` / ``TransportOffline``; paho's
  codes, callbacks and threads stay in this module.
* **Size limits.** The broker is told our Maximum Packet Size (``max_payload`` plus headroom for
  the topic and properties) so it never sends us more; a message that still exceeds
  ``max_payload`` is logged and dropped. A publish larger than the broker's Maximum Packet Size
  raises instead of getting us disconnected.

::

    settings = MqttSettings(url="mqtt://127.0.0.1:1883", client_id="dev-1",
                            will=Will("edgectl/v1/devices/dev-1/state", b'{"online":false}'))
    t = MqttTransport(settings)
    t.subscribe("edgectl/v1/devices/dev-1/desired", on_desired)
    t.start()
    if t.wait_connected(5.0):
        t.publish("edgectl/v1/devices/dev-1/report", b"{...}", qos=1)
    t.stop()

Threads: ``mqtt-net-<id>`` runs paho's loop and the reconnects; ``mqtt-dispatch-<id>`` runs
handlers and connection listeners, in arrival order.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

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

DEFAULT_MAX_PAYLOAD = 4 << 20
_PACKET_HEADROOM = 64 << 10  # topic, properties and fixed header on top of the payload
_STABLE_S = 10.0  # a connection that lasted this long resets the backoff
_CONNACK_TIMEOUT_S = 10.0  # a broker that accepts TCP but never answers CONNECT
_POLL_S = 0.1  # how often a blocked publisher re-checks that the connection is still up
_SUBACK_TIMEOUT_S = 10.0
_STOP_FLUSH_S = 5.0  # stop() waits this long for in-flight QoS 1 acks
_LOOP_S = 0.5


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker. ``url`` is ``mqtt://host[:1883]`` or ``mqtts://host[:8883]``;
    the ``tls_*`` paths are a CA bundle (default: the system's) and a client certificate/key."""

    url: str
    client_id: str
    username: str | None = None
    password: str | None = None
    tls_ca: str | Path | None = None
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    keepalive: int = 30
    session_expiry_s: int = 86400
    will: Will | None = None
    max_inflight: int = 64
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_payload: int = DEFAULT_MAX_PAYLOAD
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        self.endpoint()  # raises on a bad url
        if not self.client_id:
            raise TransportError("MQTT settings: client_id must not be empty")
        if self.max_inflight < 1:
            raise TransportError(f"MQTT settings: max_inflight must be >= 1, not {self.max_inflight}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise TransportError("MQTT settings: need 0 < reconnect_min_s <= reconnect_max_s")
        if self.max_payload < 1:
            raise TransportError(f"MQTT settings: max_payload must be >= 1, not {self.max_payload}")

    def endpoint(self) -> tuple[str, int, bool]:
        """``(host, port, tls)`` from ``url``."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise TransportError(f"broker url {self.url!r} is not mqtt://host:port or mqtts://host:port")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise TransportError(f"broker url {self.url!r} has a bad port") from exc
        return parts.hostname, port, tls


@dataclass
class _Sub:
    handler: Handler
    qos: int
    sub_id: int  # MQTT 5 subscription identifier: tells us which filter a message matched


@dataclass
class _SubWait:
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


_STOP = object()  # tells the dispatcher to exit


class MqttTransport:
    """The ``Transport`` protocol over MQTT 5 (paho-mqtt 2.x); see the module docstring.

    Beyond the protocol: ``flush(timeout)`` waits for every QoS 1 publish to be acknowledged,
    ``kill()`` drops the connection without DISCONNECT (the broker publishes the will, as on a
    crash), and ``last_error`` holds why the last connection attempt failed or was lost.
    """

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self.client_id = settings.client_id
        self.last_error: str | None = None
        self._host, self._port, self._tls = settings.endpoint()
        # Broker limits from CONNACK: our window never exceeds its Receive Maximum, and we
        # refuse to send what exceeds its Maximum Packet Size (it would disconnect us).
        self._window_size = settings.max_inflight
        self._broker_max_packet: int | None = None

        self._subs: dict[str, _Sub] = {}
        self._by_id: dict[int, str] = {}
        self._next_sub_id = 1
        self._announced: set[str] = set()  # filters SUBACKed at least once by this object
        self._sub_waits: dict[int, _SubWait] = {}  # (UN)SUBSCRIBE mid -> caller waiting for the ack
        self._sub_mids: dict[int, str] = {}  # SUBSCRIBE mid -> filter, until its SUBACK
        self._resubscribing: set[int] = set()  # SUBSCRIBE mids to wait for after a (re)connect
        self._unsubscribe_later: set[str] = set()  # dropped while offline: the session still has them
        self._session_up = False  # CONNACK received on the current connection
        self._sub_lock = threading.Lock()

        self._listeners: list[ConnectionListener] = []
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._connected = threading.Event()
        self._reported_up = False  # whether listeners last heard True (network thread only)
        self._up_since: float | None = None
        self._refused = False  # the current attempt got a failing CONNACK (keep that reason)
        self._stopping = threading.Event()
        self._started = False
        # Held by publishers around paho's publish and by the network thread around connect(),
        # so a PUBLISH can never be queued on a fresh socket ahead of its CONNECT.
        self._io_lock = threading.Lock()
        self._window_lock = threading.Lock()
        self._window: deque[paho.MQTTMessageInfo] = deque()
        self._client = self._make_client()
        self._net_thread = threading.Thread(target=self._network_main, name=f"mqtt-net-{self.client_id}",
                                            daemon=True)
        self._dispatch_thread = threading.Thread(target=self._dispatch_main, name=f"mqtt-dispatch-{self.client_id}",
                                                 daemon=True)

    # --- setup ----------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        s = self.settings
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=s.client_id,
                             protocol=paho.MQTTv5, reconnect_on_failure=False)
        # No paho-side window or queue: ours bounds what we hand over (with a limit of 0 paho
        # also skips rescanning its outgoing messages on every ack).
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.connect_timeout = s.connect_timeout_s
        client.suppress_exceptions = True  # a bug in a callback must not kill the network thread
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self._tls:
            client.tls_set_context(self._tls_context())
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, qos=s.will.qos, retain=s.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        # With a write callback registered, paho never writes from the publisher's thread (it
        # would race our network thread on the socket); the loop is woken and writes instead.
        client.on_socket_register_write = lambda *_: None
        return client

    def _tls_context(self) -> ssl.SSLContext:
        s = self.settings
        try:
            ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
            if s.tls_cert:
                ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key) if s.tls_key else None)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot load the TLS files for {s.url}: {exc}") from exc
        return ctx

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.MaximumPacketSize = min(self.settings.max_payload + _PACKET_HEADROOM, 268435455)
        return props

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        if self._stopping.is_set():
            raise TransportError(f"{self.client_id}: a stopped transport cannot be restarted; make a new one")
        self._started = True
        self._dispatch_thread.start()
        self._net_thread.start()

    def stop(self) -> None:
        """Wait briefly for in-flight QoS 1 acks, disconnect cleanly (no will) and end both
        threads. The broker keeps the session (``session_expiry_s``)."""
        if not self._started or self._stopping.is_set():
            return
        if self._connected.is_set():
            self.flush(_STOP_FLUSH_S)
        self._stopping.set()
        with self._io_lock:
            self._client.disconnect()
        self._join()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT, as a crash or a pulled cable would: the
        broker publishes the will. For tests; the transport is finished afterwards."""
        if not self._started or self._stopping.is_set():
            return
        self._stopping.set()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._join()

    def _join(self) -> None:
        me = threading.current_thread()
        if self._net_thread is not me:
            self._net_thread.join(timeout=self.settings.connect_timeout_s + 5.0)
        self._inbox.put(_STOP)
        if self._dispatch_thread is not me:  # stop() from inside a handler
            self._dispatch_thread.join(timeout=5.0)
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # --- publishing -----------------------------------------------------------------------

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
        if not self._connected.is_set():
            raise TransportOffline(f"{self.client_id}: not connected to {self.settings.url}")
        props = _publish_properties(response_topic, correlation_data, user_properties, content_type)
        limit = self._broker_max_packet
        # Exact size only near the limit: packing the properties twice costs on every publish.
        if limit is not None and len(payload) + 4096 > limit and _packet_size(topic, payload, props) > limit:
            raise TransportError(f"a {len(payload)}-byte message on {topic} exceeds the broker's maximum "
                                 f"packet size of {limit} bytes")
        deadline = time.monotonic() + timeout
        if qos == 0:
            self._hand_to_paho(topic, payload, 0, retain, props, deadline)
            return
        if not self._window_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TransportError(f"{self.client_id}: publish to {topic} timed out after {timeout}s "
                                 "waiting for other publishers")
        try:
            self._wait_for_slot(deadline, timeout)
            info = self._hand_to_paho(topic, payload, 1, retain, props, deadline)
            self._window.append(info)
        finally:
            self._window_lock.release()

    def _hand_to_paho(self, topic: str, payload: bytes, qos: int, retain: bool, props: Properties | None,
                      deadline: float) -> paho.MQTTMessageInfo:
        if not self._io_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TransportOffline(f"{self.client_id}: reconnecting to {self.settings.url}")
        try:
            if not self._connected.is_set():
                raise TransportOffline(f"{self.client_id}: not connected to {self.settings.url}")
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
            except ValueError as exc:  # bad topic or qos: the caller's mistake, in paho's words
                raise TransportError(f"cannot publish to {topic!r}: {exc}") from exc
        finally:
            self._io_lock.release()
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            if qos == 0:
                raise TransportOffline(f"{self.client_id}: connection lost while publishing to {topic}")
            # The link dropped just now; paho keeps the QoS 1 message and resends it after the
            # reconnect, so it counts as sent (and its ack frees the window slot as usual).
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        return info

    def _wait_for_slot(self, deadline: float, timeout: float) -> None:
        while True:
            self._prune_window()
            if len(self._window) < self._window_size:
                return
            if not self._connected.is_set():
                raise TransportOffline(f"{self.client_id}: connection lost while waiting for acks")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"{self.client_id}: {len(self._window)} QoS 1 messages still unacknowledged "
                                     f"after {timeout}s")
            head = self._window[0]
            _wait_acked(head, min(left, _POLL_S))
            if not _acked(head):
                self._prune_window(everywhere=True)

    def _prune_window(self, *, everywhere: bool = False) -> None:
        w = self._window
        while w and _acked(w[0]):
            w.popleft()
        if everywhere:
            # Brokers ack in order, so the head is what to wait for; but if it stays unacked
            # while later ones are acked, they must still free their slots.
            self._window = deque(i for i in w if not _acked(i))

    def flush(self, timeout: float) -> bool:
        """Wait until every QoS 1 message handed over so far is acknowledged; False if the
        connection is down or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        if not self._window_lock.acquire(timeout=timeout):
            return False
        try:
            while True:
                self._prune_window()
                if not self._window:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self._connected.is_set():
                    return False
                _wait_acked(self._window[0], min(left, _POLL_S))
                self._prune_window(everywhere=True)
        finally:
            self._window_lock.release()

    # --- subscriptions --------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        """Route ``topic_filter`` to ``handler``. When connected, returns once the broker has
        acknowledged the subscription (``TransportError`` if it refused it); otherwise it is
        made on the next connect."""
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos}")
        with self._sub_lock:
            self._unsubscribe_later.discard(topic_filter)
            old = self._subs.get(topic_filter)
            if old is None:
                sub = _Sub(handler, qos, self._next_sub_id)
                self._next_sub_id += 1
            else:
                sub = _Sub(handler, qos, old.sub_id)
            self._subs[topic_filter] = sub
            self._by_id[sub.sub_id] = topic_filter
            if (old is not None and old.qos == qos) or not self._session_up:
                return
            mid = self._send_subscribe(topic_filter, sub)
            if mid is None:
                return
            wait = self._sub_waits[mid] = _SubWait()
        if not wait.done.wait(_SUBACK_TIMEOUT_S):
            raise TransportError(f"{self.client_id}: no SUBACK for {topic_filter} within {_SUBACK_TIMEOUT_S}s")
        if wait.error is not None:
            with self._sub_lock:
                if self._subs.get(topic_filter) is sub:
                    del self._subs[topic_filter]
                    self._by_id.pop(sub.sub_id, None)
            raise TransportError(f"the broker refused the subscription to {topic_filter}: {wait.error}")

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop routing ``topic_filter``; when connected, returns once the broker has
        acknowledged it, so nothing published afterwards arrives."""
        with self._sub_lock:
            sub = self._subs.pop(topic_filter, None)
            if sub is None:
                return
            self._by_id.pop(sub.sub_id, None)
            self._announced.discard(topic_filter)
            if not self._session_up:
                self._unsubscribe_later.add(topic_filter)
                return
            rc, mid = self._client.unsubscribe(topic_filter)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                self._unsubscribe_later.add(topic_filter)
                return
            wait = self._sub_waits[mid] = _SubWait()
        if not wait.done.wait(_SUBACK_TIMEOUT_S):
            raise TransportError(f"{self.client_id}: no UNSUBACK for {topic_filter} within {_SUBACK_TIMEOUT_S}s")

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        with self._sub_lock:
            self._listeners.append(listener)

    def _send_subscribe(self, topic_filter: str, sub: _Sub) -> int | None:
        """One SUBSCRIBE per filter, since the subscription identifier is per packet. Called
        with ``_sub_lock`` held. Returns the mid, or None if the link is already gone."""
        # Retained messages go to a new subscriber: on this object's first SUBSCRIBE of a
        # filter (even when the broker kept the session), and after that only if the broker
        # lost the subscription — never again on every reconnect.
        handling = (SubscribeOptions.RETAIN_SEND_IF_NEW_SUB if topic_filter in self._announced
                    else SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE)
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = sub.sub_id
        try:
            rc, mid = self._client.subscribe(
                topic_filter, options=SubscribeOptions(qos=sub.qos, retainHandling=handling), properties=props
            )
        except ValueError as exc:
            raise TransportError(f"cannot subscribe to {topic_filter!r}: {exc}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return None
        self._sub_mids[mid] = topic_filter
        return mid

    # --- paho callbacks (network thread; they must never raise) ---------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Chunk requests are small request/response pairs: Nagle's delay would stall each one.
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                self._refused = True
                self._note_error(f"the broker at {self.settings.url} refused the connection: {reason}")
                return
            receive_max = getattr(props, "ReceiveMaximum", None) or 65535
            self._window_size = max(1, min(self.settings.max_inflight, receive_max))
            self._broker_max_packet = getattr(props, "MaximumPacketSize", None)
            self._up_since = time.monotonic()
            self.last_error = None
            log.info("%s: connected to %s (session %s)", self.client_id, self.settings.url,
                     "resumed" if flags.session_present else "new")
            with self._sub_lock:
                self._session_up = True
                self._resubscribing.clear()
                for topic_filter in self._unsubscribe_later:
                    self._client.unsubscribe(topic_filter)
                self._unsubscribe_later.clear()
                for topic_filter, sub in self._subs.items():
                    mid = self._send_subscribe(topic_filter, sub)
                    if mid is not None:
                        self._resubscribing.add(mid)
                if not self._resubscribing:
                    self._announce(True)
        except Exception:
            log.exception("%s: error in on_connect", self.client_id)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        try:
            failure = next((str(r) for r in reasons if r.is_failure), None)
            with self._sub_lock:
                topic_filter = self._sub_mids.pop(mid, None)
                if failure is None and topic_filter is not None:
                    self._announced.add(topic_filter)
                wait = self._sub_waits.pop(mid, None)
                if wait is not None:
                    wait.error = failure
                    wait.done.set()
                if mid in self._resubscribing:
                    self._resubscribing.discard(mid)
                    if failure is not None:
                        log.error("%s: the broker refused a subscription: %s", self.client_id, failure)
                    if not self._resubscribing and self._session_up:
                        self._announce(True)
        except Exception:
            log.exception("%s: error in on_subscribe", self.client_id)

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        try:
            with self._sub_lock:
                wait = self._sub_waits.pop(mid, None)
            if wait is not None:
                wait.done.set()
        except Exception:
            log.exception("%s: error in on_unsubscribe", self.client_id)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # A PUBACK with a failure code (not authorized, quota exceeded) still frees the slot;
        # the caller has already returned, so the log is the only place this can show.
        if getattr(reason, "is_failure", False):
            log.warning("%s: the broker refused a QoS 1 message (mid %d): %s", self.client_id, mid, reason)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            self._connected.clear()
            with self._sub_lock:
                self._session_up = False
                self._resubscribing.clear()
                self._sub_mids.clear()
                for wait in self._sub_waits.values():
                    wait.done.set()  # made again on the next connect; nothing to report
                self._sub_waits.clear()
            self._announce(False)
            if not self._stopping.is_set() and not self._refused:
                # paho reports a dropped socket as "Unspecified error"; only a DISCONNECT from
                # the broker carries a reason worth showing (session taken over, shutting down).
                why = f"the broker disconnected us ({reason})" if flags.is_disconnect_packet_from_server \
                    else "the connection dropped"
                when = "" if self._up_since is not None else " before the session was up"
                self._note_error(f"{self.settings.url}: {why}{when}")
        except Exception:
            log.exception("%s: error in on_disconnect", self.client_id)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("%s: message with a non-UTF-8 topic dropped", self.client_id)
            return
        try:
            if len(msg.payload) > self.settings.max_payload:
                log.warning("%s: %d-byte message on %s exceeds max_payload (%d); dropped", self.client_id,
                            len(msg.payload), topic, self.settings.max_payload)
                return
            p = msg.properties
            message = Message(
                topic=topic,
                payload=bytes(msg.payload),
                retain=bool(msg.retain),
                response_topic=getattr(p, "ResponseTopic", None),
                correlation_data=getattr(p, "CorrelationData", None),
                user_properties=tuple((str(k), str(v)) for k, v in getattr(p, "UserProperty", ())),
                content_type=getattr(p, "ContentType", None),
            )
            self._inbox.put((message, tuple(getattr(p, "SubscriptionIdentifier", ()))))
        except Exception:
            log.exception("%s: malformed message on %s dropped", self.client_id, topic)

    def _announce(self, up: bool) -> None:
        """Tell listeners (on the dispatcher thread, after any message already queued)."""
        if up:
            self._connected.set()
        if up != self._reported_up:
            self._reported_up = up
            self._inbox.put(up)

    def _note_error(self, what: str) -> None:
        # Log a new reason loudly, the same reason again quietly: a broker down for an hour
        # must not fill the device's disk.
        level = logging.INFO if what == self.last_error else logging.WARNING
        self.last_error = what
        log.log(level, "%s: %s", self.client_id, what)

    # --- the network thread ---------------------------------------------------------------

    def _network_main(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                up_for = self._connect_and_run()
            except Exception as exc:  # a paho bug must not end the reconnects
                log.exception("%s: network loop failed", self.client_id)
                self._note_error(f"network loop failed: {exc}")
                up_for = 0.0
            if self._stopping.is_set():
                break
            failures = 1 if up_for >= _STABLE_S else failures + 1
            delay = self._backoff(failures)
            log.info("%s: reconnecting in %.2fs", self.client_id, delay)
            self._stopping.wait(delay)
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def _backoff(self, failures: int) -> float:
        s = self.settings
        ceiling = min(s.reconnect_max_s, s.reconnect_min_s * 2 ** min(failures - 1, 30))
        # "Equal jitter": at least half the ceiling (no hot loop), at most all of it, spread so
        # that a fleet dropped at the same instant does not come back at the same instant.
        return random.uniform(ceiling / 2, ceiling)

    def _connect_and_run(self) -> float:
        """One connection: connect, run paho's loop until the link drops. Returns how long the
        session was up (0 if it never got a CONNACK)."""
        self._up_since = None
        self._refused = False
        try:
            with self._io_lock:
                self._client.connect(self._host, self._port, self.settings.keepalive, clean_start=False,
                                     properties=self._connect_properties())
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            self._note_error(f"cannot connect to {self.settings.url}: {exc}")
            return 0.0
        opened = time.monotonic()
        stop_seen: float | None = None
        while self._client.socket() is not None:  # paho closes it when the link drops
            rc = self._client.loop(timeout=_LOOP_S)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            now = time.monotonic()
            if self._stopping.is_set():
                # stop() queued a DISCONNECT; the loop writes it and then reports NO_CONN.
                # A link too jammed to take it gets closed anyway.
                stop_seen = stop_seen or now
                if now - stop_seen > 2.0:
                    break
            elif self._up_since is None and now - opened > _CONNACK_TIMEOUT_S:
                self._note_error(f"no CONNACK from {self.settings.url} within {_CONNACK_TIMEOUT_S}s")
                sock = self._client.socket()
                if sock is not None:
                    sock.close()
                break
        up_since = self._up_since
        return 0.0 if up_since is None else time.monotonic() - up_since

    # --- the dispatcher thread ------------------------------------------------------------

    def _dispatch_main(self) -> None:
        while True:
            item = self._inbox.get()
            if item is _STOP:
                return
            if isinstance(item, bool):
                with self._sub_lock:
                    listeners = list(self._listeners)
                for listener in listeners:
                    try:
                        listener(item)
                    except Exception:
                        log.exception("%s: connection listener raised; ignored", self.client_id)
                continue
            message, sub_ids = item
            for handler in self._handlers_for(message, sub_ids):
                try:
                    handler(message)
                except Exception:
                    log.exception("%s: handler for %s raised; message dropped", self.client_id, message.topic)

    def _handlers_for(self, message: Message, sub_ids: tuple[int, ...]) -> list[Handler]:
        with self._sub_lock:
            # The subscription identifiers say which of our filters matched (one copy per
            # overlapping subscription, no duplicates). A session resumed from an earlier
            # process may carry its ids, so each is checked against the topic, and we fall back
            # to matching the topic against every filter.
            filters = [f for i in sub_ids if (f := self._by_id.get(i)) is not None and topic_matches(f, message.topic)]
            if not filters:
                filters = [f for f in self._subs if topic_matches(f, message.topic)]
            handlers = [self._subs[f].handler for f in dict.fromkeys(filters)]
        if not handlers:
            log.debug("%s: no handler for %s; dropped", self.client_id, message.topic)
        return handlers


def _publish_properties(response_topic: str | None, correlation_data: bytes | None,
                        user_properties: tuple[tuple[str, str], ...], content_type: str | None) -> Properties | None:
    if response_topic is None and correlation_data is None and not user_properties and content_type is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = bytes(correlation_data)
    if user_properties:
        props.UserProperty = [(str(k), str(v)) for k, v in user_properties]
    if content_type is not None:
        props.ContentType = content_type
    return props


def _packet_size(topic: str, payload: bytes, props: Properties | None) -> int:
    return 1 + 4 + 2 + len(topic.encode()) + 2 + (len(props.pack()) if props else 1) + len(payload)


def _acked(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # paho gave up on it: it no longer holds a slot
        return True


def _wait_acked(info: paho.MQTTMessageInfo, timeout: float) -> None:
    with contextlib.suppress(RuntimeError, ValueError):
        info.wait_for_publish(timeout)
