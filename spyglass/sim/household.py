"""A simulated home network as a labelled pcap: speakers, phones, a TV, a laptop, a plug.

Each device contributes time-ordered event generators; a heap merges them by start time and
the rendered frames are written in timestamp order as soon as no later event can precede
them, so memory stays small however long the capture. Labels (true voice uploads) go to a
CSV in the format of the real captures' labels.csv.
"""

from __future__ import annotations

import csv
import heapq
import math
import random
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from pathlib import Path

from spyglass.core.pcapwrite import PcapWriter
from spyglass.sim import behaviours as bh
from spyglass.sim import profiles
from spyglass.sim.behaviours import Event, Speaker, Streamer, Window
from spyglass.sim.events import Dev, Lan, tls_open
from spyglass.sim.flows import Packet

LABEL_FIELDS = [
    "file",
    "device_mac",
    "device_model",
    "assistant",
    "expected_uploads",
    "event_windows",
    "tolerance_s",
    "source",
    "license",
]
MAX_DEVICES = 240  # addresses .10 - .249 of the /24
_FLUSH_EVERY_S = 1.0
_FRIENDLY = ("Kitchen", "Living Room", "Bedroom", "Office", "Hallway", "Den", "Nursery", "Patio")


@dataclass
class SimSummary:
    pcap: Path
    labels: Path
    packets: int
    duration_s: float
    devices: list[dict[str, object]]
    uploads: int


def _mac(rng: random.Random, oui: str, idx: int) -> str:
    return f"{oui}:{rng.randrange(256):02x}:{rng.randrange(256):02x}:{idx & 0xFF:02x}"


def _build(
    lan: Lan, rng: random.Random, speakers: int, others: int, start: float, end: float
) -> tuple[list[Dev], list[tuple[Dev, profiles.SpeakerModel]], list[Iterator[Event]]]:
    devs: list[Dev] = []
    spk: list[tuple[Dev, profiles.SpeakerModel]] = []
    gens: list[Iterator[Event]] = []
    slots = [
        ("s", profiles.SPEAKER_ORDER[i % len(profiles.SPEAKER_ORDER)]) for i in range(speakers)
    ]
    slots += [("o", profiles.OTHER_ORDER[i % len(profiles.OTHER_ORDER)]) for i in range(others)]
    seen: dict[str, int] = {}
    for idx, (what, key) in enumerate(slots):
        host_no = 10 + idx
        nth = seen[key] = seen.get(key, -1) + 1  # the first of a model gets its best-known OUI
        drng = random.Random(f"{lan.seed}:dev:{idx}")
        friendly = f"{_FRIENDLY[idx % len(_FRIENDLY)]}{'' if idx < len(_FRIENDLY) else f' {idx}'}"
        if what == "s":
            sm = profiles.SPEAKERS[key]
            mac = _mac(drng, sm.ouis[nth % len(sm.ouis)], host_no)
            hostname = sm.hostname.format(hex=mac.replace(":", "")[6:])
            if sm.vendor == "Sonos":
                hostname = f"SonosZP-{mac.replace(':', '')[6:].upper()}"
            dev = Dev(
                lan,
                idx,
                mac,
                f"{profiles.LAN_PREFIX}{host_no}",
                hostname,
                "speaker",
                sm.label_model,
                sm.vendor,
                sm.assistant,
                drng,
            )
            spk.append((dev, sm))
            gens += _speaker_gens(dev, sm, friendly, start, end)
        else:
            om = profiles.OTHERS[key]
            mac = _mac(drng, om.ouis[nth % len(om.ouis)], host_no)
            hostname = om.hostname if om.kind != "phone" else f"{om.hostname}-{drng.randrange(100)}"
            dev = Dev(
                lan,
                idx,
                mac,
                f"{profiles.LAN_PREFIX}{host_no}",
                hostname,
                om.kind,
                key,
                om.vendor,
                None,
                drng,
            )
            gens += _other_gens(dev, om, start, end)
        devs.append(dev)
    return devs, spk, gens


def _common(
    dev: Dev, vendor_class: str, ntp: str, t_boot: float, end: float
) -> list[Iterator[Event]]:
    def once() -> Iterator[Event]:
        yield t_boot, partial(bh.boot, dev, t_boot, vendor_class)
        t = t_boot + 1.0 + dev.rng.uniform(0, 2)
        yield t, partial(bh.ntp_sync, dev, t, ntp)
        for tn in bh._periodic(dev, t, profiles.NTP_EVERY_S, end):
            yield tn, partial(bh.ntp_sync, dev, tn, ntp)

    def arps() -> Iterator[Event]:
        for t in bh._periodic(dev, t_boot + 5.0, profiles.ARP_EVERY_S, end):
            yield t, partial(bh.arp_check, dev, t)

    return [once(), arps()]


