"""Frame and payload builders for the simulator (stdlib only).

Every function returns ``bytes``. Header checksums: IPv4 header, ICMP and UDP-over-IPv6 are
correct; TCP checksums and UDP-over-IPv4 checksums are written as 0 (UDP/IPv4: "no checksum",
which is legal; TCP: Wireshark does not verify by default, and computing it per segment would
cost more than the rest of the frame). Pass ``checksum=True`` to get a correct TCP checksum.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections.abc import Iterable, Sequence

ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_IPV6 = 0x86DD

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

BROADCAST_MAC = b"\xff" * 6
MDNS_MAC = bytes.fromhex("01005e0000fb")
SSDP_MAC = bytes.fromhex("01005e7ffffa")


def mac(text: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` -> 6 bytes."""
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(memoryview(data).cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    total = ~total & 0xFFFF
    # The one's-complement sum is byte-order independent; swap back on little-endian hosts.
    return ((total & 0xFF) << 8 | total >> 8) if sys.byteorder == "little" else total


# --- link and network layers -------------------------------------------------------------


def ethernet(
    dst: bytes, src: bytes, ethertype: int, payload: bytes, vlan: int | None = None
) -> bytes:
    """Ethernet II frame (no FCS), with one 802.1Q tag when ``vlan`` is given."""
    if vlan is None:
        return dst + src + struct.pack("!H", ethertype) + payload
    return dst + src + struct.pack("!HHH", ETH_VLAN, vlan & 0x0FFF, ethertype) + payload


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    df: bool = True,
) -> bytes:
    """IPv4 packet with a correct header checksum (no options)."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        tos,
        20 + len(payload),
        ident & 0xFFFF,
        0x4000 if df else 0,
        ttl,
        proto,
        0,
        src,
        dst,
    )
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, src, dst)
        + payload
    )


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def tcp(
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    window: int = 65535,
    options: bytes = b"",
    src_ip: bytes | None = None,
    dst_ip: bytes | None = None,
    checksum_: bool = False,
) -> bytes:
    """TCP segment. Checksum 0 unless ``checksum_`` and both IPs are given."""
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)  # NOP padding
    off = (20 + len(options)) // 4
    seg = (
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            off << 4,
            flags,
            window,
            0,
            0,
        )
        + options
        + payload
    )
    if checksum_ and src_ip is not None and dst_ip is not None:
        csum = checksum(_pseudo(src_ip, dst_ip, 6, len(seg)) + seg)
        seg = seg[:16] + struct.pack("!H", csum) + seg[18:]
    return seg


def tcp_syn_options(mss: int = 1460, wscale: int = 7) -> bytes:
    """MSS, NOP, window scale, SACK permitted, NOP, NOP: the 12 bytes most stacks send."""
    return struct.pack("!BBH", 2, 4, mss) + bytes([1, 3, 3, wscale, 4, 2, 1, 1])


def udp(
    sport: int,
    dport: int,
    payload: bytes,
    *,
    src_ip: bytes | None = None,
    dst_ip: bytes | None = None,
) -> bytes:
    """UDP datagram; checksummed when the IPs are given (required over IPv6), else 0."""
    length = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    if src_ip is not None and dst_ip is not None:
        csum = checksum(_pseudo(src_ip, dst_ip, 17, length) + seg) or 0xFFFF
        seg = seg[:6] + struct.pack("!H", csum) + seg[8:]
    return seg


def arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    """ARP payload (op 1 request, 2 reply) for Ethernet/IPv4."""
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_IPV4, 6, 4, op, sha, spa, tha, tpa)


# --- DNS / mDNS ----------------------------------------------------------------------------

TYPE_A, TYPE_PTR, TYPE_CNAME, TYPE_TXT, TYPE_AAAA, TYPE_SRV = 1, 12, 5, 16, 28, 33


class DnsWriter:
    """Builds a DNS message with name compression (RFC 1035 4.1.4)."""

    def __init__(self, txid: int, flags: int) -> None:
        self.buf = bytearray(struct.pack("!HHHHHH", txid, flags, 0, 0, 0, 0))
        self._names: dict[str, int] = {}
        self._counts = [0, 0, 0, 0]

    def name(self, name: str) -> None:
        labels = [p for p in name.rstrip(".").split(".") if p]
        for i in range(len(labels)):
            suffix = ".".join(labels[i:]).lower()
            where = self._names.get(suffix)
            if where is not None:
                self.buf += struct.pack("!H", 0xC000 | where)
                return
            if len(self.buf) < 0x3FFF:
                self._names[suffix] = len(self.buf)
            raw = labels[i].encode()
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad DNS label {labels[i]!r} in {name!r}")
            self.buf += bytes([len(raw)]) + raw
        self.buf += b"\0"

    def question(self, name: str, qtype: int, qclass: int = 1) -> None:
        self.name(name)
        self.buf += struct.pack("!HH", qtype, qclass)
        self._counts[0] += 1

    def record(
        self,
        section: int,
        name: str,
        rtype: int,
        ttl: int,
        rdata: bytes | str | tuple[int, int, int, str],
        rclass: int = 1,
    ) -> None:
        """``rdata``: bytes; a name (str) for PTR/CNAME; (prio, weight, port, target) for SRV."""
        self.name(name)
        self.buf += struct.pack("!HHI", rtype, rclass, ttl)
        at = len(self.buf)
        self.buf += b"\0\0"
        if isinstance(rdata, bytes):
            self.buf += rdata
        elif isinstance(rdata, str):
            self.name(rdata)
        else:
            self.buf += struct.pack("!HHH", *rdata[:3])
            self.name(rdata[3])
        struct.pack_into("!H", self.buf, at, len(self.buf) - at - 2)
        self._counts[section] += 1

    def finish(self) -> bytes:
        struct.pack_into("!HHHH", self.buf, 4, *self._counts)
        return bytes(self.buf)


def dns_query(txid: int, qname: str, qtype: int = TYPE_A) -> bytes:
    w = DnsWriter(txid, 0x0100)  # standard query, recursion desired
    w.question(qname, qtype)
    return w.finish()


def dns_response(
    txid: int,
    qname: str,
    qtype: int = TYPE_A,
    *,
    cnames: Sequence[str] = (),
    addrs: Sequence[str] = (),
    ttl: int = 60,
) -> bytes:
    """Answer ``qname`` through a CNAME chain to A (or AAAA) records."""
    w = DnsWriter(txid, 0x8180)  # response, RD, RA, no error
    w.question(qname, qtype)
    owner = qname
    for target in cnames:
        w.record(1, owner, TYPE_CNAME, ttl, target)
        owner = target
    for addr in addrs:
        packed = ip6(addr) if qtype == TYPE_AAAA else ip4(addr)
        w.record(1, owner, qtype, ttl, packed)
    return w.finish()


def txt_rdata(entries: Iterable[str]) -> bytes:
    out = bytearray()
    for entry in entries:
        raw = entry.encode()[:255]
        out += bytes([len(raw)]) + raw
    return bytes(out) or b"\0"


def mdns_announcement(
    service: str,
    instance: str,
    host: str,
    port: int,
    txt: Sequence[str],
    addr: str,
    ttl: int = 4500,
) -> bytes:
    """Unsolicited mDNS response: PTR service -> instance, SRV, TXT and the host's A record.

    ``service`` like ``_googlecast._tcp.local``; ``instance`` the full instance name;
    ``host`` like ``Google-Nest-Mini-1a2b.local``. Unique records carry the cache-flush bit.
    """
    w = DnsWriter(0, 0x8400)  # response, authoritative
    w.record(1, service, TYPE_PTR, ttl, instance)
    w.record(1, instance, TYPE_SRV, 120, (0, 0, port, host), rclass=0x8001)
    w.record(1, instance, TYPE_TXT, ttl, txt_rdata(txt), rclass=0x8001)
    w.record(3, host, TYPE_A, 120, ip4(addr), rclass=0x8001)
    return w.finish()


# --- TLS -----------------------------------------------------------------------------------

_CIPHERS = (
    0x1301,
    0x1302,
    0x1303,
    0xC02B,
    0xC02F,
    0xC02C,
    0xC030,
    0xCCA9,
    0xCCA8,
    0xC013,
    0xC014,
    0x009C,
    0x009D,
    0x002F,
    0x0035,
)


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def _vec8(body: bytes) -> bytes:
    return bytes([len(body)]) + body


def _vec16(body: bytes) -> bytes:
    return struct.pack("!H", len(body)) + body


def tls_client_hello(
    sni: str,
    random32: bytes,
    session_id: bytes = b"",
    key_share: bytes = b"",
    alpn: Sequence[str] = ("h2", "http/1.1"),
) -> bytes:
    """A TLS 1.3-capable ClientHello record (legacy version TLS 1.2) with server_name."""
    host = sni.encode()
    exts = [
        _ext(0, _vec16(b"\0" + _vec16(host))),  # server_name: host_name
        _ext(23, b""),  # extended_master_secret
        _ext(65281, b"\0"),  # renegotiation_info
        _ext(10, _vec16(struct.pack("!4H", 0x001D, 0x0017, 0x0018, 0x0019))),  # supported_groups
        _ext(11, _vec8(b"\0")),  # ec_point_formats: uncompressed
        _ext(35, b""),  # session_ticket
    ]
    if alpn:
        exts.append(_ext(16, _vec16(b"".join(_vec8(p.encode()) for p in alpn))))
    exts += [
        _ext(5, b"\x01\0\0\0\0"),  # status_request (OCSP)
        _ext(
            13,
            _vec16(
                struct.pack("!8H", 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)
            ),
        ),  # signature_algorithms
        _ext(
            51,
            _vec16(struct.pack("!HH", 0x001D, 32) + (key_share or random32)[:32].ljust(32, b"\0")),
        ),
        _ext(45, _vec8(b"\x01")),  # psk_key_exchange_modes: psk_dhe_ke
        _ext(43, _vec8(struct.pack("!HH", 0x0304, 0x0303))),  # supported_versions
    ]
    body = (
        b"\x03\x03"
        + random32[:32].ljust(32, b"\0")
        + _vec8(session_id)
        + _vec16(b"".join(struct.pack("!H", c) for c in _CIPHERS))
        + b"\x01\x00"
        + _vec16(b"".join(exts))
    )
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + _vec16(hs)


def tls_server_hello(
    random32: bytes, session_id: bytes, key_share: bytes, cipher: int = 0x1301
) -> bytes:
    """TLS 1.3 ServerHello record followed by the middlebox-compatibility ChangeCipherSpec."""
    exts = _ext(43, b"\x03\x04") + _ext(
        51, struct.pack("!HH", 0x001D, 32) + key_share[:32].ljust(32, b"\0")
    )
    body = (
        b"\x03\x03"
        + random32[:32].ljust(32, b"\0")
        + _vec8(session_id)
        + struct.pack("!HB", cipher, 0)
        + _vec16(exts)
    )
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x03" + _vec16(hs) + b"\x14\x03\x03\x00\x01\x01"


def tls_record_header(body_len: int, content_type: int = 23) -> bytes:
    return struct.pack("!BHH", content_type, 0x0303, body_len)


# --- DHCP ----------------------------------------------------------------------------------

DHCP_DISCOVER, DHCP_OFFER, DHCP_REQUEST, DHCP_ACK = 1, 2, 3, 5
_DHCP_PARAMS = bytes([1, 3, 6, 15, 28, 33, 42, 119, 121])


def dhcp(
    op: int,
    xid: int,
    client_mac: bytes,
    options: Sequence[tuple[int, bytes]],
    *,
    ciaddr: bytes = b"\0" * 4,
    yiaddr: bytes = b"\0" * 4,
    siaddr: bytes = b"\0" * 4,
    secs: int = 0,
    broadcast: bool = False,
) -> bytes:
    """BOOTP/DHCP message (op 1 request, 2 reply) with the given options and an end marker."""
    head = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        op,
        1,
        6,
        0,
        xid,
        secs,
        0x8000 if broadcast else 0,
        ciaddr,
        yiaddr,
        siaddr,
        b"\0" * 4,
        client_mac,
        b"",
        b"",
    )
    opts = b"".join(bytes([code, len(val)]) + val for code, val in options)
    return head + b"\x63\x82\x53\x63" + opts + b"\xff"


def dhcp_client(
    msg_type: int,
    xid: int,
    client_mac: bytes,
    hostname: str,
    vendor_class: str,
    requested_ip: bytes | None = None,
    server_id: bytes | None = None,
    params: bytes = _DHCP_PARAMS,
) -> bytes:
    """DISCOVER or REQUEST with options 53, 61, 50, 54, 12, 60, 55."""
    opts: list[tuple[int, bytes]] = [(53, bytes([msg_type])), (61, b"\x01" + client_mac)]
    if requested_ip is not None:
        opts.append((50, requested_ip))
    if server_id is not None:
        opts.append((54, server_id))
    opts += [
        (57, struct.pack("!H", 1500)),
        (12, hostname.encode()),
        (60, vendor_class.encode()),
        (55, params),
    ]
    return dhcp(1, xid, client_mac, opts)


def dhcp_server(
    msg_type: int,
    xid: int,
    client_mac: bytes,
    yiaddr: bytes,
    server: bytes,
    lease_s: int = 86400,
    dns: bytes | None = None,
) -> bytes:
    """OFFER or ACK for a /24 with the server as router and DNS."""
    opts = [
        (53, bytes([msg_type])),
        (54, server),
        (51, struct.pack("!I", lease_s)),
        (58, struct.pack("!I", lease_s // 2)),
        (59, struct.pack("!I", lease_s * 7 // 8)),
        (1, b"\xff\xff\xff\0"),
        (3, server),
        (6, dns or server),
        (15, b"lan"),
    ]
    return dhcp(2, xid, client_mac, opts, yiaddr=yiaddr, siaddr=server)


# --- SSDP, NTP, QUIC -----------------------------------------------------------------------


def ssdp_notify(
    location: str, nt: str, usn: str, server: str, extra: Sequence[tuple[str, str]] = ()
) -> bytes:
    lines = [
        "NOTIFY * HTTP/1.1",
        "HOST: 239.255.255.250:1900",
        "CACHE-CONTROL: max-age = 1800",
        f"LOCATION: {location}",
        f"NT: {nt}",
        "NTS: ssdp:alive",
        f"SERVER: {server}",
        f"USN: {usn}",
    ]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_NTP_EPOCH = 2208988800


def _ntp_ts(ts: float) -> bytes:
    sec = int(ts) + _NTP_EPOCH
    return struct.pack("!II", sec & 0xFFFFFFFF, int((ts - int(ts)) * 4294967296) & 0xFFFFFFFF)


def ntp(
    mode: int,
    ts: float,
    *,
    origin: float | None = None,
    stratum: int = 0,
    ref_id: bytes = b"\0" * 4,
) -> bytes:
    """NTPv4 packet: mode 3 (client, transmit time ts) or 4 (server, answering ``origin``)."""
    zero = b"\0" * 8
    if mode == 3:
        return (
            struct.pack("!BBbb", (4 << 3) | 3, 0, 6, -20)
            + b"\0" * 8
            + ref_id
            + zero * 3
            + _ntp_ts(ts)
        )
    rx = _ntp_ts(ts - 0.0002)
    return (
        struct.pack("!BBbb", (4 << 3) | 4, stratum or 2, 6, -23)
        + struct.pack("!II", 0x10, 0x20)
        + ref_id
        + _ntp_ts(ts - 30)
        + (_ntp_ts(origin) if origin is not None else zero)
        + rx
        + _ntp_ts(ts)
    )


def quic_short(dcid: bytes, body: bytes, key_phase: int = 0) -> bytes:
    """QUIC 1-RTT (short header) packet: header form 0, fixed bit 1, then the connection ID."""
    return bytes([0x40 | (key_phase << 2) | 0x01]) + dcid + body
