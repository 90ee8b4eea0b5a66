"""The stateless half of :meth:`Pipeline.feed`: one frame batch to compact per-batch aggregates.

Everything here is array work that depends on the batch alone (and the LAN and detector
settings): decode, direction, flow/series/100-ms-bin group sums, the devices' (MAC, IP) pairs and
the slow-path rows with their frames. What comes out is a few thousand numbers and a few KB of
frames per batch, so a file reader can run this in a second process and hand the results to the
process holding the state (dicts, detector, names), which is then all that the main core does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spyglass.core.aggregate import group, mix
from spyglass.core.decode import decode
from spyglass.core.frames import F64, I32, I64, U8, U16, U64, B, Decoded, FrameBatch
from spyglass.core.lan import LanClassifier
from spyglass.core.slowpath import select_rows

_NO_MAC_TAG = np.uint64(1 << 63)  # device keys of raw-IP captures (no MAC): hash of the IP
_MULTICAST = np.uint64(1)
_S40 = np.uint64(40)


@dataclass(frozen=True, slots=True)
class PrepSettings:
    """What :func:`prepare` needs besides the batch (picklable, for a worker process)."""

    lan: tuple[str, ...] | None
    media_min: int  # detector: smallest upstream payload that counts as media
    bins_per_s: int  # detector bins per second


@dataclass(slots=True)
class Prepared:
    """One batch, aggregated. Row order of every group is np.unique's (sorted key hashes)."""

    packets: int
    bytes: int
    malformed: int
    non_ip: int
    local_only: int
    t_first: float
    t_last: float
    # Slow-path rows only, with their whole frames copied into a small buffer of their own.
    slow_d: Decoded
    slow_batch: FrameBatch
    # Devices: one entry per (MAC, LAN IP) that sent IP from a LAN address.
    dev_mac: U64
    dev_hi: U64
    dev_lo: U64
    dev_first: F64
    dev_last: F64
    # Flows (device key, remote IP, protocol, remote port), with the first row's raw fields.
    fl_hash: U64
    fl_mac: U64
    fl_loc_hi: U64
    fl_loc_lo: U64
    fl_rem_hi: U64
    fl_rem_lo: U64
    fl_proto: U8
    fl_port: U16
    fl_pu: I64
    fl_pd: I64
    fl_bu: I64
    fl_bd: I64
    fl_first: F64
    fl_last: F64
    # Per-second series cells: (flow of the batch, second).
    se_flow: I64
    se_sec: I64
    se_bu: I64
    se_bd: I64
    se_pu: I64
    se_pd: I64
    # Connections (a flow plus the local port) of TCP/UDP rows.
    co_hash: U64
    co_flow: I64
    co_lport: I64
    co_media: B  # carried upstream media in this batch
    # 100-ms bins of every connection, in (connection, bin) hash order.
    bi_conn: I64
    bi_bin: I64
    bi_mp: I64
    bi_mb: I64
    bi_ub: I64
    bi_db: I64


def _empty_u64() -> U64:
    return np.zeros(0, np.uint64)


def _empty_i64() -> I64:
    return np.zeros(0, np.int64)


def take_rows(d: Decoded, batch: FrameBatch, rows: I64) -> tuple[Decoded, FrameBatch]:
    """The given rows as a batch of their own: frames copied into a fresh, compact buffer."""
    off = batch.offset[rows]
    cap = batch.caplen[rows]
    view = memoryview(batch.buf)
    buf = b"".join([view[o : o + c] for o, c in zip(off.tolist(), cap.tolist(), strict=True)])
    new_off: I64 = np.zeros(rows.size, np.int64)
    if rows.size > 1:
        np.cumsum(cap[:-1], out=new_off[1:])
    shift = new_off - off
    sub = FrameBatch(buf, new_off, cap, batch.wirelen[rows], batch.ts[rows], batch.linktype[rows])
    sd = Decoded(
        ts=d.ts[rows],
        wirelen=d.wirelen[rows],
        src_mac=d.src_mac[rows],
        dst_mac=d.dst_mac[rows],
        ethertype=d.ethertype[rows],
        vlan=d.vlan[rows],
        ipver=d.ipver[rows],
        src_hi=d.src_hi[rows],
        src_lo=d.src_lo[rows],
        dst_hi=d.dst_hi[rows],
        dst_lo=d.dst_lo[rows],
        proto=d.proto[rows],
        sport=d.sport[rows],
        dport=d.dport[rows],
        tcp_flags=d.tcp_flags[rows],
        payload_len=d.payload_len[rows],
        payload_off=d.payload_off[rows] + shift,
        payload_cap=d.payload_cap[rows],
        malformed=d.malformed[rows],
    )
    return sd, sub