def _speaker_gens(
    dev: Dev, sm: profiles.SpeakerModel, friendly: str, start: float, end: float
) -> list[Iterator[Event]]:
    t_boot = start + dev.rng.uniform(0.0, profiles.DHCP_SPREAD_S)
    sp = Speaker(dev, sm)
    gens = _common(dev, sm.vendor_class, sm.ntp_server, t_boot, end)

    def main() -> Iterator[Event]:
        t = t_boot + 3.0 + dev.rng.uniform(0, 2)
        yield t, partial(sp.open_main, t)
        for tb in bh._periodic(dev, t + 1.0, sm.heartbeat_s, end):
            yield tb, partial(sp.beat, tb)

    def announce() -> Iterator[Event]:
        t = t_boot + 2.0
        while t < end:
            if sm.mdns:
                yield t, partial(bh.mdns_announce, dev, t, sm.mdns, friendly)
            if sm.ssdp:
                yield t + 0.01, partial(bh.ssdp_notify, dev, t + 0.01)
            t += dev.rng.uniform(*(profiles.SSDP_EVERY_S if sm.ssdp else profiles.MDNS_EVERY_S))

    gens += [
        main(),
        announce(),
        bh.speaker_events(sp, t_boot + 10.0, end),
        bh.speaker_bursts(sp, t_boot + 10.0, end),
    ]
    if sm.music:
        st = Streamer(
            dev,
            "audio4-fa.scdn.co",
            profiles.SONOS_CHUNK_EVERY_S,
            profiles.SONOS_CHUNK_BYTES,
            profiles.SONOS_SESSIONS_PER_HOUR,
            profiles.SONOS_SESSION_S,
            bh.sonos_start(sp),
        )
        gens.append(st.events(t_boot + 10.0, end))
    return gens


def _other_gens(
    dev: Dev, om: profiles.OtherModel, start: float, end: float
) -> list[Iterator[Event]]:
    t_boot = start + dev.rng.uniform(0.0, profiles.DHCP_SPREAD_S)
    gens = _common(dev, om.vendor_class, om.ntp_server, t_boot, end)
    conn_box: list[object] = []

    def main() -> Iterator[Event]:
        if om.persistent is None:
            return
        t = t_boot + 3.0
        name = om.persistent

        def open_(t: float) -> bh.Rendered:
            conn, pkts, _ = tls_open(dev, t, name)
            conn_box.append(conn)
            return pkts, None

        def beat(t: float) -> bh.Rendered:
            return bh.heartbeat(dev, conn_box[0], t) if conn_box else ([], None)  # type: ignore[arg-type]

        yield t, partial(open_, t)
        for tb in bh._periodic(dev, t + 1.0, om.heartbeat_s, end):
            yield tb, partial(beat, tb)

    def web() -> Iterator[Event]:
        rate = dev.rng.uniform(*om.web_sessions_per_hour)
        for t in bh._gaps(dev, t_boot + 5.0, rate, end, 2.0):
            yield t, partial(bh.web_session, dev, t, om.web_sites, om.web_bytes)

    def ssdp() -> Iterator[Event]:
        for t in bh._periodic(dev, t_boot + 2.0, profiles.SSDP_EVERY_S, end):
            yield t, partial(bh.ssdp_notify, dev, t)

    gens += [main(), web()]
    if om.ssdp:
        gens.append(ssdp())
    if om.video:
        kbps = dev.rng.uniform(*om.video_kbps)
        every = (3.5, 4.5)
        chunk = (kbps * 1000 / 8 * 3.5, kbps * 1000 / 8 * 4.5)
        st = Streamer(
            dev,
            "ipv4-c012-ams001-ix.1.oca.nflxvideo.net",
            every,
            chunk,
            (1.0, 2.0),
            (300.0, 1200.0),
        )
        gens.append(st.events(t_boot + 5.0, end))
    return gens


