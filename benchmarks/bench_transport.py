"""MqttTransport vs a naive paho-mqtt publish loop: QoS 1 throughput through a local Mosquitto and
through the embedded broker (fleet/embedded_broker.py), in one run.

    .venv/bin/python -m benchmarks.bench_transport [--small 20000] [--large 400] [--rounds 5]
                                                   [--brokers mosquitto,embedded]

For each broker the benchmark starts its own (tests/mosquitto.py or fleet.broker.EmbeddedBroker,
on a free port) and a subscriber in a child process, so the publisher under test has its
interpreter to itself. Each run publishes N
messages of one size at QoS 1 and is timed until the subscriber has every one of them (end to
end, not just handed to a socket). Two publishers take turns, ``--rounds`` times each, and the
median is printed:

    ours    MqttTransport.publish(qos=1) in a loop (bounded in-flight window), then flush()
    paho    the baseline: a paho Client with loop_start(), client.publish(qos=1) in a loop with
            no window, then wait_for_publish() on every message — what paho's docs show

Printed per broker and case: msgs/s and MB/s for both, and ratio = ours / paho (above 1: ours is
faster); then, with both brokers, MqttTransport's rate through each and embedded / mosquitto.
A baseline run that does not finish within ``--timeout`` is reported with the rate it reached.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgectl.transport.mqtt import MqttSettings, MqttTransport
from fleet.broker import EmbeddedBroker
from tests.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parent.parent

# The subscriber: counts messages per topic and says "done <topic>" when a topic has all of
# them (the count is the topic's last level).
_SUBSCRIBER = """
import sys
from collections import Counter
from edgectl.transport.mqtt import MqttSettings, MqttTransport
counts = Counter()
def on(m):
    counts[m.topic] += 1
    if counts[m.topic] == int(m.topic.rsplit("/", 1)[1]):
        print("done", m.topic, flush=True)
t = MqttTransport(MqttSettings(url=sys.argv[1], client_id="bench-sink", max_payload=1 << 20))
t.subscribe("bench/#", on)
t.start()
print("ready" if t.wait_connected(10) else f"failed {t.last_error}", flush=True)
sys.stdin.read()
t.stop()
"""


class Sink:
    """The subscriber process and a reader thread that queues its "done" lines."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, url], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.lines.get(timeout=30)
        if first != "ready":
            raise SystemExit(f"subscriber did not connect: {first}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_done(self, topic: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.lines.get(timeout=left) == f"done {topic}":
                    return True
            except queue.Empty:
                break
        return False

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(15)


Publisher = tuple[Callable[[str, bytes, int], None], Callable[[], None]]  # (send until acked, close)


def ours(url: str, window: int) -> Publisher:
    t = MqttTransport(MqttSettings(url=url, client_id="bench-ours", max_inflight=window))
    t.start()
    if not t.wait_connected(10):
        raise SystemExit(f"MqttTransport did not connect: {t.last_error}")

    def send(topic: str, payload: bytes, n: int) -> None:
        for _ in range(n):
            t.publish(topic, payload, qos=1, timeout=60)
        t.flush(120)

    return send, t.stop


def naive_paho(url: str) -> Publisher:
    host, port = url.rsplit("/", 1)[1].split(":")
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-paho",
                         protocol=paho.MQTTv5)
    client.connect(host, int(port))
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise SystemExit("paho did not connect")
        time.sleep(0.01)

    def send(topic: str, payload: bytes, n: int) -> None:
        infos = [client.publish(topic, payload, qos=1) for _ in range(n)]
        for info in infos:
            info.wait_for_publish(120)

    def close() -> None:
        client.disconnect()
        client.loop_stop()

    return send, close


def run(sink: Sink, send: Callable[[str, bytes, int], None], topic: str, payload: bytes, n: int,
        timeout: float) -> tuple[float, float, bool]:
    """Seconds until the subscriber has all ``n``, seconds until the publisher had all its acks,
    and whether the subscriber got them all before ``timeout``."""
    acked: list[float] = []
    t0 = time.perf_counter()

    def publish() -> None:
        send(topic, payload, n)
        acked.append(time.perf_counter() - t0)

    pub = threading.Thread(target=publish, daemon=True)
    pub.start()
    finished = sink.wait_done(topic, timeout)
    delivered = time.perf_counter() - t0
    pub.join(timeout if finished else 0)  # all delivered means all acked, or about to be
    return delivered, acked[0] if acked else delivered, finished