class Preparer:
    """:func:`prepare` with the LAN classifier built once."""

    def __init__(self, settings: PrepSettings) -> None:
        self.settings = settings
        self.lan = LanClassifier(list(settings.lan) if settings.lan else None)

    def __call__(self, batch: FrameBatch) -> Prepared:
        return prepare(batch, self.lan, self.settings)


def prepare(batch: FrameBatch, lan: LanClassifier, settings: PrepSettings) -> Prepared:
    """Aggregate one non-empty batch (see :class:`Prepared`)."""
    d = decode(batch)
    ip = (d.ipver > 0) & ~d.malformed
    src_local = lan.is_local(d.src_hi, d.src_lo)
    dst_local = lan.is_local(d.dst_hi, d.dst_lo)
    up = ip & src_local & ~dst_local
    down = ip & ~src_local & dst_local
    arr = np.frombuffer(batch.buf, dtype=np.uint8)
    slow_d, slow_batch = take_rows(d, batch, select_rows(d, arr, up))
    p = Prepared(
        packets=len(d),
        bytes=int(d.wirelen.sum()),
        malformed=int(d.malformed.sum()),
        non_ip=int((~ip).sum()),
        local_only=int((ip & src_local & dst_local).sum()),
        t_first=float(d.ts.min()),
        t_last=float(d.ts.max()),
        slow_d=slow_d,
        slow_batch=slow_batch,
        dev_mac=_empty_u64(), dev_hi=_empty_u64(), dev_lo=_empty_u64(),
        dev_first=np.zeros(0), dev_last=np.zeros(0),
        fl_hash=_empty_u64(), fl_mac=_empty_u64(), fl_loc_hi=_empty_u64(),
        fl_loc_lo=_empty_u64(), fl_rem_hi=_empty_u64(), fl_rem_lo=_empty_u64(),
        fl_proto=np.zeros(0, np.uint8), fl_port=np.zeros(0, np.uint16),
        fl_pu=_empty_i64(), fl_pd=_empty_i64(), fl_bu=_empty_i64(), fl_bd=_empty_i64(),
        fl_first=np.zeros(0), fl_last=np.zeros(0),
        se_flow=_empty_i64(), se_sec=_empty_i64(), se_bu=_empty_i64(), se_bd=_empty_i64(),
        se_pu=_empty_i64(), se_pd=_empty_i64(),
        co_hash=_empty_u64(), co_flow=_empty_i64(), co_lport=_empty_i64(),
        co_media=np.zeros(0, np.bool_),
        bi_conn=_empty_i64(), bi_bin=_empty_i64(), bi_mp=_empty_i64(), bi_mb=_empty_i64(),
        bi_ub=_empty_i64(), bi_db=_empty_i64(),
    )
    _devices(p, d, ip & src_local)
    # A multicast/broadcast MAC is never a device (remote senders to 224.0.0.0/4 etc.).
    dev_mac = np.where(up, d.src_mac, d.dst_mac)
    unicast = ((dev_mac >> _S40) & _MULTICAST) == 0
    rows = np.flatnonzero((up | down) & unicast)
    if rows.size:
        _flows(p, d, rows, up[rows], settings)
    return p


def _devices(p: Prepared, d: Decoded, mask: B) -> None:
    """Every MAC that sends IP from a LAN address is a device; note its IPs."""
    unicast = ((d.src_mac >> _S40) & _MULTICAST) == 0
    rows = np.flatnonzero(mask & (d.src_mac != 0) & unicast)
    if not rows.size:
        return
    _, g = group(mix(d.src_mac[rows], d.src_hi[rows], d.src_lo[rows]))
    ts = d.ts[rows]
    first_rows = rows[g.first]
    p.dev_mac, p.dev_hi, p.dev_lo = (
        d.src_mac[first_rows], d.src_hi[first_rows], d.src_lo[first_rows]
    )
    p.dev_first, p.dev_last = g.min(ts), g.max(ts)


def _device_keys(mac: U64, loc_hi: U64, loc_lo: U64) -> U64:
    nomac = mac == 0
    if not nomac.any():
        return mac
    keys: U64 = np.where(nomac, mix(loc_hi, loc_lo) | _NO_MAC_TAG, mac)
    return keys


def _flows(p: Prepared, d: Decoded, rows: I64, is_up: B, s: PrepSettings) -> None:
    src_hi, src_lo = d.src_hi[rows], d.src_lo[rows]
    dst_hi, dst_lo = d.dst_hi[rows], d.dst_lo[rows]
    rem_hi = np.where(is_up, dst_hi, src_hi)
    rem_lo = np.where(is_up, dst_lo, src_lo)
    loc_hi = np.where(is_up, src_hi, dst_hi)
    loc_lo = np.where(is_up, src_lo, dst_lo)
    mac = np.where(is_up, d.src_mac[rows], d.dst_mac[rows])
    dev = _device_keys(mac, loc_hi, loc_lo)
    proto = d.proto[rows]
    sport, dport = d.sport[rows], d.dport[rows]
    rport = np.where(is_up, dport, sport)
    ts = d.ts[rows]
    size = d.wirelen[rows].astype(np.int64)
    up_i = is_up.astype(np.int64)
    down_i = 1 - up_i
    size_up = size * up_i
    size_down = size - size_up

    fkey = mix(dev, rem_hi, rem_lo, proto, rport)
    p.fl_hash, g = group(fkey)
    f0 = g.first
    p.fl_mac, p.fl_loc_hi, p.fl_loc_lo = mac[f0], loc_hi[f0], loc_lo[f0]
    p.fl_rem_hi, p.fl_rem_lo = rem_hi[f0], rem_lo[f0]
    p.fl_proto, p.fl_port = proto[f0], rport[f0]
    p.fl_pu, p.fl_pd = g.sum(up_i), g.sum(down_i)
    p.fl_bu, p.fl_bd = g.sum(size_up), g.sum(size_down)
    p.fl_first, p.fl_last = g.min(ts), g.max(ts)
    flow_of_row = g.inverse

    # Series are per (device, remote IP): flows of both protocols and all ports add up later.
    sec = ts.astype(np.int64)
    _, sg = group(mix(flow_of_row, sec))
    p.se_flow, p.se_sec = flow_of_row[sg.first], sec[sg.first]
    p.se_bu, p.se_bd = sg.sum(size_up), sg.sum(size_down)
    p.se_pu = sg.sum(up_i)
    p.se_pd = sg.count() - p.se_pu

    lport = np.where(is_up, sport, dport)
    _bins(p, fkey, flow_of_row, lport, proto, ts, size_up, size_down, up_i,
          d.payload_len[rows], s)


def _bins(
    p: Prepared, fkey: U64, flow_of_row: I64, lport: U16, proto: U8, ts: F64, size_up: I64,
    size_down: I64, up_i: I64, payload_len: I32, s: PrepSettings,
) -> None:
    transport = (proto == 6) | (proto == 17)
    r = np.flatnonzero(transport)
    if not r.size:
        return
    media = (up_i[r] == 1) & (payload_len[r] >= s.media_min)
    p.co_hash, cg = group(mix(fkey[r], lport[r]))
    c0 = r[cg.first]
    p.co_flow, p.co_lport = flow_of_row[c0], lport[c0].astype(np.int64)
    p.co_media = cg.sum(media) > 0
    # Bins of every connection: the stateful side keeps those of connections that carry media
    # now or that the detector watches (in a real batch nearly all bins are of such).
    co = cg.inverse
    b = np.floor(ts[r] * s.bins_per_s).astype(np.int64)
    _, g = group(mix(co, b))
    m = media.astype(np.int64)
    p.bi_conn, p.bi_bin = co[g.first], b[g.first]
    p.bi_mp = g.sum(m)
    p.bi_mb = g.sum(payload_len[r].astype(np.int64) * m)
    p.bi_ub = g.sum(size_up[r])
    p.bi_db = g.sum(size_down[r])
