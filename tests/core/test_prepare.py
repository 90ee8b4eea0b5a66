"""prepare() against a plain per-row reference: same arrays, same dtypes, same row order.

prepare works per run of consecutive rows with equal keys; the reference below groups every
row on its own (the straightforward way), so any batch where the two differ is a bug in the
cutting into runs. The batches mix directions, LAN-only and internet-only traffic, IPv6, frames
without MACs, multicast, TCP/UDP/ICMP, media-sized and small payloads and timestamps that step
back and cross second and bin edges, in long and short runs.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet

from spyglass.core.aggregate import group, mix
from spyglass.core.capfile import open_capture
from spyglass.core.decode import decode
from spyglass.core.dnsdigest import DnsDigester
from spyglass.core.frames import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch
from spyglass.core.lan import LanClassifier
from spyglass.core.prepare import Prepared, PrepSettings, prepare, take_rows
from spyglass.core.slowpath import dns_rows, select_rows

_S40 = np.uint64(40)


def _reference(batch: FrameBatch, lan: LanClassifier, s: PrepSettings) -> Prepared:
    """Every grouping over all of its rows, with np.unique on per-row hashes."""
    d = decode(batch)
    ip = (d.ipver > 0) & ~d.malformed
    sl, dl = lan.is_local(d.src_hi, d.src_lo), lan.is_local(d.dst_hi, d.dst_lo)
    up, down = ip & sl & ~dl, ip & ~sl & dl
    slow = select_rows(d, np.frombuffer(batch.buf, np.uint8), up)
    is_dns = dns_rows(d, slow)
    slow_d, slow_batch = take_rows(d, batch, slow[~is_dns])
    dg = DnsDigester().digest(d, batch, slow[is_dns])
    e64, eu = np.zeros(0, np.int64), np.zeros(0, np.uint64)
    p = Prepared(
        len(d), int(d.wirelen.sum()), int(d.malformed.sum()), int((~ip).sum()),
        int((ip & sl & dl).sum()), float(d.ts.min()), float(d.ts.max()), slow_d, slow_batch,
        slow[~is_dns], dg,
        eu, eu, eu, np.zeros(0), np.zeros(0),
        eu, eu, eu, eu, eu, eu, np.zeros(0, np.uint8), np.zeros(0, np.uint16), e64, e64, e64, e64,
        np.zeros(0), np.zeros(0), e64, e64, e64, e64, e64, e64, eu, e64, e64,
        np.zeros(0, np.bool_), e64, e64, e64, e64, e64, e64,
    )
    unicast = ((d.src_mac >> _S40) & np.uint64(1)) == 0
    rows = np.flatnonzero(ip & sl & (d.src_mac != 0) & unicast)
    if rows.size:
        _, g = group(mix(d.src_mac[rows], d.src_hi[rows], d.src_lo[rows]))
        f = rows[g.first]
        p.dev_mac, p.dev_hi, p.dev_lo = d.src_mac[f], d.src_hi[f], d.src_lo[f]
        p.dev_first, p.dev_last = g.min(d.ts[rows]), g.max(d.ts[rows])
    dev_mac = np.where(up, d.src_mac, d.dst_mac)
    rows = np.flatnonzero((up | down) & (((dev_mac >> _S40) & np.uint64(1)) == 0))
    if not rows.size:
        return p
    u = up[rows]
    rem_hi = np.where(u, d.dst_hi[rows], d.src_hi[rows])
    rem_lo = np.where(u, d.dst_lo[rows], d.src_lo[rows])
    loc_hi = np.where(u, d.src_hi[rows], d.dst_hi[rows])
    loc_lo = np.where(u, d.src_lo[rows], d.dst_lo[rows])
    mac = dev_mac[rows]
    dev = np.where(mac == 0, mix(loc_hi, loc_lo) | np.uint64(1 << 63), mac)
    proto = d.proto[rows]
    rport = np.where(u, d.dport[rows], d.sport[rows])
    lport = np.where(u, d.sport[rows], d.dport[rows])
    ts = d.ts[rows]
    size = d.wirelen[rows].astype(np.int64)
    up_i = u.astype(np.int64)
    size_up = size * up_i
    fkey = mix(dev, rem_hi, rem_lo, proto, rport)
    p.fl_hash, g = group(fkey)
    f = g.first
    p.fl_mac, p.fl_loc_hi, p.fl_loc_lo = mac[f], loc_hi[f], loc_lo[f]
    p.fl_rem_hi, p.fl_rem_lo, p.fl_proto, p.fl_port = rem_hi[f], rem_lo[f], proto[f], rport[f]
    p.fl_pu, p.fl_pd = g.sum(up_i), g.sum(1 - up_i)
    p.fl_bu, p.fl_bd = g.sum(size_up), g.sum(size - size_up)
    p.fl_first, p.fl_last = g.min(ts), g.max(ts)
    flow = g.inverse
    sec = ts.astype(np.int64)
    _, sg = group(mix(flow, sec))
    p.se_flow, p.se_sec = flow[sg.first], sec[sg.first]
    p.se_bu, p.se_bd, p.se_pu = sg.sum(size_up), sg.sum(size - size_up), sg.sum(up_i)
    p.se_pd = sg.count() - p.se_pu
    t = np.flatnonzero((proto == 6) | (proto == 17))
    if not t.size:
        return p
    pl = d.payload_len[rows][t]
    media = u[t] & (pl >= s.media_min)
    p.co_hash, cg = group(mix(fkey[t], lport[t]))
    p.co_flow, p.co_lport = flow[t[cg.first]], lport[t[cg.first]].astype(np.int64)
    p.co_media = cg.sum(media) > 0
    co = cg.inverse
    b = np.floor(ts[t] * s.bins_per_s).astype(np.int64)
    _, bg = group(mix(co, b))
    m = media.astype(np.int64)
    p.bi_conn, p.bi_bin = co[bg.first], b[bg.first]
    p.bi_mp, p.bi_mb = bg.sum(m), bg.sum(pl.astype(np.int64) * m)
    p.bi_ub, p.bi_db = bg.sum(size_up[t]), bg.sum((size - size_up)[t])
    return p


def _assert_same(a: object, b: object, where: str = "") -> None:
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        assert a.shape == b.shape and np.array_equal(a, b), where
    else:
        assert type(a) is type(b) and a == b, (where, a, b)


DEV = ["68:db:f5:00:00:01", "68:db:f5:00:00:02", "00:11:22:33:44:55"]
ROUTER = "c0:ff:ee:00:00:01"
LOCAL4 = ["192.168.1.20", "192.168.1.21", "10.0.0.7"]
REMOTE4 = ["52.94.233.109", "17.174.1.5", "8.8.8.8"]
LOCAL6, REMOTE6 = "fd00::20", "2600:1f18::5"


def _groups() -> list[list[tuple[int, Packet]]]:
    """(linktype, frame) groups: frames of a group differ in one key or in direction, so runs
    of a group's frames test that every key cuts the runs where it changes."""
    groups: list[list[tuple[int, Packet]]] = []
    for i, (mac, loc) in enumerate(zip(DEV, LOCAL4, strict=True)):
        for rem in REMOTE4[: 2 + (i == 0)]:
            group: list[tuple[int, Packet]] = []
            port = 40000 + i
            # TCP and UDP on the same ports: only the protocol tells the flows apart.
            for l4 in (TCP(sport=port, dport=443, flags="PA"), UDP(sport=port, dport=443)):
                back = l4.__class__(sport=443, dport=port)
                for size in (20, 99, 100, 900):
                    pay = bytes(size)
                    sent = Ether(src=mac, dst=ROUTER) / IP(src=loc, dst=rem) / l4 / pay
                    got = Ether(src=ROUTER, dst=mac) / IP(src=rem, dst=loc) / back / pay
                    group += [(1, sent), (1, got)]
            groups.append(group)
    up = Ether(src=DEV[0], dst=ROUTER) / IP(src=LOCAL4[0], dst=REMOTE4[0])
    down = Ether(src=ROUTER, dst=DEV[0]) / IP(src=REMOTE4[0], dst=LOCAL4[0])
    groups.append([  # one key differs from the first frame's
        (1, up / TCP(sport=1000, dport=443) / bytes(200)),
        (1, up / TCP(sport=1001, dport=443) / bytes(200)),  # local port
        (1, up / TCP(sport=1000, dport=444) / bytes(200)),  # remote port
        (1, down / TCP(sport=443, dport=1000) / bytes(200)),  # direction
        (1, Ether(src=DEV[1], dst=ROUTER) / IP(src=LOCAL4[0], dst=REMOTE4[0])  # MAC
         / TCP(sport=1000, dport=443) / bytes(200)),
        (1, Ether(src=DEV[0], dst=ROUTER) / IP(src=LOCAL4[1], dst=REMOTE4[0])  # local address
         / TCP(sport=1000, dport=443) / bytes(200)),
        (1, Ether(src=DEV[0], dst=ROUTER) / IP(src=LOCAL4[0], dst=REMOTE4[1])  # remote address
         / TCP(sport=1000, dport=443) / bytes(200)),
        # Ports 0: a well-formed header, and a malformed one (data offset 4) whose addresses,
        # protocol and (zero) ports are those of the good one: only "malformed" differs.
        (1, up / TCP(sport=0, dport=0) / bytes(10)),
        (1, up / TCP(sport=7, dport=7, dataofs=4) / bytes(10)),
    ])
    a6, b6 = Ether(src=DEV[0], dst=ROUTER), Ether(src=ROUTER, dst=DEV[0])
    groups.append([  # IPv6 addresses that differ in their high or low word only
        (1, a6 / IPv6(src=LOCAL6, dst=REMOTE6) / TCP(sport=1234, dport=443) / bytes(300)),
        (1, b6 / IPv6(src=REMOTE6, dst=LOCAL6) / TCP(sport=443, dport=1234) / bytes(40)),
        (1, a6 / IPv6(src="fd01::20", dst=REMOTE6) / TCP(sport=1234, dport=443) / bytes(300)),
        (1, a6 / IPv6(src="fd00::21", dst=REMOTE6) / TCP(sport=1234, dport=443) / bytes(300)),
        (1, a6 / IPv6(src=LOCAL6, dst="2600:1f19::5") / TCP(sport=1234, dport=443) / bytes(3)),
        (1, a6 / IPv6(src=LOCAL6, dst="2600:1f18::6") / TCP(sport=1234, dport=443) / bytes(3)),
        (1, a6 / IPv6(src="fe80::1", dst="ff02::fb") / UDP(sport=5353, dport=5353) / b"mdns"),
    ])
    # Raw IP: no MACs, devices keyed by their address; two devices behind one remote port.
    groups.append([
        (LINKTYPE_RAW, IP(src=LOCAL4[0], dst=REMOTE4[1]) / UDP(sport=7, dport=9) / bytes(150)),
        (LINKTYPE_RAW, IP(src=REMOTE4[1], dst=LOCAL4[0]) / UDP(sport=9, dport=7) / bytes(10)),
        (LINKTYPE_RAW, IP(src=LOCAL4[1], dst=REMOTE4[1]) / UDP(sport=7, dport=9) / bytes(150)),
    ])
    eth = Ether(src=DEV[1], dst=ROUTER)
    groups.append([  # not flows, or not only
        (1, eth / IP(src=LOCAL4[1], dst=REMOTE4[0]) / ICMP() / bytes(56)),
        (1, Ether(src=ROUTER, dst=DEV[1]) / IP(src=REMOTE4[0], dst=LOCAL4[1]) / ICMP()),
        (1, eth / IP(src=LOCAL4[1], dst=LOCAL4[0]) / UDP(sport=5353, dport=5353) / bytes(30)),
        (1, Ether(src=DEV[0], dst=DEV[1]) / IP(src=LOCAL4[0], dst=LOCAL4[1])
         / UDP(sport=5353, dport=5353) / bytes(30)),
        (1, eth / IP(src=LOCAL4[1], dst="224.0.0.251") / UDP(sport=5353, dport=5353) / b"m"),
        (1, Ether(src="01:00:5e:00:00:fb", dst=DEV[0]) / IP(src=REMOTE4[2], dst=LOCAL4[0])
         / UDP(sport=53, dport=5353) / b"x"),
        (1, Ether(src=DEV[2], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=LOCAL4[2], pdst=LOCAL4[0])),
        (1, Ether(src=ROUTER, dst=DEV[2]) / IP(src=REMOTE4[0], dst=REMOTE4[1]) / TCP() / b"t"),
        (1, Ether(src=DEV[2], dst=ROUTER) / Dot1Q(vlan=5) / IP(src=LOCAL4[2], dst=REMOTE4[2])
         / TCP(sport=999, dport=80) / bytes(200)),
        (1, Ether(src="00:00:00:00:00:00", dst=ROUTER) / IP(src=LOCAL4[0], dst=REMOTE4[0])
         / TCP(sport=1, dport=2) / b"zero mac"),
    ])
    return groups


