"""Fast per-connection frame builders: one struct call per frame, incremental IPv4 checksum.

A connection is seen from the LAN: the device on one side, the router's MAC on the other
(remote hosts are behind the gateway). Sequence and acknowledgement numbers are tracked so
Wireshark's TCP analysis sees a clean stream; TCP checksums are 0 (see craft.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from spyglass.sim import craft

Packet = tuple[float, bytes]

_TCP = struct.Struct("!6s6sHBBHHHBBH4s4sHHIIBBHHH")
_UDP = struct.Struct("!6s6sHBBHHHBBH4s4sHHHH")
_M32 = 0xFFFFFFFF


def _words(b: bytes) -> int:
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


class _Side:
    """One direction of a flow: constant header fields and the running IP id."""

    __slots__ = ("base", "dst", "ident", "ip_dst", "ip_src", "port_dst", "port_src", "src", "ttl")

    def __init__(
        self,
        src: bytes,
        dst: bytes,
        ip_src: bytes,
        ip_dst: bytes,
        port_src: int,
        port_dst: int,
        ttl: int,
        proto: int,
        ident: int,
    ) -> None:
        self.src, self.dst, self.ip_src, self.ip_dst = src, dst, ip_src, ip_dst
        self.port_src, self.port_dst, self.ttl, self.ident = port_src, port_dst, ttl, ident
        # Constant part of the IPv4 header checksum: version/ihl, DF, ttl/proto, addresses.
        self.base = 0x4500 + 0x4000 + (ttl << 8 | proto) + _words(ip_src) + _words(ip_dst)

    def csum(self, total: int) -> int:
        s = self.base + total + self.ident
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return ~s & 0xFFFF


class TcpConn:
    """A TCP connection between a LAN device (client) and a remote server via the router."""

    __slots__ = ("busy_until", "c", "c_nxt", "mss", "s", "s_nxt", "win_c", "win_s")

    def __init__(
        self,
        dev_mac: bytes,
        gw_mac: bytes,
        dev_ip: bytes,
        srv_ip: bytes,
        cport: int,
        sport: int,
        isn_c: int,
        isn_s: int,
        *,
        ttl_c: int = 64,
        ttl_s: int = 240,
        ident: int = 0,
    ) -> None:
        self.c = _Side(dev_mac, gw_mac, dev_ip, srv_ip, cport, sport, ttl_c, 6, ident)
        self.s = _Side(gw_mac, dev_mac, srv_ip, dev_ip, sport, cport, ttl_s, 6, ident ^ 0x5A5A)
        self.c_nxt = isn_c & _M32
        self.s_nxt = isn_s & _M32
        self.win_c = 2048  # scaled windows as after a wscale=7 handshake
        self.win_s = 1024
        self.mss = 1460
        self.busy_until = 0.0

    def _frame(
        self, up: bool, flags: int, payload: bytes, options: bytes = b"", ack_no: int | None = None
    ) -> bytes:
        side = self.c if up else self.s
        total = 40 + len(options) + len(payload)
        side.ident = (side.ident + 1) & 0xFFFF
        if up:
            seq, ack, win = self.c_nxt, self.s_nxt, self.win_c
        else:
            seq, ack, win = self.s_nxt, self.c_nxt, self.win_s
        if ack_no is not None:
            ack = ack_no
        hdr = _TCP.pack(
            side.dst,
            side.src,
            0x0800,
            0x45,
            0,
            total,
            side.ident,
            0x4000,
            side.ttl,
            6,
            side.csum(total),
            side.ip_src,
            side.ip_dst,
            side.port_src,
            side.port_dst,
            seq,
            ack if flags & craft.ACK else 0,
            (5 + len(options) // 4) << 4,
            flags,
            win,
            0,
            0,
        )
        n = len(payload) + (1 if flags & (craft.SYN | craft.FIN) else 0)
        if up:
            self.c_nxt = (self.c_nxt + n) & _M32
        else:
            self.s_nxt = (self.s_nxt + n) & _M32
        return hdr + options + payload if options else hdr + payload

    def handshake(self, t: float, rtt: float) -> list[Packet]:
        opts = craft.tcp_syn_options()
        return [
            (t, self._frame(True, craft.SYN, b"", opts)),
            (t + rtt, self._frame(False, craft.SYN | craft.ACK, b"", opts)),
            (t + rtt + 0.0002, self._frame(True, craft.ACK, b"")),
        ]

    def data(self, up: bool, payload: bytes, push: bool = True) -> bytes:
        return self._frame(up, craft.ACK | craft.PSH if push else craft.ACK, payload)

    def ack(self, up: bool, ack_no: int | None = None) -> bytes:
        """Pure ACK; ``ack_no`` acknowledges an earlier point of the peer's stream (delayed ACK)."""
        return self._frame(up, craft.ACK, b"", ack_no=ack_no)

    def close(self, t: float, rtt: float, by_client: bool = True) -> list[Packet]:
        fa = craft.FIN | craft.ACK
        first = self._frame(by_client, fa, b"")
        second = self._frame(not by_client, fa, b"")
        return [
            (t, first),
            (t + rtt, second),
            (t + rtt + 0.0002, self._frame(by_client, craft.ACK, b"")),
        ]