def _scale(speakers: int, others: int, duration_s: float, target: int) -> tuple[int, int]:
    """More devices when the target needs more packets per second than one household makes."""

    def pps(s: int, o: int) -> float:
        return sum(profiles.EST_PPS[profiles.SPEAKER_ORDER[i % 6]] for i in range(s)) + sum(
            profiles.EST_PPS[profiles.OTHER_ORDER[i % 5]] for i in range(o)
        )

    base = pps(speakers, others)
    k = max(1, math.ceil(target / max(base * duration_s, 1.0)))
    k = min(k, max(1, MAX_DEVICES // max(speakers + others, 1)))
    return speakers * k, others * k


def simulate_household(
    out: Path,
    *,
    labels: Path | None = None,
    duration_s: float = 1800.0,
    seed: int = 1,
    start: float = 1764000000.0,
    target_packets: int | None = None,
    speakers: int = 4,
    others: int = 4,
) -> SimSummary:
    """Write a labelled pcap of a simulated household; see the module docstring."""
    out = Path(out)
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if speakers < 0 or others < 0 or speakers + others == 0:
        raise ValueError(f"need at least one device (speakers={speakers}, others={others})")
    if speakers + others > MAX_DEVICES:
        raise ValueError(f"at most {MAX_DEVICES} devices fit the /24, got {speakers + others}")
    if target_packets is not None and target_packets < 1:
        raise ValueError(f"target_packets must be >= 1, got {target_packets}")
    labels = Path(labels) if labels is not None else out.with_name(out.stem + ".labels.csv")
    end = start + duration_s
    if target_packets is not None:
        speakers, others = _scale(speakers, others, duration_s, target_packets)
        end = math.inf  # run until the target is reached
    lan = Lan(seed)
    devs, spk, gens = _build(lan, random.Random(seed), speakers, others, start, end)
    windows: list[Window] = []
    written, last_ts = _run(out, gens, windows, end, target_packets)
    cutoff = last_ts if target_packets is not None else end
    kept = [w for w in windows if w.start < cutoff]
    _write_labels(labels, out.name, spk, kept, seed)
    dev_rows: list[dict[str, object]] = []
    for d in devs:
        ups = sum(1 for w in kept if w.mac == d.mac_s)
        dev_rows.append(
            {
                "mac": d.mac_s,
                "ip": d.ip_s,
                "hostname": d.hostname,
                "kind": d.kind,
                "model": d.model,
                "vendor": d.vendor,
                "assistant": d.assistant,
                "uploads": ups,
            }
        )
    return SimSummary(
        out,
        labels,
        written,
        (cutoff if target_packets is None else last_ts) - start,
        dev_rows,
        len(kept),
    )


def _run(
    out: Path, gens: list[Iterator[Event]], windows: list[Window], end: float, target: int | None
) -> tuple[int, float]:
    """Merge the generators by event start, write frames in time order; returns (count, last ts)."""
    heap: list[tuple[float, int, Event, Iterator[Event]]] = []
    for i, g in enumerate(gens):
        ev = next(g, None)
        if ev is not None:
            heap.append((ev[0], i, ev, g))
    heapq.heapify(heap)
    pending: list[Packet] = []
    key = itemgetter(0)
    cutoff = end
    count = 0
    last_ts = 0.0
    flushed_to = -math.inf
    with PcapWriter(out) as w:
        while True:
            nxt = heap[0][0] if heap else math.inf
            if nxt >= cutoff or not heap:
                wm = cutoff
            elif nxt - flushed_to >= _FLUSH_EVERY_S or len(pending) > 100_000:
                wm = nxt
            else:
                wm = -math.inf
            if wm > -math.inf and pending:
                pending.sort(key=key)
                upto = bisect_left(pending, min(wm, cutoff), key=key)
                batch = pending[:upto]
                if target is not None and count < target <= count + len(batch):
                    cutoff = _stretch(batch[target - count - 1][0], windows)
                    batch = pending[: bisect_left(pending, min(wm, cutoff), key=key)]
                if batch:
                    count += w.write_many(batch)
                    last_ts = batch[-1][0]
                del pending[: len(batch)]
                flushed_to = wm
            if nxt >= cutoff or not heap:
                break
            _, i, (t, render), g = heap[0]
            ev = next(g, None)
            if ev is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (ev[0], i, ev, g))
            pkts, win = render()
            if pkts:
                pending.extend(pkts)
            if win is not None:
                windows.append(win)
    return count, last_ts


def _stretch(ts: float, windows: list[Window]) -> float:
    """Where to stop once the target is reached: after any upload in progress at ``ts``."""
    cut = ts + 1e-6
    for win in windows:
        if win.start <= ts < win.event_end:
            cut = max(cut, win.event_end + 1e-6)
    return cut


def _write_labels(
    path: Path,
    pcap_name: str,
    spk: list[tuple[Dev, profiles.SpeakerModel]],
    windows: list[Window],
    seed: int,
) -> None:
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(LABEL_FIELDS)
        for dev, sm in spk:
            mine = sorted((w for w in windows if w.mac == dev.mac_s), key=lambda w: w.start)
            spans = ";".join(f"{w.start:.3f}-{w.end:.3f}" for w in mine)
            wr.writerow(
                [
                    pcap_name,
                    dev.mac_s,
                    sm.label_model,
                    sm.assistant,
                    len(mine),
                    spans,
                    10,
                    f"spyglass-simulator seed={seed}",
                    "GPL-3.0-or-later",
                ]
            )
