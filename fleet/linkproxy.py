"""A TCP proxy between one device and the broker, for fault injection (``edgectl up --chaos``).

Each simulated device connects to its own proxy, which forwards to the broker byte for byte
until told otherwise::

    proxy = LinkProxy("127.0.0.1", 1883).start()     # the device connects to proxy.url
    proxy.cut(10.0)             # drop its sockets now and refuse it for 10 s (a pulled cable)
    proxy.throttle(64 << 10)    # broker → device at most 64 KiB/s (a slow link); None = full speed
    proxy.corrupt_next(3, "edgectl/v1/artifacts/reply/dev-01")   # flip a byte in the next 3
                                # non-empty PUBLISH payloads to that topic (a chunk damaged in flight)
    proxy.stop()

The broker → device direction is forwarded one MQTT packet at a time (fixed header, remaining
length, body), so a corruption lands in a payload and never breaks the framing: the damage is
what a bad link would do to the data, which only the chunk's sha256 can catch.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

log = logging.getLogger(__name__)
_PUBLISH = 3


class LinkProxy:
    """One listening socket on 127.0.0.1 and a free port; each accepted connection is paired with
    a fresh connection to ``(host, port)``."""

    def __init__(self, host: str, port: int, *, name: str = "link") -> None:
        self.target = (host, port)
        self.name = name
        self.corrupted = 0  # payloads damaged so far
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._listener.settimeout(0.2)  # close() does not wake a blocked accept(): poll the stop flag
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._blocked_until = 0.0
        self._rate: float | None = None
        self._corrupt_left = 0
        self._corrupt_topic = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> LinkProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_all()
        self._thread.join(5)

    # --- faults ---
    def cut(self, seconds: float) -> None:
        """Close the device's connections now (no MQTT DISCONNECT: the broker sends its will) and
        refuse new ones for ``seconds``."""
        with self._lock:
            self._blocked_until = time.monotonic() + seconds
            self.cuts += 1
        self._drop_all()

    @property
    def blocked(self) -> bool:
        return time.monotonic() < self._blocked_until

    def throttle(self, bytes_per_s: float | None) -> None:
        with self._lock:
            self._rate = bytes_per_s

    def corrupt_next(self, count: int, topic: str) -> None:
        with self._lock:
            self._corrupt_left = count
            self._corrupt_topic = topic.encode()

    # --- plumbing ---
    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.blocked:
                client.close()  # refused: the device keeps retrying with its backoff
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump_up, args=(client, upstream), name=f"proxy-{self.name}-up",
                             daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), name=f"proxy-{self.name}-down",
                             daemon=True).start()

    def _close_pair(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            if (a, b) in self._pairs:
                self._pairs.remove((a, b))
            if (b, a) in self._pairs:
                self._pairs.remove((b, a))
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _pump_up(self, src: socket.socket, dst: socket.socket) -> None:
        """Device → broker: bytes as they come."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        """Broker → device: whole MQTT packets, throttled and (when asked) damaged."""
        buf = bytearray()
        try:
            while True:
                packet = _next_packet(src, buf)
                if packet is None:
                    break
                packet = self._maybe_corrupt(packet)
                self._pace(len(packet))
                dst.sendall(packet)
        except OSError:
            pass
        self._close_pair(src, dst)

    def _pace(self, n: int) -> None:
        rate = self._rate
        if rate:
            time.sleep(n / rate)

    def _maybe_corrupt(self, packet: bytes) -> bytes:
        if not self._corrupt_left or packet[0] >> 4 != _PUBLISH:
            return packet
        body_at = 1
        while packet[body_at] & 0x80:
            body_at += 1
        body_at += 1
        topic_len = int.from_bytes(packet[body_at:body_at + 2], "big")
        topic = packet[body_at + 2:body_at + 2 + topic_len]
        at = body_at + 2 + topic_len + (2 if (packet[0] >> 1) & 3 else 0)  # packet id with QoS > 0
        props, at = _varint(packet, at)
        if at + props >= len(packet):
            return packet  # an empty payload (e.g. an error reply): nothing to damage
        with self._lock:
            if self._corrupt_left <= 0 or topic != self._corrupt_topic:
                return packet
            self._corrupt_left -= 1
            self.corrupted += 1
        damaged = bytearray(packet)
        damaged[-1] ^= 0xFF  # the payload's last byte (the payload ends the packet); framing untouched
        log.info("proxy %s: flipped a byte of a PUBLISH to %s", self.name, topic.decode(errors="replace"))
        return bytes(damaged)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        byte = data[at]
        at += 1
        value += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            return value, at


def _recv_into(src: socket.socket, buf: bytearray, n: int) -> bool:
    while len(buf) < n:
        data = src.recv(max(65536, n - len(buf)))
        if not data:
            return False
        buf += data
    return True


def _next_packet(src: socket.socket, buf: bytearray) -> bytes | None:
    """One MQTT control packet from ``src`` (``buf`` holds bytes read ahead), or None at EOF."""
    if not _recv_into(src, buf, 2):
        return None
    length, mult, i = 0, 1, 1
    while True:
        if not _recv_into(src, buf, i + 1):
            return None
        byte = buf[i]
        length += (byte & 0x7F) * mult
        mult *= 128
        i += 1
        if not byte & 0x80 or i > 4:
            break
    total = i + length
    if not _recv_into(src, buf, total):
        return None
    packet = bytes(buf[:total])
    del buf[:total]
    return packet