class UdpFlow:
    """A UDP flow (DNS, NTP, QUIC, multicast) with precomputed header fields."""

    __slots__ = ("a", "b")

    def __init__(
        self,
        a_mac: bytes,
        b_mac: bytes,
        a_ip: bytes,
        b_ip: bytes,
        a_port: int,
        b_port: int,
        *,
        ttl_a: int = 64,
        ttl_b: int = 64,
        ident: int = 0,
    ) -> None:
        self.a = _Side(a_mac, b_mac, a_ip, b_ip, a_port, b_port, ttl_a, 17, ident)
        self.b = _Side(b_mac, a_mac, b_ip, a_ip, b_port, a_port, ttl_b, 17, ident ^ 0x3C3C)

    def frame(self, from_a: bool, payload: bytes) -> bytes:
        side = self.a if from_a else self.b
        total = 28 + len(payload)
        side.ident = (side.ident + 1) & 0xFFFF
        return (
            _UDP.pack(
                side.dst,
                side.src,
                0x0800,
                0x45,
                0,
                total,
                side.ident,
                0x4000,
                side.ttl,
                17,
                side.csum(total),
                side.ip_src,
                side.ip_dst,
                side.port_src,
                side.port_dst,
                total - 20,
                0,
            )
            + payload
        )


def tcp_burst(
    conn: TcpConn,
    up: bool,
    times: list[float],
    sizes: list[int],
    payload: Callable[[int], bytes],
    ack_delay: float,
    ack_every: int = 2,
) -> list[Packet]:
    """Data frames of ``sizes`` bytes at ``times`` from one side, the other side ACKing.

    The per-frame work of ``TcpConn._frame`` inlined: bulk transfers are most of the packets.
    """
    snd, rcv = (conn.c, conn.s) if up else (conn.s, conn.c)
    seq, rseq = (conn.c_nxt, conn.s_nxt) if up else (conn.s_nxt, conn.c_nxt)
    win, rwin = (conn.win_c, conn.win_s) if up else (conn.win_s, conn.win_c)
    pack = _TCP.pack
    out: list[Packet] = []
    app = out.append
    s_dst, s_src, s_ttl, s_ips, s_ipd, s_ps, s_pd, s_base = (
        snd.dst,
        snd.src,
        snd.ttl,
        snd.ip_src,
        snd.ip_dst,
        snd.port_src,
        snd.port_dst,
        snd.base,
    )
    r_dst, r_src, r_ttl, r_ips, r_ipd, r_ps, r_pd, r_base = (
        rcv.dst,
        rcv.src,
        rcv.ttl,
        rcv.ip_src,
        rcv.ip_dst,
        rcv.port_src,
        rcv.port_dst,
        rcv.base,
    )
    ident, rident = snd.ident, rcv.ident
    last = len(sizes) - 1
    for i, size in enumerate(sizes):
        ts = times[i]
        total = size - 14
        ident = (ident + 1) & 0xFFFF
        c = s_base + total + ident
        c = (c & 0xFFFF) + (c >> 16)
        c = (c & 0xFFFF) + (c >> 16)
        app(
            (
                ts,
                pack(
                    s_dst,
                    s_src,
                    0x0800,
                    0x45,
                    0,
                    total,
                    ident,
                    0x4000,
                    s_ttl,
                    6,
                    ~c & 0xFFFF,
                    s_ips,
                    s_ipd,
                    s_ps,
                    s_pd,
                    seq,
                    rseq,
                    0x50,
                    0x10 if size == 1514 else 0x18,
                    win,
                    0,
                    0,
                )
                + payload(size),
            )
        )
        seq = (seq + size - 54) & _M32
        if i % ack_every == ack_every - 1 or i == last:
            rident = (rident + 1) & 0xFFFF
            c = r_base + 40 + rident
            c = (c & 0xFFFF) + (c >> 16)
            c = (c & 0xFFFF) + (c >> 16)
            app(
                (
                    ts + ack_delay,
                    pack(
                        r_dst,
                        r_src,
                        0x0800,
                        0x45,
                        0,
                        40,
                        rident,
                        0x4000,
                        r_ttl,
                        6,
                        ~c & 0xFFFF,
                        r_ips,
                        r_ipd,
                        r_ps,
                        r_pd,
                        rseq,
                        seq,
                        0x50,
                        0x10,
                        rwin,
                        0,
                        0,
                    ),
                )
            )
    snd.ident, rcv.ident = ident, rident
    if up:
        conn.c_nxt = seq
    else:
        conn.s_nxt = seq
    return out
