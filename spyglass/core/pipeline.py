"""The streaming pipeline: frame batches in; devices, names, flows, series and uploads out.

The same object serves a pcap file and the live agent: feed it batches in capture order, call
:meth:`Pipeline.advance` when the clock moves without packets (live), :meth:`Pipeline.flush` at the
end. Per-packet work is array arithmetic; Python loops run per flow, per time bin and per
slow-path packet only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from spyglass.core.decode import ip_str, mac_str
from spyglass.core.detect import (
    ConnKey,
    DestinationHint,
    DetectorConfig,
    FlowKey,
    UploadDetector,
)
from spyglass.core.endpoints import classify
from spyglass.core.frames import FrameBatch
from spyglass.core.inventory import Inventory, NameBook, VendorLookup
from spyglass.core.lan import LanClassifier
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.core.prepare import Prepared, Preparer, PrepSettings
from spyglass.core.slowpath import SlowPath

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 2: "igmp", 50: "esp"}
_REFUSED: ConnKey = ("", "", "", 0, 0)  # connections of devices the inventory turned away
SERIES_SETTLE_S = 2  # a second is complete once the capture is this far past it


@dataclass(slots=True)
class PipelineStats:
    packets: int = 0
    bytes: int = 0
    malformed: int = 0  # frames whose headers could not be decoded
    non_ip: int = 0
    local_only: int = 0  # LAN-to-LAN and multicast: not counted in flows
    refused_packets: int = 0  # from devices past the inventory's cap (a MAC flood)
    first_ts: float | None = None
    last_ts: float | None = None
    problems: list[str] = field(default_factory=list)


def _hint(names: NameBook, inventory: Inventory, key: ConnKey) -> DestinationHint:
    mac, ip = key[0], key[1]
    name = names.name_for(mac, ip)
    info = classify(name)
    return DestinationHint(
        name=name,
        role=info.role,
        assistant=info.assistant or inventory.assistant(mac),
        device_is_speaker=inventory.is_speaker(mac),
    )


class Pipeline:
    def __init__(
        self,
        *,
        lan: list[str] | None = None,
        vendor_lookup: VendorLookup | None = None,
        detector_config: DetectorConfig | None = None,
        keep_uploads: bool = True,
    ) -> None:
        self.lan = LanClassifier(lan)
        self.inventory = Inventory(vendor_lookup)
        self.names = NameBook()
        self.slow = SlowPath(self.inventory, self.names)
        # The hint is not a method of the pipeline: the pipeline would then be a reference
        # cycle, whose state only the garbage collector could free (see cli.analyze).
        self.detector = UploadDetector(partial(_hint, self.names, self.inventory), detector_config)
        self.stats = PipelineStats()
        self.prep_settings = PrepSettings(
            lan=self.lan.lan,
            media_min=self.detector.config.min_payload,
            bins_per_s=round(1 / self.detector.config.bin_s),
        )
        self._prepare = Preparer(self.prep_settings, self.lan)
        self._flows: dict[int, Flow] = {}
        self._flow_keys: dict[int, FlowKey] = {}
        self._conn_keys: dict[int, ConnKey] = {}
        self._dirty_flows: set[int] = set()
        self._contacted: set[tuple[str, str]] = set()  # (device, remote IP) of the flows
        self._series: dict[tuple[str, str, int], list[int]] = {}
        self._uploads: list[Upload] = []
        # A live agent hands uploads to the store as they come and must not hoard them.
        self.keep_uploads = keep_uploads

    # -- public ------------------------------------------------------------------------
    def feed(self, batch: FrameBatch) -> list[Upload]:
        """Process one batch; returns the uploads that became final."""
        if len(batch) == 0:
            return []
        return self.apply(self._prepare(batch))

    def apply(self, p: Prepared) -> list[Upload]:
        """The stateful half of :meth:`feed`: one batch aggregated by :func:`prepare` (which
        may have run in another process, with :attr:`prep_settings`)."""
        st = self.stats
        st.packets += p.packets
        st.bytes += p.bytes
        st.malformed += p.malformed
        st.first_ts = p.t_first if st.first_ts is None else min(st.first_ts, p.t_first)
        st.last_ts = p.t_last if st.last_ts is None else max(st.last_ts, p.t_last)
        st.non_ip += p.non_ip
        st.local_only += p.local_only

        self.slow.handle(p.slow_d, p.slow_batch, p.slow_at, p.dns)
        self._learn_devices(p)
        done: list[Upload] = []
        if p.fl_hash.size:
            done = self._aggregate(p)
        done.extend(self.detector.advance(p.t_last))
        if self.keep_uploads:
            self._uploads.extend(done)
        return done

    def advance(self, now: float) -> list[Upload]:
        """The clock reached ``now`` with no packets (live capture): judge idle streams."""
        done = self.detector.advance(now)
        if self.keep_uploads:
            self._uploads.extend(done)
        return done

    def flush(self) -> list[Upload]:
        done = self.detector.flush()
        if self.keep_uploads:
            self._uploads.extend(done)
        return done

    def uploads(self) -> list[Upload]:
        return sorted(self._uploads, key=lambda u: u.start)

    def devices(self) -> list[Device]:
        return self.inventory.devices()

    def endpoint_names(self) -> list[EndpointName]:
        """The names of the remote endpoints each device exchanged traffic with.

        The name book also holds names of addresses a device resolved and never contacted
        (a CDN answer lists several; apps resolve ahead): they label nothing, and a DNS-heavy
        capture has tens of thousands of them."""
        return self.names.entries(self._contacted)

    def changed_names(self) -> list[EndpointName]:
        """:meth:`endpoint_names` learned or seen again since the last call; a name of an
        address not contacted yet waits until it is."""
        return self.names.pop_changed(self._contacted)

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
    def _learn_devices(self, p: Prepared) -> None:
        """Every MAC that sends IP from a LAN address is a device; note its IPs."""
        inv = self.inventory
        for mac_i, hi, lo, first, last in zip(
            p.dev_mac.tolist(), p.dev_hi.tolist(), p.dev_lo.tolist(), p.dev_first.tolist(),
            p.dev_last.tolist(), strict=True,
        ):
            ip = ip_str(hi, lo)
            mac = mac_str(mac_i)
            inv.touch(mac, first, last)
            if not ip.startswith(("0.", "169.254.", "fe80:")):
                inv.add_ip(mac, ip, last)

    def _aggregate(self, p: Prepared) -> list[Upload]:
        keys: list[FlowKey | None] = []  # None: a device the full inventory turned away
        flow_keys, flows, dirty = self._flow_keys, self._flows, self._dirty_flows
        inv = self.inventory
        for j, (h, pu, pd, bu, bd, first, last) in enumerate(zip(
            p.fl_hash.tolist(), p.fl_pu.tolist(), p.fl_pd.tolist(), p.fl_bu.tolist(),
            p.fl_bd.tolist(), p.fl_first.tolist(), p.fl_last.tolist(), strict=True,
        )):
            key = flow_keys.get(h)
            if key is None:
                key = self._make_key(p, j)
                if inv.full and key[0] not in inv:
                    keys.append(None)
                    self.stats.refused_packets += pu + pd
                    continue
                flow_keys[h] = key
            keys.append(key)
            f = flows.get(h)
            if f is None:
                f = Flow(key[0], key[1], key[2], key[3], first_seen=first)
                flows[h] = f
                self._contacted.add((key[0], key[1]))
            dirty.add(h)
            f.packets_up += pu
            f.packets_down += pd
            f.bytes_up += bu
            f.bytes_down += bd
            if last > f.last_seen:
                f.last_seen = last
        self._add_series(p, keys)
        return self._detect(p, keys)

    def _make_key(self, p: Prepared, j: int) -> FlowKey:
        mac_i = int(p.fl_mac[j])
        local = ip_str(int(p.fl_loc_hi[j]), int(p.fl_loc_lo[j]))
        dev = mac_str(mac_i) if mac_i else "ip:" + local
        proto = int(p.fl_proto[j])
        remote = ip_str(int(p.fl_rem_hi[j]), int(p.fl_rem_lo[j]))
        return (dev, remote, PROTO_NAMES.get(proto, str(proto)), int(p.fl_port[j]))

    def _add_series(self, p: Prepared, keys: list[FlowKey | None]) -> None:
        # Series are per (device, remote IP): flows of both protocols and all ports add up.
        series = self._series
        for fi, sec, bu, bd, pu, pd in zip(
            p.se_flow.tolist(), p.se_sec.tolist(), p.se_bu.tolist(), p.se_bd.tolist(),
            p.se_pu.tolist(), p.se_pd.tolist(), strict=True,
        ):
            fk = keys[fi]
            if fk is None:
                continue
            k = (fk[0], fk[1], sec)
            cell = series.get(k)
            if cell is None:
                series[k] = [bu, bd, pu, pd]
            else:
                cell[0] += bu
                cell[1] += bd
                cell[2] += pu
                cell[3] += pd

    def _detect(self, p: Prepared, keys: list[FlowKey | None]) -> list[Upload]:
        if not p.co_hash.size:
            return []
        conn_keys: list[ConnKey] = []
        cache = self._conn_keys
        for h, fi, lport in zip(
            p.co_hash.tolist(), p.co_flow.tolist(), p.co_lport.tolist(), strict=True
        ):
            ck = cache.get(h)
            if ck is None:
                fk = keys[fi]
                ck = (*fk, lport) if fk is not None else _REFUSED
                if fk is not None:
                    cache[h] = ck
            conn_keys.append(ck)
        # Bins only for connections carrying media now, or with a stream the detector watches.
        det = self.detector
        watched = np.fromiter(
            (det.is_watching(k) for k in conn_keys), dtype=np.bool_, count=len(conn_keys)
        )
        refused = np.fromiter(
            (k is _REFUSED for k in conn_keys), dtype=np.bool_, count=len(conn_keys)
        )
        take = ((p.co_media | watched) & ~refused)[p.bi_conn]
        if not take.any():
            return []
        bins = p.bi_bin[take]
        order = np.argsort(bins, kind="stable")
        # b * bin_s in float64, as Python computes it for an int and a float.
        times = (bins[order] * det.config.bin_s).tolist()
        bin_keys = [conn_keys[c] for c in p.bi_conn[take][order].tolist()]
        return det.observe_bins(
            times, bin_keys, p.bi_mp[take][order].tolist(), p.bi_mb[take][order].tolist(),
            p.bi_ub[take][order].tolist(), p.bi_db[take][order].tolist(),
        )
