"""The transport interface: publish, subscribe with a handler, and connection state.

A transport connects in the background and keeps reconnecting (with backoff and jitter) until
``stop()``; ``publish`` on a transport that is not connected raises ``TransportOffline`` so the
caller decides whether to buffer, drop or wait. Handlers are called on the transport's own
thread, one message at a time; an exception in a handler is logged and dropped, never raised
into the transport::

    t = MqttTransport(MqttSettings(url="mqtt://127.0.0.1:1883", client_id="dev-1", will=will))
    t.subscribe("edgectl/v1/devices/dev-1/desired", on_desired)
    t.start()
    t.wait_connected(5.0)
    t.publish("edgectl/v1/devices/dev-1/report", b"{...}", qos=1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edgectl.errors import EdgectlError


class TransportError(EdgectlError):
    """The broker refused us, or a publish could not be completed."""


class TransportOffline(TransportError):
    """Not connected right now; the transport keeps trying in the background."""


@dataclass(frozen=True)
class Message:
    """One received (or to-be-sent) message with the MQTT 5 properties edgectl uses."""

    topic: str
    payload: bytes
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None

    def prop(self, key: str, default: str | None = None) -> str | None:
        for k, v in self.user_properties:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Will:
    """The last will: published by the broker when the client drops without disconnecting."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


Handler = Callable[[Message], None]
ConnectionListener = Callable[[bool], None]


class Transport(Protocol):
    """What the agent and the controller need from a message bus."""

    client_id: str

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the background thread."""

    @property
    def connected(self) -> bool: ...

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds passed; returns whether connected."""

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
        """Send one message. QoS 1 keeps a bounded window in flight: a full window blocks the
        caller (up to ``timeout``, then ``TransportError``). Offline → ``TransportOffline``."""

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``handler``; kept across reconnects."""

    def unsubscribe(self, topic_filter: str) -> None: ...

    def add_connection_listener(self, listener: ConnectionListener) -> None:
        """Call ``listener(True)`` on each (re)connect and ``listener(False)`` on each loss."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching, with ``$share/<group>/`` prefixes stripped."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    f_parts = topic_filter.split("/")
    t_parts = topic.split("/")
    for i, part in enumerate(f_parts):
        if part == "#":
            return True
        if i >= len(t_parts):
            return False
        if part != "+" and part != t_parts[i]:
            return False
    return len(f_parts) == len(t_parts)
