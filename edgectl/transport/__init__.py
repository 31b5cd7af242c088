"""Message transports shared by the agent and the controller (STYLE.md §5).

    base.py     the ``Transport`` protocol, ``Message``, ``Will`` and the transport errors
    memory.py   ``MemoryBroker`` + ``MemoryTransport``: an in-process broker for unit tests
    mqtt.py     ``MqttTransport``: paho-mqtt 2.x (MQTT 5) behind the same interface

Callers see exceptions, never paho return codes, and handlers run on the transport's thread.
"""

from edgectl.transport.base import Handler, Message, Transport, TransportError, TransportOffline, Will

__all__ = ["Handler", "Message", "Transport", "TransportError", "TransportOffline", "Will"]
