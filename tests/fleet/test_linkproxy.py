"""The fault-injection link proxy against a real Mosquitto and the real MQTT transport: a damaged
chunk payload arrives damaged (and only the one asked for), a cut link drops the client and
makes the broker publish its will, and the client gets back in once the block is over."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest

from edgectl.transport.base import Message, Will
from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.linkproxy import LinkProxy
from tests.fleet.fleet_rig import wait_until
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.mqtt


@pytest.fixture
def proxy(mosquitto: Mosquitto) -> Iterator[LinkProxy]:
    p = LinkProxy("127.0.0.1", mosquitto.port, name="test").start()
    yield p
    p.stop()


def _client(url: str, cid: str, will: Will | None = None) -> MqttTransport:
    t = MqttTransport(MqttSettings(url=url, client_id=cid, will=will, reconnect_min_s=0.1, reconnect_max_s=0.5))
    return t


def test_corrupts_only_the_payloads_asked_for(mosquitto: Mosquitto, proxy: LinkProxy) -> None:
    got: queue.Queue[Message] = queue.Queue()
    device = _client(proxy.url, "proxy-dev")
    device.subscribe("t/reply/dev", got.put)
    device.subscribe("t/other", got.put)
    device.start()
    sender = _client(mosquitto.url, "proxy-sender")
    sender.start()
    try:
        assert device.wait_connected(10) and sender.wait_connected(10)
        payload = bytes(range(256)) * 40
        proxy.corrupt_next(1, "t/reply/dev")
        sender.publish("t/other", payload, qos=1, user_properties=(("k", "v"),))  # another topic: untouched
        sender.publish("t/reply/dev", payload, qos=1, correlation_data=b"c1", user_properties=(("k", "v"),))
        sender.publish("t/reply/dev", payload, qos=1, correlation_data=b"c2")
        msgs = [got.get(timeout=10) for _ in range(3)]
    finally:
        device.stop()
        sender.stop()
    by = {(m.topic, m.correlation_data): m for m in msgs}
    assert by[("t/other", None)].payload == payload
    damaged = by[("t/reply/dev", b"c1")]
    assert damaged.payload != payload and len(damaged.payload) == len(payload)
    assert damaged.payload[:-1] == payload[:-1] and damaged.prop("k") == "v"  # framing and properties intact
    assert by[("t/reply/dev", b"c2")].payload == payload
    assert proxy.corrupted == 1


def test_a_cut_drops_the_client_and_the_broker_sends_its_will(mosquitto: Mosquitto, proxy: LinkProxy) -> None:
    wills: queue.Queue[Message] = queue.Queue()
    watcher = _client(mosquitto.url, "proxy-watcher")
    watcher.subscribe("t/will", wills.put)
    watcher.start()
    device = _client(proxy.url, "proxy-cut", will=Will("t/will", b"gone", qos=1, retain=False))
    device.start()
    try:
        assert watcher.wait_connected(10) and device.wait_connected(10)
        proxy.cut(1.5)
        assert wills.get(timeout=10).payload == b"gone" and proxy.cuts == 1
        wait_until("the device to notice", lambda: not device.connected, timeout=10)
        wait_until("the device to get back in after the block", lambda: device.connected, timeout=30)
        assert not proxy.blocked
    finally:
        device.stop()
        watcher.stop()
