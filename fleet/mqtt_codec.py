"""The MQTT 5 wire format, as much of it as the embedded broker (fleet/embedded_broker.py) needs:
fixed header, variable byte integers, strings, properties, and the topic-filter rules::

    packet(PINGRESP, b"")                                  # b"\xd0\x00"
    encode_properties([(P_RECEIVE_MAX, 1000)])             # length-prefixed property block
    r = Reader(body); r.string(); r.u16(); r.properties()   # ProtocolViolation(0x81) past the end
    filter_matches("a/+/c", "a/b/c")                       # True; "$" topics skip a leading wildcard

A client's mistake raises ``ProtocolViolation(code, why)``: the broker answers DISCONNECT with
that reason code and drops only that client.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

# Packet types (the high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# Reason codes used here.
SUCCESS, DISCONNECT_WITH_WILL, NO_SUBSCRIPTION_EXISTED = 0x00, 0x04, 0x11
MALFORMED, PROTOCOL_ERROR, BAD_AUTH_METHOD, SESSION_TAKEN_OVER = 0x81, 0x82, 0x8C, 0x8E
KEEP_ALIVE_TIMEOUT, TOPIC_FILTER_INVALID, TOPIC_NAME_INVALID, PACKET_TOO_LARGE = 0x8D, 0x8F, 0x90, 0x95
TOPIC_ALIAS_INVALID, QOS_NOT_SUPPORTED, SERVER_SHUTTING_DOWN = 0x94, 0x9B, 0x8B

# Properties: identifier → wire type (b byte, h two-byte int, i four-byte int, v variable byte
# int, s UTF-8 string, d binary data, p string pair).
P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE, P_RESPONSE_TOPIC, P_CORRELATION = 0x01, 0x02, 0x03, 0x08, 0x09
P_SUB_ID, P_SESSION_EXPIRY, P_ASSIGNED_ID, P_AUTH_METHOD, P_WILL_DELAY = 0x0B, 0x11, 0x12, 0x15, 0x18
P_RECEIVE_MAX, P_TOPIC_ALIAS_MAX, P_TOPIC_ALIAS, P_MAX_QOS, P_USER = 0x21, 0x22, 0x23, 0x24, 0x26
P_MAX_PACKET, P_REASON_STRING = 0x27, 0x1F
PROPERTY_TYPES = {
    0x01: "b", 0x02: "i", 0x03: "s", 0x08: "s", 0x09: "d", 0x0B: "v", 0x11: "i", 0x12: "s", 0x13: "h", 0x15: "s",
    0x16: "d", 0x17: "b", 0x18: "i", 0x19: "b", 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: "h", 0x22: "h", 0x23: "h",
    0x24: "b", 0x25: "b", 0x26: "p", 0x27: "i", 0x28: "b", 0x29: "b", 0x2A: "b",
}


class ProtocolViolation(Exception):
    """A client broke the protocol: it gets DISCONNECT with ``code`` and its connection is closed."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def binary(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_property(pid: int, value: Any) -> bytes:
    kind = PROPERTY_TYPES[pid]
    head = varint(pid)
    if kind == "b":
        return head + bytes([int(value)])
    if kind == "h":
        return head + struct.pack("!H", value)
    if kind == "i":
        return head + struct.pack("!I", value)
    if kind == "v":
        return head + varint(int(value))
    if kind == "s":
        return head + utf8(str(value))
    if kind == "d":
        return head + binary(bytes(value))
    key, val = value
    return head + utf8(key) + utf8(val)


def encode_properties(items: Iterable[tuple[int, Any]]) -> bytes:
    body = b"".join(encode_property(pid, value) for pid, value in items)
    return varint(len(body)) + body


def packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


class Reader:
    """Reads one packet's variable header and payload; running past its end is a malformed packet."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolViolation(MALFORMED, "packet shorter than its fields")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ProtocolViolation(MALFORMED, "variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation(MALFORMED, "string is not UTF-8") from None
        if "\x00" in text:
            raise ProtocolViolation(MALFORMED, "string holds U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def properties(self) -> tuple[list[tuple[int, Any]], bytes]:
        """The property list and its raw bytes (without the length), for passing it on as is."""
        length = self.varint()
        start = self.pos
        end = start + length
        if end > len(self.data):
            raise ProtocolViolation(MALFORMED, "properties longer than the packet")
        items: list[tuple[int, Any]] = []
        while self.pos < end:
            pid = self.varint()
            kind = PROPERTY_TYPES.get(pid)
            value: Any
            if kind is None:
                raise ProtocolViolation(MALFORMED, f"unknown property 0x{pid:02x}")
            if kind == "b":
                value = self.u8()
            elif kind == "h":
                value = self.u16()
            elif kind == "i":
                value = self.u32()
            elif kind == "v":
                value = self.varint()
            elif kind == "s":
                value = self.string()
            elif kind == "d":
                value = self.binary()
            else:
                value = (self.string(), self.string())
            items.append((pid, value))
        if self.pos != end:
            raise ProtocolViolation(MALFORMED, "a property runs past the property length")
        return items, self.data[start:end]


def split_fixed_header(buf: bytearray) -> tuple[int, int] | None:
    """``(header length, remaining length)`` of the packet at the start of ``buf``, or None if
    more bytes are needed."""
    value = 0
    for i in range(1, 5):
        if i >= len(buf):
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << (7 * (i - 1))
        if not byte & 0x80:
            return i + 1, value
    raise ProtocolViolation(MALFORMED, "remaining length longer than 4 bytes")


def valid_filter(topic_filter: str) -> bool:
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def split_share(topic_filter: str) -> tuple[str | None, str]:
    """``("$share/g/a/+", "a/+")`` for a shared subscription, ``(None, filter)`` otherwise; a
    ``$share`` filter without a group or a filter gives an empty filter (invalid)."""
    if not topic_filter.startswith("$share/"):
        return None, topic_filter
    _, group, inner = [*topic_filter.split("/", 2), "", ""][:3]
    if not group or "+" in group or "#" in group:
        return topic_filter, ""
    return topic_filter, inner


def filter_matches(topic_filter: str, topic: str) -> bool:
    """The tree's rule for one filter (retained messages are matched against each new subscription)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(levels) == len(have)
