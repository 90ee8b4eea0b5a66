"""Renderers: turn one simulated event (a DNS lookup, a TLS session, a voice upload...) into
frames. Every renderer returns its frames with timestamps >= the event's start time.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from spyglass.sim import craft
from spyglass.sim.flows import Packet, TcpConn, UdpFlow, tcp_burst
from spyglass.sim.profiles import ENDPOINTS, ROUTER_IP, ROUTER_MAC

_REC = struct.Struct("!BHH")
MSS_FRAME = 1514


class Lan:
    """Household-wide state: the router, DNS answers, payload bytes."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.gw_mac = craft.mac(ROUTER_MAC)
        self.gw_ip = craft.ip4(ROUTER_IP)
        self._pool = self.rng.randbytes(1 << 16)
        self._tls: dict[int, bytes] = {}
        self._answers: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def resolve(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """CNAME chain and addresses for ``name``, fixed per household (seeded)."""
        got = self._answers.get(name)
        if got is None:
            cnames, pools = ENDPOINTS.get(name, ((), ("93.184.216.",)))
            rng = random.Random(f"{self.seed}:{name}")
            n = rng.choice((1, 1, 2, 4)) if not cnames else rng.choice((1, 2))
            addrs = tuple(f"{rng.choice(pools)}{rng.randint(2, 250)}" for _ in range(n))
            got = self._answers[name] = (cnames, tuple(dict.fromkeys(addrs)))
        return got

    def rand(self, n: int, at: int) -> bytes:
        at %= len(self._pool) - n if n < len(self._pool) else 1
        return self._pool[at : at + n]

    def tls(self, frame_len: int) -> bytes:
        """TCP payload of a frame of ``frame_len`` bytes: one TLS application-data record."""
        n = frame_len - 54
        rec = self._tls.get(n)
        if rec is None:
            rec = self._tls[n] = _REC.pack(23, 0x0303, n - 5) + self.rand(n - 5, n * 7919)
        return rec


@dataclass
class Dev:
    lan: Lan
    idx: int
    mac_s: str
    ip_s: str
    hostname: str
    kind: str
    model: str
    vendor: str
    assistant: str | None
    rng: random.Random
    mac: bytes = b""
    ip: bytes = b""
    port: int = 0
    conns: dict[str, TcpConn] = field(default_factory=dict)
    uploads: int = 0

    def __post_init__(self) -> None:
        self.mac = craft.mac(self.mac_s)
        self.ip = craft.ip4(self.ip_s)
        self.port = 32768 + self.rng.randrange(20000)

    def eport(self) -> int:
        self.port = self.port + 1 + self.rng.randrange(3)
        if self.port > 60999:
            self.port = 32768 + self.rng.randrange(100)
        return self.port

    def udp(self, peer_ip: bytes, dport: int, sport: int | None = None) -> UdpFlow:
        return UdpFlow(
            self.mac,
            self.lan.gw_mac,
            self.ip,
            peer_ip,
            sport or self.eport(),
            dport,
            ttl_b=self.rng.choice((52, 56, 58, 118, 120)),
            ident=self.rng.randrange(65536),
        )


def dns(
    dev: Dev, t: float, name: str, qtype: int = craft.TYPE_A
) -> tuple[list[Packet], float, bytes]:
    """Lookup of ``name`` at the router: query and answer; returns the address to connect to."""
    cnames, addrs = dev.lan.resolve(name)
    flow = UdpFlow(
        dev.mac,
        dev.lan.gw_mac,
        dev.ip,
        dev.lan.gw_ip,
        dev.eport(),
        53,
        ident=dev.rng.randrange(65536),
    )
    txid = dev.rng.randrange(65536)
    t2 = t + dev.rng.uniform(0.003, 0.04)
    pkts = [
        (t, flow.frame(True, craft.dns_query(txid, name, qtype))),
        (
            t2,
            flow.frame(
                False,
                craft.dns_response(
                    txid,
                    name,
                    qtype,
                    cnames=cnames,
                    addrs=addrs,
                    ttl=dev.rng.choice((30, 60, 60, 300)),
                ),
            ),
        ),
    ]
    return pkts, t2, craft.ip4(addrs[0])


def tls_open(dev: Dev, t: float, name: str, port: int = 443) -> tuple[TcpConn, list[Packet], float]:
    """DNS, TCP handshake, ClientHello with SNI, server flight, client Finished."""
    rng = dev.rng
    pkts, t, addr = dns(dev, t, name)
    rtt = rng.uniform(0.012, 0.06)
    conn = TcpConn(
        dev.mac,
        dev.lan.gw_mac,
        dev.ip,
        addr,
        dev.eport(),
        port,
        rng.getrandbits(32),
        rng.getrandbits(32),
        ttl_s=rng.choice((230, 235, 240, 244)),
        ident=rng.randrange(65536),
    )
    t += rng.uniform(0.0005, 0.003)
    pkts += conn.handshake(t, rtt)
    t += rtt + 0.0005
    lan = dev.lan
    rnd = lan.rand(96, rng.randrange(1 << 16))
    pkts.append((t, conn.data(True, craft.tls_client_hello(name, rnd[:32], rnd[32:64], rnd[64:]))))
    t += rtt
    pkts.append((t, conn.data(False, craft.tls_server_hello(rnd[64:], rnd[32:64], rnd[:32]))))
    flight = rng.randint(2500, 5200)  # encrypted extensions, certificate chain, finished
    while flight > 0:
        size = min(MSS_FRAME, flight + 54)
        t += 0.0003
        pkts.append((t, conn.data(False, lan.tls(max(size, 90)), push=flight <= 1460)))
        flight -= 1460
    t += 0.0004
    pkts.append((t, conn.ack(True)))
    t += rng.uniform(0.002, 0.01)
    pkts.append((t, conn.data(True, b"\x14\x03\x03\x00\x01\x01" + lan.tls(54 + 74))))
    t += rtt
    pkts.append((t, conn.ack(False)))
    conn.busy_until = t
    return conn, pkts, t


def exchange(dev: Dev, conn: TcpConn, t: float, up: int, down: int) -> tuple[list[Packet], float]:
    """A small request/response on an open connection (heartbeat, API call)."""
    t = max(t, conn.busy_until)
    rtt = dev.rng.uniform(0.015, 0.06)
    pkts = [(t, conn.data(True, dev.lan.tls(54 + max(up, 30))))]
    t += rtt
    pkts.append((t, conn.data(False, dev.lan.tls(54 + max(down, 30)))))
    t += dev.rng.uniform(0.02, 0.2)
    pkts.append((t, conn.ack(True)))
    conn.busy_until = t
    return pkts, t


def upstream(
    dev: Dev,
    conn: TcpConn,
    t: float,
    budgets: list[float],
    sizes: tuple[int, ...],
    preroll: int = 0,
    last_span: float = 1.0,
) -> tuple[list[Packet], float, float]:
    """Send ``budgets[k]`` frame bytes upstream in second k (evenly spread), server ACKing.

    The last second may be partial: its budget is spread over ``last_span`` seconds.
    Returns frames, the time of the first and of the last data frame.
    """
    rng = dev.rng
    times: list[float] = []
    frames: list[int] = []
    for k, budget in enumerate(budgets):
        these: list[int] = [MSS_FRAME] * preroll if k == 0 else []
        room = budget - sum(these)
        while room > 0:
            size = rng.choice(sizes)
            if size > room:
                size = int(room)
                if size < 100:
                    break
            these.append(size)
            room -= size
        start = t + k
        step = (1.0 if k < len(budgets) - 1 else last_span) / max(len(these), 1)
        for i in range(len(these)):
            if k == 0 and i < preroll:
                times.append(start + i * 0.0006)
            else:
                times.append(start + i * step + rng.uniform(0, step * 0.3))
        frames += these
    if not frames:
        return [], t, t
    ack_delay = rng.uniform(0.016, 0.06)
    pkts = tcp_burst(conn, True, times, frames, dev.lan.tls, ack_delay)
    conn.busy_until = times[-1] + ack_delay
    return pkts, times[0], times[-1]


def downstream(
    dev: Dev, conn: TcpConn, t: float, nbytes: float, gap: float = 0.0008
) -> tuple[list[Packet], float]:
    """The server sends ``nbytes`` of frames in full segments; the device ACKs every second one."""
    t = max(t, conn.busy_until)
    delay = dev.rng.uniform(0.0003, 0.004)
    full, rest = divmod(int(nbytes), MSS_FRAME)
    sizes = [MSS_FRAME] * full + ([max(rest, 90)] if rest or not full else [])
    times = [t + i * gap for i in range(len(sizes))]
    pkts = tcp_burst(conn, False, times, sizes, dev.lan.tls, delay)
    end = times[-1] + delay
    conn.busy_until = end
    return pkts, end


def quic_upstream(
    dev: Dev,
    flow: UdpFlow,
    dcid: tuple[bytes, bytes],
    t: float,
    budgets: list[float],
    size: int,
    last_span: float = 1.0,
) -> tuple[list[Packet], float, float]:
    """QUIC 1-RTT packets carrying ``budgets[k]`` frame bytes in second k, peer ACKing."""
    rng = dev.rng
    lan = dev.lan
    pkts: list[Packet] = []
    body = lan.rand(size - 42 - 9, rng.randrange(1 << 16))
    last = t
    n = 0
    for k, budget in enumerate(budgets):
        count = max(1, int(budget // size))
        span = 1.0 if k < len(budgets) - 1 else last_span
        step = span / count
        for i in range(count):
            ts = t + k + i * step + rng.uniform(0, step * 0.2)
            pkts.append((ts, flow.frame(True, craft.quic_short(dcid[0], body))))
            n += 1
            if n % 3 == 0:
                ack = lan.rand(rng.randint(16, 36), n)
                pkts.append((ts + 0.02, flow.frame(False, craft.quic_short(dcid[1], ack))))
            last = ts
    return pkts, t, last


def quic_downstream(
    dev: Dev, flow: UdpFlow, dcid: tuple[bytes, bytes], t: float, nbytes: float, size: int = 1392
) -> tuple[list[Packet], float]:
    lan = dev.lan
    pkts: list[Packet] = []
    body = lan.rand(size - 42 - 9, 4242)
    remaining = int(nbytes)
    i = 0
    while remaining > 0:
        pkts.append((t, flow.frame(False, craft.quic_short(dcid[1], body))))
        remaining -= size
        i += 1
        if i % 2 == 0:
            pkts.append((t + 0.001, flow.frame(True, craft.quic_short(dcid[0], lan.rand(24, i)))))
        t += 0.0015
    return pkts, t