Row = tuple[str, int, int, dict[str, float], dict[str, float], dict[str, int]]  # case, size, n, med, acked, unfinished


def bench_broker(url: str, args: argparse.Namespace) -> list[Row]:
    cases = [("small", args.small_size, args.small), ("large", args.large_size, args.large)]
    sink = Sink(url)
    rows: list[Row] = []
    try:
        publishers = {"ours": ours(url, args.window), "paho": naive_paho(url)}
        for case, size, n in cases:
            payload = os.urandom(size)
            times: dict[str, list[float]] = {name: [] for name in publishers}
            acks: dict[str, list[float]] = {name: [] for name in publishers}
            unfinished: dict[str, int] = {name: 0 for name in publishers}
            for r in range(args.rounds):  # interleaved, so drift on a shared machine hits both
                for name, (send, _) in publishers.items():
                    seconds, acked, ok = run(sink, send, f"bench/{case}/{name}/{r}/{n}", payload, n, args.timeout)
                    times[name].append(seconds)
                    acks[name].append(acked)
                    unfinished[name] += not ok
                    print(f"{case} {name} round {r}: {n / seconds:,.0f} msgs/s delivered, "
                          f"{n / acked:,.0f} acked" + ("" if ok else " (timed out)"), flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            med_acked = {k: statistics.median(v) for k, v in acks.items()}
            rows.append((case, size, n, med, med_acked, unfinished))
        for _, close in publishers.values():
            close()
    finally:
        sink.close()
    return rows


def print_rows(broker: str, rows: list[Row]) -> None:
    print()
    print(f"{broker}: case | size_B | n | ours_msgs_s | ours_MB_s | paho_msgs_s | paho_MB_s | ratio | acked_ratio")
    for case, size, n, med, med_acked, unfinished in rows:
        rate = {k: n / v for k, v in med.items()}
        mb = {k: r * size / 1e6 for k, r in rate.items()}
        flag = {k: "*" if unfinished[k] else "" for k in rate}
        print(f"{broker}: {case} | {size} | {n} | {rate['ours']:,.0f}{flag['ours']} | {mb['ours']:.1f} | "
              f"{rate['paho']:,.0f}{flag['paho']} | {mb['paho']:.1f} | {rate['ours'] / rate['paho']:.2f} | "
              f"{med_acked['paho'] / med_acked['ours']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=20000, help="number of small messages per run")
    parser.add_argument("--small-size", type=int, default=100)
    parser.add_argument("--large", type=int, default=400, help="number of large messages per run")
    parser.add_argument("--large-size", type=int, default=256 << 10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=64, help="MqttTransport max_inflight")
    parser.add_argument("--timeout", type=float, default=120.0, help="give up on one run after this long")
    parser.add_argument("--brokers", default="mosquitto,embedded", help="comma-separated: mosquitto, embedded")
    args = parser.parse_args()
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if not brokers or set(brokers) - {"mosquitto", "embedded"}:
        parser.error(f"--brokers {args.brokers!r}: name mosquitto and/or embedded, comma-separated")

    results: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in brokers:
            print(f"--- {name}", flush=True)
            broker: Mosquitto | EmbeddedBroker = (Mosquitto(Path(tmp) / "mosquitto") if name == "mosquitto"
                                                  else EmbeddedBroker(Path(tmp) / "embedded"))
            broker.start()
            try:
                results[name] = bench_broker(broker.url, args)
            finally:
                broker.stop()

    for name, rows in results.items():
        print_rows(name, rows)
    if any(any(u.values()) for rows in results.values() for *_, u in rows):
        print("* some runs timed out; the rate shown is a lower bound")
    print("ratio = ours / paho naive loop, end to end (higher is better); acked_ratio = the same for the time "
          "until the publisher has all its acks; medians of interleaved rounds")
    if {"mosquitto", "embedded"} <= set(results):
        print()
        print("MqttTransport end to end: case | mosquitto_msgs_s | mosquitto_MB_s | embedded_msgs_s | embedded_MB_s "
              "| embedded/mosquitto")
        for mq, em in zip(results["mosquitto"], results["embedded"], strict=True):
            case, size, n = mq[0], mq[1], mq[2]
            rm, re_ = n / mq[3]["ours"], n / em[3]["ours"]
            print(f"{case} | {rm:,.0f} | {rm * size / 1e6:.1f} | {re_:,.0f} | {re_ * size / 1e6:.1f} | {re_ / rm:.2f}")


if __name__ == "__main__":
    main()
