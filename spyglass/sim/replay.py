"""Plan a replay of one device's internet traffic from a capture (pure: no sockets, no root).

A plan says, per connection of the device with a remote host, which application payloads were
sent in each direction and when, so a replayer can re-create the same sizes and timing over real
sockets (tests/netlab/replayer.py runs it in the namespace lab). Only what the application sent is
kept: TCP data segments (no pure ACKs, no SYN/FIN/RST, no retransmission — a sequence number seen
again — since the replaying kernel makes those itself) and UDP datagrams. DNS queries the device
made are kept as names to ask, and the SNI of each TLS ClientHello, so the replay opens real TLS
with the same server name where the original connection began with a ClientHello; the original
handshake segments are then dropped, the replay's own handshake stands in for them.

Times are seconds from the start of the chosen range (``start`` seconds after the capture's first
packet), multiplied by ``time_scale``. A connection or DNS query whose ``start``/``t`` is ``None``
happened before the range: the replayer sets it up before its clock starts.

Address mapping (stable for a given capture and range): remote IPs are taken in order of first
use in the range. An IP gets the lab address of a name it is known by (DNS answer or SNI in the
capture) when ``known_addresses`` has that name and no earlier IP took the address; otherwise the
next free address of the pool ``LAB_POOL`` (10.78.0.100 to .250, in the lab's cloud network).
IPv6 remotes get IPv4 lab addresses too (the lab's cloud is IPv4). Ports are kept.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from spyglass.core.capfile import open_capture
from spyglass.core.decode import decode, ip_str
from spyglass.core.frames import Decoded, FrameBatch
from spyglass.core.lan import LanClassifier
from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.dns import parse_dns, resolve_chain
from spyglass.core.proto.tls import client_hello_sni

Direction = Literal["up", "down"]
LAB_POOL = ("10.78.0.100", "10.78.0.250")  # inclusive; inside tests/netlab/lan.py's CLOUD_NET
TCP, UDP = 6, 17
_SYN, _RST, _FIN, _ACK = 0x02, 0x04, 0x01, 0x10
_TLS_HANDSHAKE, _TLS_APPDATA = 0x16, 0x17


class Step(NamedTuple):
    t: float
    conn_id: int
    direction: Direction
    nbytes: int


@dataclass(frozen=True, slots=True)
class Connection:
    id: int
    proto: str  # "tcp" or "udp"
    remote_ip: str  # lab address
    remote_port: int
    local_port: int
    original_ip: str
    start: float | None  # SYN time; None: opened before the range
    end: float | None  # first FIN/RST; None: still open when the range ends
    tls: bool  # began with a ClientHello: replay as real TLS
    sni: str | None
    handshake_segments: int  # original TLS handshake segments in the range, not replayed


@dataclass(frozen=True, slots=True)
class DnsQuery:
    t: float | None  # None: asked before the range (the replay asks first, so names are known)
    name: str
    qtype: int


@dataclass(slots=True)
class ReplayPlan:
    source: str
    device_mac: str
    origin: float  # UNIX time of plan t=0 in the capture
    duration: float  # plan seconds (already scaled)
    time_scale: float
    connections: list[Connection]
    steps: list[Step]  # time-ordered
    dns: list[DnsQuery]
    addresses: dict[str, str]  # original remote IP -> lab address
    dns_names: dict[str, str]  # name -> lab address: what the lab's DNS should answer
    notes: list[str] = field(default_factory=list)

    def connection(self, conn_id: int) -> Connection:
        return self._by_id()[conn_id]

    def _by_id(self) -> dict[int, Connection]:
        return {c.id: c for c in self.connections}

    def sends(self, conn_id: int, direction: Direction) -> list[tuple[float, int]]:
        return [
            (s.t, s.nbytes) for s in self.steps if s.conn_id == conn_id and s.direction == direction
        ]

    def payload_bytes(self, direction: Direction) -> int:
        return sum(s.nbytes for s in self.steps if s.direction == direction)


def parse_mac(text: str) -> int:
    parts = text.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r} (expected aa:bb:cc:dd:ee:ff)")
    try:
        return int("".join(parts), 16)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r} (expected aa:bb:cc:dd:ee:ff)") from None


# -- reading the capture ---------------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    """A connection as it is read: everything before the range too (retransmissions, SNI)."""

    key: tuple[int, str, int, int]  # proto, remote IP, remote port, local port
    seq: int
    syn: float | None = None
    end: float | None = None
    first: float | None = None  # first packet
    tls: bool = False
    sni: str | None = None
    seen_up_payload: bool = False
    in_handshake: bool = False
    handshake_in_range: int = 0
    seen: dict[bool, set[int]] = field(default_factory=lambda: {True: set(), False: set()})
    steps: list[tuple[float, bool, int]] = field(default_factory=list)  # (abs t, up, nbytes)


@dataclass(slots=True)
class _Reader:
    dev: int
    lo: float
    hi: float | None
    lan: LanClassifier
    conns: dict[tuple[int, str, int, int], list[_Conn]] = field(default_factory=dict)
    ip_names: dict[str, list[str]] = field(default_factory=dict)
    queries: list[tuple[float, str, int]] = field(default_factory=list)
    retrans: int = 0
    other_proto: int = 0
    bad: list[str] = field(default_factory=list)
    count: int = 0
    first_ts: float | None = None
    last_ts: float | None = None

    def feed(self, batch: FrameBatch) -> None:
        d = decode(batch)
        if len(d):
            lo_t, hi_t = float(d.ts.min()), float(d.ts.max())
            self.first_ts = lo_t if self.first_ts is None else min(self.first_ts, lo_t)
            self.last_ts = hi_t if self.last_ts is None else max(self.last_ts, hi_t)
        ip = (d.ipver > 0) & ~d.malformed
        src_local = self.lan.is_local(d.src_hi, d.src_lo)
        dst_local = self.lan.is_local(d.dst_hi, d.dst_lo)
        dev = np.uint64(self.dev)
        up = ip & (d.src_mac == dev) & src_local & ~dst_local
        down = ip & (d.dst_mac == dev) & ~src_local & dst_local
        rows = np.flatnonzero(up | down)
        transport = (d.proto[rows] == TCP) | (d.proto[rows] == UDP)
        self.other_proto += int((~transport).sum())
        for i in rows[transport].tolist():
            self._packet(d, batch, i, bool(up[i]))

    def _packet(self, d: Decoded, batch: FrameBatch, i: int, up: bool) -> None:
        self.count += 1
        ts = float(d.ts[i])
        proto = int(d.proto[i])
        if up:
            remote, rport, lport = (
                ip_str(d.dst_hi[i], d.dst_lo[i]),
                int(d.dport[i]),
                int(d.sport[i]),
            )
        else:
            remote, rport, lport = (
                ip_str(d.src_hi[i], d.src_lo[i]),
                int(d.sport[i]),
                int(d.dport[i]),
            )
        off, cap, plen = int(d.payload_off[i]), int(d.payload_cap[i]), int(d.payload_len[i])
        payload = batch.buf[off : off + cap]
        if proto == UDP and rport == 53:
            self._dns(ts, up, payload)
            return
        key = (proto, remote, rport, lport)
        flags = int(d.tcp_flags[i]) if proto == TCP else 0
        conn = self._conn(key, ts, up, flags)
        if flags & (_FIN | _RST) and conn.end is None:
            conn.end = ts
        if plen <= 0:
            return
        if proto == TCP:
            seq = _tcp_seq(
                batch.buf, int(batch.offset[int(i)]), off, int(d.sport[i]), int(d.dport[i])
            )
            if seq is not None:
                if seq in conn.seen[up]:
                    self.retrans += 1
                    return
                conn.seen[up].add(seq)
            if self._handshake(conn, up, payload, ts):
                return
        conn.steps.append((ts, up, plen))

    def _conn(self, key: tuple[int, str, int, int], ts: float, up: bool, flags: int) -> _Conn:
        chain = self.conns.setdefault(key, [])
        syn = up and flags & _SYN and not flags & _ACK
        if not chain or (syn and (chain[-1].steps or chain[-1].end is not None)):
            chain.append(_Conn(key, len(chain)))
        conn = chain[-1]
        if conn.first is None:
            conn.first = ts
        if syn and conn.syn is None:
            conn.syn = ts
        return conn

    def _handshake(self, conn: _Conn, up: bool, payload: bytes, ts: float) -> bool:
        """Whether this segment is part of the original TLS handshake (not replayed)."""
        if up and not conn.seen_up_payload:
            conn.seen_up_payload = True
            if len(payload) >= 6 and payload[0] == _TLS_HANDSHAKE and payload[5] == 1:
                conn.tls = conn.in_handshake = True
                try:
                    conn.sni = client_hello_sni(payload)
                except MalformedPayload as e:
                    self._bad(f"ClientHello at t={ts:.6f}: {e}")
        if not conn.in_handshake:
            return False
        if up and payload[:1] == bytes([_TLS_APPDATA]):
            conn.in_handshake = False
            return False
        if self._in_range(ts):
            conn.handshake_in_range += 1
        return True

    def _dns(self, ts: float, up: bool, payload: bytes) -> None:
        try:
            msg = parse_dns(payload)
        except MalformedPayload as e:
            self._bad(f"DNS at t={ts:.6f}: {e}")
            return
        if up and not msg.is_response:
            self.queries.extend(
                (ts, name.lower().rstrip("."), qtype) for name, qtype in msg.questions
            )
        elif not up and msg.is_response and (self.hi is None or ts < self.hi):
            for addr, name in resolve_chain(msg):
                names = self.ip_names.setdefault(addr, [])
                if name not in names:
                    names.append(name)

    def _in_range(self, ts: float) -> bool:
        return ts >= self.lo and (self.hi is None or ts < self.hi)

    def _bad(self, msg: str) -> None:
        if len(self.bad) < 20:
            self.bad.append(msg)


def _tcp_seq(buf: bytes, frame_off: int, payload_off: int, sport: int, dport: int) -> int | None:
    """The sequence number of the TCP header that ends at ``payload_off``: the header length is
    found by trying each legal one (20..60) against its own data-offset field and the ports."""
    for hlen in range(20, 64, 4):
        p = payload_off - hlen
        if p < frame_off:
            return None
        sp, dp, seq, _ack, doff = struct.unpack_from("!HHIIB", buf, p)
        if sp == sport and dp == dport and doff >> 4 == hlen // 4:
            return int(seq)
    return None


# -- the plan --------------------------------------------------------------------------------


def plan_replay(
    path: str | os.PathLike[str],
    device_mac: str,
    *,
    start: float = 0.0,
    end: float | None = None,
    max_seconds: float | None = None,
    time_scale: float = 1.0,
    known_addresses: dict[str, str] | None = None,
    pool: tuple[str, str] = LAB_POOL,
    lan: list[str] | None = None,
) -> ReplayPlan:
    """Plan the replay of ``device_mac``'s internet traffic in ``path``.

    ``start``/``end``: seconds after the capture's first packet (``end`` None: to the last);
    ``max_seconds`` caps the range's length; ``time_scale`` stretches (> 1) or compresses (< 1)
    every time. ``known_addresses`` maps names to lab addresses (the lab's vendor hosts);
    ``lan`` lists the capture's home networks (default: the private ranges).
    Raises ValueError for a bad MAC, range or scale, or a device with no internet traffic there;
    CaptureFormatError for a file that is not a capture.
    """
    dev = parse_mac(device_mac)
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"bad time range: start={start}, end={end} (need 0 <= start < end)")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    reader = open_capture(path)
    rd: _Reader | None = None
    for batch in reader:
        if len(batch) == 0:
            continue
        if rd is None:
            t0 = float(batch.ts.min())
            stop = None if end is None else t0 + end
            if max_seconds is not None:
                stop = (
                    t0 + start + max_seconds
                    if stop is None
                    else min(stop, t0 + start + max_seconds)
                )
            rd = _Reader(dev, t0 + start, stop, LanClassifier(lan))
        rd.feed(batch)
    if rd is None or rd.first_ts is None or rd.last_ts is None:
        raise ValueError(f"{os.fspath(path)}: no packets in the capture")
    lo = rd.lo
    hi = rd.hi if rd.hi is not None else rd.last_ts + 1e-6
    return _build(rd, os.fspath(path), device_mac.lower(), lo, hi, time_scale,
                  known_addresses or {}, pool, [f"byte {p.offset}: {p.message}"
                                                for p in reader.report.problems])  # fmt: skip


def _build(
    rd: _Reader,
    source: str,
    mac: str,
    lo: float,
    hi: float,
    scale: float,
    known: dict[str, str],
    pool: tuple[str, str],
    problems: list[str],
) -> ReplayPlan:
    def rel(t: float) -> float:
        return round((t - lo) * scale, 6)

    def inside(t: float | None) -> bool:
        return t is not None and lo <= t < hi

    def rel_in(t: float | None) -> float | None:
        return rel(t) if t is not None and lo <= t < hi else None

    kept: list[tuple[float, _Conn]] = []
    for chain in rd.conns.values():
        for c in chain:
            if c.end is not None and c.end < lo:
                continue
            in_range = [s for s in c.steps if inside(s[0])]
            if in_range or inside(c.syn):
                first = c.syn if inside(c.syn) else in_range[0][0]
                assert first is not None
                kept.append((first, c))
    if not kept:
        base = rd.first_ts or lo
        raise ValueError(
            f"{source}: device {mac} has no internet traffic between {lo - base:.1f} s and "
            f"{hi - base:.1f} s ({rd.count} of its TCP/UDP packets in the file)"
        )
    kept.sort(key=lambda fc: (fc[0], fc[1].key))
    sni_names: dict[str, list[str]] = {}
    for _, c in kept:
        if c.sni:
            sni_names.setdefault(c.key[1], []).append(c.sni)
    addresses = _assign([c.key[1] for _, c in kept], rd.ip_names, sni_names, known, pool)
    conns: list[Connection] = []
    steps: list[Step] = []
    for cid, (_, c) in enumerate(kept):
        proto, remote, rport, lport = c.key
        conns.append(Connection(
            id=cid, proto="tcp" if proto == TCP else "udp", remote_ip=addresses[remote],
            remote_port=rport, local_port=lport, original_ip=remote,
            start=rel_in(c.syn), end=rel_in(c.end),
            tls=c.tls, sni=c.sni, handshake_segments=c.handshake_in_range,
        ))  # fmt: skip
        steps.extend(Step(rel(t), cid, "up" if up else "down", n) for t, up, n in c.steps
                     if inside(t))  # fmt: skip
    steps.sort(key=lambda s: (s.t, s.conn_id))
    dns_names: dict[str, str] = {}
    for ip, names in (*rd.ip_names.items(), *sni_names.items()):
        if ip in addresses:
            for name in names:
                dns_names.setdefault(name, addresses[ip])
    dns = [DnsQuery(rel(t), name, qtype) for t, name, qtype in rd.queries if inside(t)]
    asked = {q.name for q in dns}
    before = [DnsQuery(None, name, 1) for name in dns_names if name not in asked]
    notes = _notes(rd, kept, problems)
    return ReplayPlan(
        source=source, device_mac=mac, origin=lo, duration=rel(hi), time_scale=scale,
        connections=conns, steps=steps, dns=before + dns, addresses=addresses,
        dns_names=dns_names, notes=notes,
    )  # fmt: skip


def _assign(
    ips: list[str],
    ip_names: dict[str, list[str]],
    sni_names: dict[str, list[str]],
    known: dict[str, str],
    pool: tuple[str, str],
) -> dict[str, str]:
    first, last = (int(ipaddress.IPv4Address(a)) for a in pool)
    taken = set(known.values())
    nxt = first
    out: dict[str, str] = {}
    for ip in ips:
        if ip in out:
            continue
        for name in (*ip_names.get(ip, ()), *sni_names.get(ip, ())):
            addr = known.get(name)
            if addr is not None and addr not in out.values():
                out[ip] = addr
                break
        else:
            while nxt <= last and str(ipaddress.IPv4Address(nxt)) in taken:
                nxt += 1
            if nxt > last:
                n = len(set(ips))
                raise ValueError(
                    f"{n} remote hosts in the range but the lab pool {pool[0]}-{pool[1]} holds "
                    f"{last - first + 1}: choose a shorter time range"
                )
            out[ip] = str(ipaddress.IPv4Address(nxt))
            nxt += 1
    return out


def _notes(rd: _Reader, kept: list[tuple[float, _Conn]], problems: list[str]) -> list[str]:
    notes = list(problems)
    if rd.retrans:
        notes.append(f"{rd.retrans} retransmitted TCP segments left out (the kernel retransmits)")
    hs = sum(c.handshake_in_range for _, c in kept)
    if hs:
        notes.append(f"{hs} original TLS handshake segments left out (the replay's own handshake)")
    if rd.other_proto:
        notes.append(f"{rd.other_proto} non-TCP/UDP packets (ICMP, ...) of the device not replayed")
    v6 = {c.key[1] for _, c in kept if ":" in c.key[1]}
    if v6:
        notes.append(f"{len(v6)} IPv6 remote hosts replayed over IPv4")
    return notes + rd.bad
