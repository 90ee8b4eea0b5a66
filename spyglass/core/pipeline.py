"""The streaming pipeline: frame batches in; devices, names, flows, series and uploads out.

The same object serves a pcap file and the live agent: feed it batches in capture order, call
:meth:`Pipeline.advance` when the clock moves without packets (live), :meth:`Pipeline.flush` at the
end. Per-packet work is array arithmetic; Python loops run per flow, per time bin and per
slow-path packet only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spyglass.core.aggregate import group, mix
from spyglass.core.decode import decode, ip_str, mac_str
from spyglass.core.detect import (
    ConnKey,
    DestinationHint,
    DetectorConfig,
    FlowKey,
    UploadDetector,
)
from spyglass.core.endpoints import classify
from spyglass.core.frames import U64, Decoded, FrameBatch
from spyglass.core.inventory import Inventory, NameBook, VendorLookup
from spyglass.core.lan import LanClassifier
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.core.slowpath import SlowPath

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp", 50: "esp"}
_NO_MAC_TAG = np.uint64(1 << 63)  # device keys of raw-IP captures (no MAC): hash of the IP
SERIES_SETTLE_S = 2  # a second is complete once the capture is this far past it


@dataclass(slots=True)
class PipelineStats:
    packets: int = 0
    bytes: int = 0
    malformed: int = 0  # frames whose headers could not be decoded
    non_ip: int = 0
    local_only: int = 0  # LAN-to-LAN and multicast: not counted in flows
    first_ts: float | None = None
    last_ts: float | None = None
    problems: list[str] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        *,
        lan: list[str] | None = None,
        vendor_lookup: VendorLookup | None = None,
        detector_config: DetectorConfig | None = None,
    ) -> None:
        self.lan = LanClassifier(lan)
        self.inventory = Inventory(vendor_lookup)
        self.names = NameBook()
        self.slow = SlowPath(self.inventory, self.names)
        self.detector = UploadDetector(self._hint, detector_config)
        self.stats = PipelineStats()
        self._media_min = self.detector.config.min_payload
        self._bins_per_s = round(1 / self.detector.config.bin_s)
        self._flows: dict[int, Flow] = {}
        self._flow_keys: dict[int, FlowKey] = {}
        self._conn_keys: dict[int, ConnKey] = {}
        self._dirty_flows: set[int] = set()
        self._series: dict[tuple[str, str, int], list[int]] = {}
        self._uploads: list[Upload] = []

    # -- public ------------------------------------------------------------------------
    def feed(self, batch: FrameBatch) -> list[Upload]:
        """Process one batch; returns the uploads that became final."""
        if len(batch) == 0:
            return []
        d = decode(batch)
        st = self.stats
        st.packets += len(d)
        st.bytes += int(d.wirelen.sum())
        st.malformed += int(d.malformed.sum())
        t_first, t_last = float(d.ts.min()), float(d.ts.max())
        st.first_ts = t_first if st.first_ts is None else min(st.first_ts, t_first)
        st.last_ts = t_last if st.last_ts is None else max(st.last_ts, t_last)

        ip = (d.ipver > 0) & ~d.malformed
        st.non_ip += int((~ip).sum())
        src_local = self.lan.is_local(d.src_hi, d.src_lo)
        dst_local = self.lan.is_local(d.dst_hi, d.dst_lo)
        up = ip & src_local & ~dst_local
        down = ip & ~src_local & dst_local
        st.local_only += int((ip & src_local & dst_local).sum())

        arr = np.frombuffer(batch.buf, dtype=np.uint8)
        self.slow.handle(d, batch, self.slow.select(d, arr, up))
        self._learn_devices(d, ip & src_local)

        # A multicast/broadcast MAC is never a device (remote senders to 224.0.0.0/4 etc.).
        dev_mac = np.where(up, d.src_mac, d.dst_mac)
        unicast = ((dev_mac >> np.uint64(40)) & np.uint64(1)) == 0
        rows = np.flatnonzero((up | down) & unicast)
        done: list[Upload] = []
        if rows.size:
            done = self._aggregate(d, rows, up[rows])
        done.extend(self.detector.advance(t_last))
        self._uploads.extend(done)
        return done

    def advance(self, now: float) -> list[Upload]:
        """The clock reached ``now`` with no packets (live capture): judge idle streams."""
        done = self.detector.advance(now)
        self._uploads.extend(done)
        return done

    def flush(self) -> list[Upload]:
        done = self.detector.flush()
        self._uploads.extend(done)
        return done

    def uploads(self) -> list[Upload]:
        return sorted(self._uploads, key=lambda u: u.start)

    def devices(self) -> list[Device]:
        return self.inventory.devices()

    def endpoint_names(self) -> list[EndpointName]:
        return self.names.entries()

    def flows(self) -> list[Flow]:
        for f in self._flows.values():
            f.remote_name = self.names.name_for(f.device_mac, f.remote_ip)
        return sorted(self._flows.values(), key=lambda f: (f.device_mac, -f.bytes_up))

    def changed_flows(self) -> list[Flow]:
        """Flows with traffic since the last call (running totals), for incremental writes."""
        out = []
        for h in self._dirty_flows:
            f = self._flows[h]
            f.remote_name = self.names.name_for(f.device_mac, f.remote_ip)
            out.append(f)
        self._dirty_flows.clear()
        return out

    def compact(self, max_cached: int = 20_000) -> None:
        """Bound the connection-key cache of a long live run (each TCP connection has a port)."""
        if len(self._conn_keys) > max_cached:
            self._conn_keys = {
                h: k for h, k in self._conn_keys.items() if self.detector.is_watching(k)
            }

    def drain_series(self, final: bool = False) -> list[SeriesPoint]:
        """Seconds that can no longer change (all of them when ``final``), oldest first."""
        if final or self.stats.last_ts is None:
            keys = list(self._series)
        else:
            settled = int(self.stats.last_ts) - SERIES_SETTLE_S
            keys = [k for k in self._series if k[2] < settled]
        out = []
        for k in keys:
            bu, bd, pu, pd = self._series.pop(k)
            out.append(SeriesPoint(k[0], k[1], k[2], bu, bd, pu, pd))
        out.sort(key=lambda p: p.second)
        return out

    # -- internals ---------------------------------------------------------------------
    def _hint(self, key: ConnKey) -> DestinationHint:
        mac, ip = key[0], key[1]
        name = self.names.name_for(mac, ip)
        info = classify(name)
        return DestinationHint(
            name=name,
            role=info.role,
            assistant=info.assistant or self.inventory.assistant(mac),
            device_is_speaker=self.inventory.is_speaker(mac),
        )

    def _learn_devices(self, d: Decoded, mask: np.ndarray) -> None:
        """Every MAC that sends IP from a LAN address is a device; note its IPs."""
        unicast = ((d.src_mac >> np.uint64(40)) & np.uint64(1)) == 0
        rows = np.flatnonzero(mask & (d.src_mac != 0) & unicast)
        if not rows.size:
            return
        _, g = group(mix(d.src_mac[rows], d.src_hi[rows], d.src_lo[rows]))
        ts = d.ts[rows]
        first, last = g.min(ts), g.max(ts)
        for j, i in enumerate(rows[g.first].tolist()):
            ip = ip_str(int(d.src_hi[i]), int(d.src_lo[i]))
            mac = mac_str(int(d.src_mac[i]))
            self.inventory.touch(mac, float(first[j]), float(last[j]))
            if not ip.startswith(("0.", "169.254.", "fe80:")):
                self.inventory.add_ip(mac, ip, float(last[j]))

    def _device_keys(self, mac: U64, loc_hi: U64, loc_lo: U64) -> U64:
        nomac = mac == 0
        if not nomac.any():
            return mac
        return np.where(nomac, mix(loc_hi, loc_lo) | _NO_MAC_TAG, mac)

    def _aggregate(self, d: Decoded, rows: np.ndarray, is_up: np.ndarray) -> list[Upload]:
        src_hi, src_lo = d.src_hi[rows], d.src_lo[rows]
        dst_hi, dst_lo = d.dst_hi[rows], d.dst_lo[rows]
        rem_hi = np.where(is_up, dst_hi, src_hi)
        rem_lo = np.where(is_up, dst_lo, src_lo)
        loc_hi = np.where(is_up, src_hi, dst_hi)
        loc_lo = np.where(is_up, src_lo, dst_lo)
        mac = np.where(is_up, d.src_mac[rows], d.dst_mac[rows])
        dev = self._device_keys(mac, loc_hi, loc_lo)
        proto = d.proto[rows]
        rport = np.where(is_up, d.dport[rows], d.sport[rows])
        ts = d.ts[rows]
        size = d.wirelen[rows].astype(np.int64)
        up_i = is_up.astype(np.int64)
        down_i = 1 - up_i

        fkey = mix(dev, rem_hi, rem_lo, proto, rport)
        uniq, g = group(fkey)
        pu, pd = g.sum(up_i), g.sum(down_i)
        bu, bd = g.sum(size * up_i), g.sum(size * down_i)
        first, last = g.min(ts), g.max(ts)
        first_rows = rows[g.first]
        keys: list[FlowKey] = []
        for j, h in enumerate(uniq.tolist()):
            key = self._flow_keys.get(h)
            if key is None:
                i = int(first_rows[j])
                key = self._make_key(d, i, bool(is_up[g.first[j]]))
                self._flow_keys[h] = key
            keys.append(key)
            f = self._flows.get(h)
            if f is None:
                f = Flow(key[0], key[1], key[2], key[3], first_seen=float(first[j]))
                self._flows[h] = f
            self._dirty_flows.add(h)
            f.packets_up += int(pu[j])
            f.packets_down += int(pd[j])
            f.bytes_up += int(bu[j])
            f.bytes_down += int(bd[j])
            f.last_seen = max(f.last_seen, float(last[j]))

        self._add_series(g.inverse, keys, ts, size, up_i)
        lport = np.where(is_up, d.sport[rows], d.dport[rows])
        return self._detect(fkey, g.inverse, keys, lport, proto, ts, size, up_i,
                            d.payload_len[rows])

    def _make_key(self, d: Decoded, i: int, up: bool) -> FlowKey:
        if up:
            mac_i, loc, rem, port = int(d.src_mac[i]), (d.src_hi[i], d.src_lo[i]), (
                d.dst_hi[i], d.dst_lo[i]), int(d.dport[i])
        else:
            mac_i, loc, rem, port = int(d.dst_mac[i]), (d.dst_hi[i], d.dst_lo[i]), (
                d.src_hi[i], d.src_lo[i]), int(d.sport[i])
        dev = mac_str(mac_i) if mac_i else "ip:" + ip_str(int(loc[0]), int(loc[1]))
        proto = int(d.proto[i])
        return (dev, ip_str(int(rem[0]), int(rem[1])), PROTO_NAMES.get(proto, str(proto)), port)

    def _add_series(
        self, flow_of_row: np.ndarray, keys: list[FlowKey], ts: np.ndarray, size: np.ndarray,
        up_i: np.ndarray,
    ) -> None:
        # Series are per (device, remote IP): flows of both protocols and all ports add up.
        sec = ts.astype(np.int64)
        skey = mix(flow_of_row, sec)
        _, g = group(skey)
        bu, bd = g.sum(size * up_i), g.sum(size * (1 - up_i))
        pu = g.sum(up_i)
        n = g.count()
        for j, i in enumerate(g.first.tolist()):
            fk = keys[int(flow_of_row[i])]
            k = (fk[0], fk[1], int(sec[i]))
            cell = self._series.get(k)
            if cell is None:
                self._series[k] = [int(bu[j]), int(bd[j]), int(pu[j]), int(n[j] - pu[j])]
            else:
                cell[0] += int(bu[j])
                cell[1] += int(bd[j])
                cell[2] += int(pu[j])
                cell[3] += int(n[j] - pu[j])

    def _detect(
        self, fkey: U64, flow_of_row: np.ndarray, keys: list[FlowKey], lport: np.ndarray,
        proto: np.ndarray, ts: np.ndarray, size: np.ndarray, up_i: np.ndarray,
        payload_len: np.ndarray,
    ) -> list[Upload]:
        transport = (proto == 6) | (proto == 17)
        media = transport & (up_i == 1) & (payload_len >= self._media_min)
        r = np.flatnonzero(transport)
        if not r.size:
            return []
        uniq, cg = group(mix(fkey[r], lport[r]))
        conn_keys: list[ConnKey] = []
        for j, h in enumerate(uniq.tolist()):
            ck = self._conn_keys.get(h)
            if ck is None:
                i = int(r[cg.first[j]])
                ck = (*keys[int(flow_of_row[i])], int(lport[i]))
                self._conn_keys[h] = ck
            conn_keys.append(ck)
        # Bins only for connections carrying media now, or with a stream the detector watches.
        conn_media = cg.sum(media[r]) > 0
        watched = np.array([self.detector.is_watching(k) for k in conn_keys], dtype=np.bool_)
        take = (conn_media | watched)[cg.inverse]
        if not take.any():
            return []
        r, co = r[take], cg.inverse[take]
        b = np.floor(ts[r] * self._bins_per_s).astype(np.int64)
        _, g = group(mix(co, b))
        m = media[r].astype(np.int64)
        mp = g.sum(m)
        mb = g.sum(payload_len[r].astype(np.int64) * m)
        ub = g.sum(size[r] * up_i[r])
        db = g.sum(size[r] * (1 - up_i[r]))
        bins = b[g.first]
        conns = co[g.first]
        done: list[Upload] = []
        bin_s = self.detector.config.bin_s
        for j in np.argsort(bins, kind="stable").tolist():
            done.extend(
                self.detector.observe(
                    float(bins[j]) * bin_s, conn_keys[int(conns[j])], int(mp[j]), int(mb[j]),
                    int(ub[j]), int(db[j]),
                )
            )
        return done