def _batch(rng: random.Random, n: int, mean_run: float) -> FrameBatch:
    groups = [[(lt, bytes(p)) for lt, p in g] for g in _groups()]
    frames: list[tuple[int, bytes]] = []
    while len(frames) < n:
        g = rng.choice(groups)
        i = rng.randrange(len(g))
        for _ in range(max(1, int(rng.expovariate(1 / mean_run)))):
            if rng.random() < 0.3:
                i = rng.randrange(len(g))
            frames.append(g[i])
    frames = frames[:n]
    buf = b"".join(f for _, f in frames)
    cap = np.array([len(f) for _, f in frames], np.int32)
    off = np.zeros(n, np.int64)
    np.cumsum(cap[:-1], out=off[1:])
    # Mostly forward in steps of a few ms, now and then back a little; from just below a
    # whole second so that seconds and bins turn over.
    steps = np.array([rng.choice((0.0, 0.0004, 0.003, 0.05, -0.002)) for _ in range(n)])
    ts = 1_700_000_000.98 + np.cumsum(steps)
    lt = np.array([t for t, _ in frames], np.uint16)
    return FrameBatch(buf, off, cap, cap + 4, ts, lt)  # wire: as if the FCS were cut off


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mean_run", [1.0, 4.0, 40.0])
def test_prepare_matches_per_row_reference(seed: int, mean_run: float) -> None:
    rng = random.Random(seed * 100 + int(mean_run))
    batch = _batch(rng, 3000, mean_run)
    for lan_spec in (None, ("192.168.1.0/24", "fd00::/8")):
        lan = LanClassifier(lan_spec)
        for s in (PrepSettings(lan_spec, 100, 10), PrepSettings(lan_spec, 0, 4)):
            _assert_same(prepare(batch, lan, s), _reference(batch, lan, s))


def test_single_row_and_no_flows() -> None:
    arp = bytes(Ether(src=DEV[0], dst="ff:ff:ff:ff:ff:ff") / ARP())
    one = FrameBatch(arp, np.zeros(1, np.int64), np.array([len(arp)], np.int32),
                     np.array([len(arp)], np.int32), np.array([5.5]),
                     np.array([LINKTYPE_ETHERNET], np.uint16))
    lan, s = LanClassifier(), PrepSettings(None, 100, 10)
    p = prepare(one, lan, s)
    _assert_same(p, _reference(one, lan, s))
    assert p.non_ip == 1 and p.fl_hash.size == 0


def test_real_captures(captures: Path) -> None:
    lan, s = LanClassifier(), PrepSettings(None, 100, 10)
    for path in sorted(captures.glob("*.pcap"))[::6]:
        for batch in open_capture(path, chunk_bytes=1 << 18):
            if len(batch):
                _assert_same(prepare(batch, lan, s), _reference(batch, lan, s), str(path))
