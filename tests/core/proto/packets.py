"""Reference packets for the parser tests: built by hand, or read from the real captures (scapy's
raw pcap/pcapng reader plus a few lines of header decoding; each file is read once per session)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from scapy.utils import RawPcapReader


@dataclass(frozen=True, slots=True)
class Frame:
    """A captured frame with its headers decoded just enough to pick payloads out."""

    number: int  # 1-based, as tshark numbers frames
    src_mac: str
    ethertype: int
    src: str  # IP addresses, "" for non-IP
    dst: str
    proto: int  # 6 TCP, 17 UDP
    sport: int
    dport: int
    payload: bytes  # transport payload; for ARP, the ARP packet


def _decode(number: int, data: bytes) -> Frame | None:
    if len(data) < 14:
        return None
    src_mac = data[6:12].hex(":")
    etype, off = struct.unpack_from("!H", data, 12)[0], 14
    while etype in (0x8100, 0x88A8) and len(data) >= off + 4:
        etype, off = struct.unpack_from("!H", data, off + 2)[0], off + 4
    if etype == 0x0806:
        return Frame(number, src_mac, etype, "", "", 0, 0, 0, data[off:])
    if etype == 0x0800 and len(data) >= off + 20:
        ihl = (data[off] & 0x0F) * 4
        total = struct.unpack_from("!H", data, off + 2)[0]
        proto = data[off + 9]
        src = str(ipaddress.IPv4Address(data[off + 12 : off + 16]))
        dst = str(ipaddress.IPv4Address(data[off + 16 : off + 20]))
        end = min(len(data), off + total)
        off += ihl
    elif etype == 0x86DD and len(data) >= off + 40:
        proto = data[off + 6]
        src = str(ipaddress.IPv6Address(data[off + 8 : off + 24]))
        dst = str(ipaddress.IPv6Address(data[off + 24 : off + 40]))
        end = min(len(data), off + 40 + struct.unpack_from("!H", data, off + 4)[0])
        off += 40
    else:
        return None
    if proto == 17 and end >= off + 8:
        sport, dport = struct.unpack_from("!HH", data, off)
        return Frame(number, src_mac, etype, src, dst, proto, sport, dport, data[off + 8 : end])
    if proto == 6 and end >= off + 20:
        sport, dport = struct.unpack_from("!HH", data, off)
        doff = (data[off + 12] >> 4) * 4
        return Frame(number, src_mac, etype, src, dst, proto, sport, dport, data[off + doff : end])
    return None


@lru_cache(maxsize=16)
def read(path: Path) -> tuple[Frame, ...]:
    """Every IP/ARP frame of a capture (raw reader: no scapy dissection, it is slow)."""
    out = []
    with RawPcapReader(str(path)) as reader:
        for number, (data, _meta) in enumerate(reader, 1):
            fr = _decode(number, bytes(data))
            if fr is not None:
                out.append(fr)
    return tuple(out)


def udp_payloads(path: Path, port: int) -> list[Frame]:
    """Every UDP frame to or from ``port``."""
    return [f for f in read(path) if f.proto == 17 and port in (f.sport, f.dport)]


def tcp_payloads(path: Path) -> list[Frame]:
    return [f for f in read(path) if f.proto == 6 and f.payload]


def arp_payloads(path: Path) -> list[Frame]:
    return [f for f in read(path) if f.ethertype == 0x0806]


def frame(path: Path, number: int) -> Frame:
    return next(f for f in read(path) if f.number == number)


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def client_hello(sni: str | None, *, before: int = 2, session_id: bytes = b"\x11" * 32) -> bytes:
    """A TLS 1.2-style ClientHello record; ``before`` padding-ish extensions precede the SNI."""
    exts = b"".join(_ext(0xFF01 - i, b"\x00" * (i + 1)) for i in range(before))
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        exts += _ext(0, struct.pack("!H", len(entry)) + entry)
    exts += _ext(10, b"\x00\x04\x00\x1d\x00\x17")  # supported_groups, after the SNI
    ciphers = b"\x13\x01\x13\x02\xc0\x2f"
    body = (
        b"\x03\x03"
        + b"\x42" * 32
        + bytes([len(session_id)])
        + session_id
        + struct.pack("!H", len(ciphers))
        + ciphers
        + b"\x01\x00"
        + struct.pack("!H", len(exts))
        + exts
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs
