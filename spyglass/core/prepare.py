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

from spyglass.core.aggregate import group, mix, run_sums, runs
from spyglass.core.decode import decode
from spyglass.core.dnsdigest import DnsDigest, DnsDigester
from spyglass.core.frames import F64, I64, U8, U16, U64, B, Decoded, FrameBatch
from spyglass.core.lan import LanClassifier
from spyglass.core.slowpath import dns_rows, select_rows

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
    # Slow-path rows only, with their whole frames copied into a small buffer of their own; but
    # DNS answers, summed up.
    slow_d: Decoded
    slow_batch: FrameBatch
    slow_at: I64  # the rows of slow_d in the batch
    dns: DnsDigest
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
    """:func:`prepare` with the LAN classifier built once, and the DNS answer memo kept from
    batch to batch (of one process)."""

    def __init__(self, settings: PrepSettings, lan: LanClassifier | None = None) -> None:
        """``lan``: the classifier of ``settings.lan``, when the caller has built it already."""
        self.settings = settings
        if lan is None:
            lan = LanClassifier(list(settings.lan) if settings.lan else None)
        self.lan = lan
        self.dns = DnsDigester()

    def __call__(self, batch: FrameBatch) -> Prepared:
        return prepare(batch, self.lan, self.settings, self.dns)


def prepare(
    batch: FrameBatch, lan: LanClassifier, settings: PrepSettings,
    dns: DnsDigester | None = None,
) -> Prepared:
    """Aggregate one non-empty batch (see :class:`Prepared`). ``dns`` remembers DNS answers
    from earlier batches (a fresh one by default): the result is the same either way."""
    d = decode(batch)
    n = len(d)
    ip = (d.ipver > 0) & ~d.malformed
    src_local = lan.is_local(d.src_hi, d.src_lo)
    dst_local = lan.is_local(d.dst_hi, d.dst_lo)
    up = ip & src_local & ~dst_local
    arr = np.frombuffer(batch.buf, dtype=np.uint8)
    rows = select_rows(d, arr, up)
    is_dns = dns_rows(d, rows)
    digest = (dns or DnsDigester()).digest(d, batch, rows[is_dns])
    slow_at = rows[~is_dns]
    slow_d, slow_batch = take_rows(d, batch, slow_at)
    r = _Runs(d, ip, src_local, dst_local, up, settings)
    ip_r = ip[r.heads]
    p = Prepared(
        packets=n,
        bytes=int(r.bytes.sum()),
        malformed=int(d.malformed.sum()),
        non_ip=n - int(r.count[ip_r].sum()),
        local_only=int(r.count[ip_r & r.same & r.any_local].sum()),
        t_first=float(r.t_min.min()),
        t_last=float(r.t_max.max()),
        slow_d=slow_d,
        slow_batch=slow_batch,
        slow_at=slow_at,
        dns=digest,
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
    _devices(p, r, ip_r)
    # Between the LAN and the rest, in either direction; a multicast/broadcast MAC is never a
    # device (remote senders to 224.0.0.0/4 etc.).
    unicast = ((r.a_mac >> _S40) & _MULTICAST) == 0
    sel = np.flatnonzero(ip_r & ~r.same & unicast)
    if sel.size:
        _flows(p, r, sel)
    return p


class _Runs:
    """The batch cut into runs of consecutive rows that share every key prepare groups by.

    Rows are oriented: side "a" is the LAN side of a row between the LAN and the rest (its
    source going up, its destination coming down), else the source; "b" is the other side.
    A flow's packets both ways then form one run, and the run's keys are its first row's.
    What differs between the rows of a run (direction, sizes, times) is summed per run.
    """

    def __init__(self, d: Decoded, ip: B, src_local: B, dst_local: B, up: B,
                 s: PrepSettings) -> None:
        n = len(d)
        flip = dst_local & ~src_local
        a_mac = np.where(flip, d.dst_mac, d.src_mac)
        a_lo = np.where(flip, d.dst_lo, d.src_lo)
        b_lo = np.where(flip, d.src_lo, d.dst_lo)
        a_port = np.where(flip, d.dport, d.sport)
        b_port = np.where(flip, d.sport, d.dport)
        sec = d.ts.astype(np.int64)
        tbin = np.floor(d.ts * s.bins_per_s).astype(np.int64)
        # Whether a side is local is a function of its address, so equal addresses also mean
        # equal LAN sides: no need to compare those.
        keys = [ip, a_lo, b_lo, a_port, b_port, d.proto, tbin, sec, a_mac]
        if d.src_hi.any() or d.dst_hi.any():
            a_hi = np.where(flip, d.dst_hi, d.src_hi)
            b_hi = np.where(flip, d.src_hi, d.dst_hi)
            keys += [a_hi, b_hi]
        else:  # all IPv4 (or ::, ::1): the high words are all zero
            a_hi = b_hi = d.src_hi
        h = self.heads = runs(*keys)
        self.count: I64 = np.diff(h, append=n)
        src_l, dst_l = src_local[h], dst_local[h]
        self.same, self.any_local = src_l == dst_l, src_l | dst_l
        self.a_mac, self.a_hi, self.a_lo = a_mac[h], a_hi[h], a_lo[h]
        self.b_hi, self.b_lo = b_hi[h], b_lo[h]
        self.a_port, self.b_port, self.proto = a_port[h], b_port[h], d.proto[h]
        self.sec, self.tbin = sec[h], tbin[h]
        self.up = run_sums(up, h)  # packets
        self.bytes = run_sums(d.wirelen, h)
        self.bytes_up = run_sums(d.wirelen * up, h)
        ts = d.ts
        self.t_min: F64 = np.minimum.reduceat(ts, h)
        self.t_max: F64 = np.maximum.reduceat(ts, h)
        # Times of the rows sent from the LAN side (a device's own packets).
        from_lan = ip & src_local
        self.a_min: F64 = np.minimum.reduceat(np.where(from_lan, ts, np.inf), h)
        self.a_max: F64 = np.maximum.reduceat(np.where(from_lan, ts, -np.inf), h)
        self.media_p: I64 | None = None
        self.media_b: I64 | None = None
        self._media = (d.payload_len, up, s.media_min)

    def media(self) -> tuple[I64, I64]:
        """Per run: upstream rows with at least media_min payload bytes, and those bytes."""
        if self.media_p is None or self.media_b is None:
            pl, up, least = self._media
            big = up & (pl >= least)
            self.media_p = run_sums(big, self.heads)
            self.media_b = run_sums(pl * big, self.heads)
        return self.media_p, self.media_b


def _devices(p: Prepared, r: _Runs, ip: B) -> None:
    """Every MAC that sends IP from a LAN address is a device; note its IPs."""
    # Runs with rows sent from a LAN address: all rows of a LAN-only run, the upstream ones of
    # a LAN-internet run (whose side a is then the source).
    sends = np.where(r.same, r.count, r.up)
    unicast = ((r.a_mac >> _S40) & _MULTICAST) == 0
    sel = np.flatnonzero(ip & r.any_local & (sends > 0) & (r.a_mac != 0) & unicast)
    if not sel.size:
        return
    mac, hi, lo = r.a_mac[sel], r.a_hi[sel], r.a_lo[sel]
    _, g = group(mix(mac, hi, lo))
    f0 = g.first
    p.dev_mac, p.dev_hi, p.dev_lo = mac[f0], hi[f0], lo[f0]
    p.dev_first, p.dev_last = g.min(r.a_min[sel]), g.max(r.a_max[sel])


def _device_keys(mac: U64, loc_hi: U64, loc_lo: U64) -> U64:
    nomac = mac == 0
    if not nomac.any():
        return mac
    keys: U64 = np.where(nomac, mix(loc_hi, loc_lo) | _NO_MAC_TAG, mac)
    return keys


def _flows(p: Prepared, r: _Runs, sel: I64) -> None:
    """Flows, series, connections and bins of the runs ``sel`` (between the LAN and the rest)."""
    mac, loc_hi, loc_lo = r.a_mac[sel], r.a_hi[sel], r.a_lo[sel]
    rem_hi, rem_lo = r.b_hi[sel], r.b_lo[sel]
    dev = _device_keys(mac, loc_hi, loc_lo)
    proto = r.proto[sel]
    rport = r.b_port[sel]
    count = r.count[sel]
    up_i = r.up[sel]
    down_i = count - up_i
    size_up = r.bytes_up[sel]
    size_down = r.bytes[sel] - size_up

    fkey = mix(dev, rem_hi, rem_lo, proto, rport)
    p.fl_hash, g = group(fkey)
    f0 = g.first
    p.fl_mac, p.fl_loc_hi, p.fl_loc_lo = mac[f0], loc_hi[f0], loc_lo[f0]
    p.fl_rem_hi, p.fl_rem_lo = rem_hi[f0], rem_lo[f0]
    p.fl_proto, p.fl_port = proto[f0], rport[f0]
    p.fl_pu, p.fl_pd = g.sum(up_i), g.sum(down_i)
    p.fl_bu, p.fl_bd = g.sum(size_up), g.sum(size_down)
    p.fl_first, p.fl_last = g.min(r.t_min[sel]), g.max(r.t_max[sel])
    flow_of_run = g.inverse

    # Series are per (device, remote IP): flows of both protocols and all ports add up later.
    sec = r.sec[sel]
    _, sg = group(mix(flow_of_run, sec))
    p.se_flow, p.se_sec = flow_of_run[sg.first], sec[sg.first]
    p.se_bu, p.se_bd = sg.sum(size_up), sg.sum(size_down)
    p.se_pu = sg.sum(up_i)
    p.se_pd = sg.sum(count) - p.se_pu

    t = np.flatnonzero((proto == 6) | (proto == 17))
    if not t.size:
        return
    lport = r.a_port[sel[t]]
    media_p, media_b = r.media()
    mp, mb = media_p[sel[t]], media_b[sel[t]]
    p.co_hash, cg = group(mix(fkey[t], lport))
    c0 = cg.first
    p.co_flow, p.co_lport = flow_of_run[t[c0]], lport[c0].astype(np.int64)
    p.co_media = cg.sum(mp) > 0
    # Bins of every connection: the stateful side keeps those of connections that carry media
    # now or that the detector watches (in a real batch nearly all bins are of such).
    co = cg.inverse
    b = r.tbin[sel[t]]
    _, bg = group(mix(co, b))
    p.bi_conn, p.bi_bin = co[bg.first], b[bg.first]
    p.bi_mp = bg.sum(mp)
    p.bi_mb = bg.sum(mb)
    p.bi_ub = bg.sum(size_up[t])
    p.bi_db = bg.sum(size_down[t])
