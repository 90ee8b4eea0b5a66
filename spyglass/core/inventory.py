"""The home's devices (keyed by MAC) and the names each of them used for its remote endpoints."""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from operator import attrgetter

from spyglass.core.endpoints import assistant_for_vendor
from spyglass.core.identify import DeviceIdentifier, Identity
from spyglass.core.models import Device, EndpointName

VendorLookup = Callable[[str], str | None]

# Vendors that make smart speakers; with no contrary evidence their devices are treated as
# speakers (the CIC captures carry nothing but the OUI to go on).
SPEAKER_VENDORS = ("amazon", "google", "sonos", "apple")


@dataclass(slots=True)
class _DeviceState:
    mac: str
    vendor: str | None
    ident: DeviceIdentifier
    first_seen: float
    last_seen: float
    ips: dict[str, float] = field(default_factory=dict)  # ip -> last seen
    identity: Identity | None = None  # cached; cleared by new evidence


MAX_DEVICES = 4096  # a home has tens; more is a flood of made-up MACs
MAX_ANSWERS = 16_384  # (device, DNS answer) pairs the NameBook keeps ready for a repeat


class Inventory:
    def __init__(
        self, vendor_lookup: VendorLookup | None = None, *, max_devices: int = MAX_DEVICES
    ) -> None:
        self._vendor_lookup = vendor_lookup
        self._devices: dict[str, _DeviceState] = {}
        self._new: list[str] = []
        self.max_devices = max_devices
        self.refused = 0  # sightings of new MACs turned away because the inventory is full

    @property
    def full(self) -> bool:
        return len(self._devices) >= self.max_devices

    def pop_new(self) -> list[str]:
        """MACs first seen since the last call (the live "device seen" event)."""
        new, self._new = self._new, []
        return new

    def __contains__(self, mac: str) -> bool:
        return mac in self._devices

    def __len__(self) -> int:
        return len(self._devices)

    def touch(self, mac: str, first: float, last: float) -> _DeviceState:
        st = self._devices.get(mac)
        if st is None:
            if len(self._devices) >= self.max_devices:
                # Memory stays bounded: evidence about this MAC goes to a state nobody keeps.
                self.refused += 1
                return _DeviceState(mac, None, DeviceIdentifier(), first, last)
            vendor = self._vendor_lookup(mac) if self._vendor_lookup else None
            ident = DeviceIdentifier()
            ident.add_vendor(vendor)
            st = _DeviceState(mac, vendor, ident, first, last)
            self._devices[mac] = st
            self._new.append(mac)
        else:
            # min() and max(), as comparisons: this runs for every DNS answer and ARP packet.
            if first < st.first_seen:
                st.first_seen = first
            if last > st.last_seen:
                st.last_seen = last
        return st

    def add_ip(self, mac: str, ip: str, ts: float) -> None:
        st = self.touch(mac, ts, ts)
        st.ips[ip] = max(ts, st.ips.get(ip, ts))

    def identifier(self, mac: str, ts: float) -> DeviceIdentifier:
        """The device's evidence collector; the caller is about to add evidence."""
        st = self.touch(mac, ts, ts)
        st.identity = None
        return st.ident

    def identity(self, mac: str) -> Identity | None:
        st = self._devices.get(mac)
        if st is None:
            return None
        if st.identity is None:
            st.identity = st.ident.identity()
        return st.identity

    def vendor(self, mac: str) -> str | None:
        st = self._devices.get(mac)
        return st.vendor if st else None

    def is_speaker(self, mac: str) -> bool:
        ident = self.identity(mac)
        if ident is not None and ident.kind is not None:
            return ident.kind == "speaker"
        vendor = (self.vendor(mac) or "").lower()
        return any(v in vendor for v in SPEAKER_VENDORS)

    def assistant(self, mac: str) -> str | None:
        ident = self.identity(mac)
        if ident is not None and ident.assistant:
            return ident.assistant
        return assistant_for_vendor(self.vendor(mac))

    def devices(self, macs: Iterable[str] | None = None) -> list[Device]:
        """All devices, or just those of ``macs`` that are known, oldest first."""
        states = (
            self._devices.values() if macs is None
            else [self._devices[m] for m in macs if m in self._devices]
        )
        out = []
        for st in sorted(states, key=lambda s: s.first_seen):
            ident = self.identity(st.mac)
            out.append(
                Device(
                    mac=st.mac,
                    vendor=st.vendor,
                    kind=ident.kind if ident else None,
                    model=ident.model if ident else None,
                    assistant=ident.assistant if ident else None,
                    names=st.ident.names(),
                    ips=sorted(st.ips, key=lambda ip: -st.ips[ip]),
                    evidence=[f"{e.source}: {e.detail}" for e in ident.evidence] if ident else [],
                    first_seen=st.first_seen,
                    last_seen=st.last_seen,
                )
            )
        return out


_NameKey = tuple[str, str, str, str]  # mac, ip, name, source
_Span = list[float]  # [first seen, last seen] of one name entry
_Pairs = tuple[tuple[str, str], ...]  # (ip, name) pairs of one DNS answer


@dataclass(slots=True)
class _Answer:
    """One DNS answer as one device learned it, ready for the repeats of it."""

    mac: str
    pairs: _Pairs
    spans: list[_Span]  # of its entries
    best: dict[tuple[str, str], tuple[str, str]]  # its _best items: (mac, ip) -> (name, "dns")
    sni_seen: int  # the device's SNI count when none of these addresses had an SNI name
    # Times not yet applied to the entries (which are then not yet marked changed either), and
    # whether it waits in the queue for that.
    lo: float
    hi: float
    queued: bool


class NameBook:
    """Per device, the names it resolved (DNS answers it received) or asked for (TLS SNI).

    A name one device resolved is never assumed for another device talking to the same IP:
    shared CDN addresses serve many names.

    A household's devices get the same DNS answers over and over. A repeat of an answer already
    learned widens its time range, applied to the entries (and the entries marked changed)
    when they are read, since min and max do not care about order; and it puts its names in
    place for its addresses in one dict update, unless one of them has an SNI name (which
    stays: see :meth:`_record`).
    """

    def __init__(self) -> None:
        # The times of each entry; EndpointName objects are only made when the entries are read
        # (a DNS-heavy capture learns tens of thousands).
        self._entries: dict[_NameKey, _Span] = {}
        self._best: dict[tuple[str, str], tuple[str, str]] = {}  # (mac, ip) -> (name, source)
        self._sni: dict[str, int] = {}  # per device: addresses whose best name is an SNI
        self._sni_keys: set[tuple[str, str]] = set()  # and those (mac, ip) themselves
        self._changed: set[_NameKey] = set()
        # Answers settled since pop_changed: their entries changed too. Their keys are only
        # made when asked for (a file's analysis never asks).
        self._settled: list[_Answer] = []
        self._answers: dict[tuple[str, _Pairs], _Answer] = {}
        self._queued: list[_Answer] = []  # repeated since the entries were last read

    def pop_changed(self, only: Container[tuple[str, str]] | None = None) -> list[EndpointName]:
        """Entries learned or seen again since the last call, for incremental writes.

        ``only``: just the entries of these (MAC, IP); the others stay changed until their
        address is among them at a later call."""
        self._settle()
        self._keys_of_settled()
        entries, changed = self._entries, self._changed
        if only is None:
            keys = list(changed)
            changed.clear()
        else:
            keys = [k for k in changed if (k[0], k[1]) in only]
            changed.difference_update(keys)
        return [EndpointName(*k, *entries[k]) for k in keys]

    def _keys_of_settled(self) -> None:
        changed = self._changed
        for ans in self._settled:
            changed.update([(ans.mac, ip, name, "dns") for ip, name in ans.pairs])
        self._settled.clear()

    def learn(self, mac: str, ip: str, name: str, source: str, ts: float) -> None:
        self._record(mac, ip, name.lower().rstrip("."), source, ts)

    def learn_dns(self, mac: str, pairs: _Pairs, first: float, last: float) -> None:
        """:meth:`learn` for the ``(ip, name)`` pairs of one DNS answer that the device received
        from ``first`` to ``last`` (once, or repeated), whose names are already lower-case
        without a final dot (resolve_chain's): no normalising on the per-answer path of a
        DNS-heavy capture."""
        ans = self._answers.get((mac, pairs))
        if ans is None:
            self._first(mac, pairs, first, last)
            return
        if first < ans.lo:
            ans.lo = first
        if last > ans.hi:
            ans.hi = last
        if not ans.queued:
            ans.queued = True
            self._queued.append(ans)
        if self._sni.get(mac, 0) == ans.sni_seen:
            self._best.update(ans.best)
        else:
            self._put_best(ans)

    def _first(self, mac: str, pairs: _Pairs, first: float, last: float) -> None:
        """An answer new to the device: its entries, then what a repeat does."""
        entries = self._entries
        spans: list[_Span] = []
        for ip, name in pairs:
            key = (mac, ip, name, "dns")
            sp = entries.get(key)
            if sp is None:
                sp = entries[key] = [first, last]
            else:
                if first < sp[0]:
                    sp[0] = first
                if last > sp[1]:
                    sp[1] = last
            spans.append(sp)
        best = {(mac, ip): (name, "dns") for ip, name in pairs}
        ans = _Answer(mac, pairs, spans, best, -1, first, last, True)
        self._queued.append(ans)  # the entries are marked changed when read
        if len(self._answers) >= MAX_ANSWERS:
            self._answers.clear()  # the queue keeps those it holds: their times still count
        self._answers[(mac, pairs)] = ans
        if self._sni.get(mac, 0) == 0:
            ans.sni_seen = 0
            self._best.update(best)
        else:
            self._put_best(ans)

    def _put_best(self, ans: _Answer) -> None:
        """_record's step for the best names, for all pairs of the answer at once: unless one
        of its addresses has an SNI name, its names go in as they are (the last pair of an
        address wins, as in a loop)."""
        sni = self._sni.get(ans.mac, 0)
        if sni != ans.sni_seen:
            keep = self._sni_keys
            if sni and not keep.isdisjoint(ans.best):
                best = self._best
                for bk, bv in ans.best.items():
                    if bk not in keep:
                        best[bk] = bv
                return
            ans.sni_seen = sni
        self._best.update(ans.best)

    def _settle(self) -> None:
        """Apply the queued answers' times to their entries, and mark those changed."""
        for ans in self._queued:
            lo, hi = ans.lo, ans.hi
            for sp in ans.spans:
                if lo < sp[0]:
                    sp[0] = lo
                if hi > sp[1]:
                    sp[1] = hi
            ans.lo, ans.hi, ans.queued = math.inf, -math.inf, False
        self._settled += self._queued
        self._queued.clear()
        if len(self._settled) > 4 * MAX_ANSWERS:  # read often, never popped: stay bounded
            self._keys_of_settled()

    def _record(self, mac: str, ip: str, name: str, source: str, ts: float) -> None:
        key = (mac, ip, name, source)
        self._changed.add(key)
        sp = self._entries.get(key)
        if sp is None:
            self._entries[key] = [ts, ts]
        else:
            if ts < sp[0]:
                sp[0] = ts
            if ts > sp[1]:
                sp[1] = ts
        best = self._best.get((mac, ip))
        # SNI names what the device actually connected to; it wins over a DNS answer.
        if best is None or source == "sni" or best[1] != "sni":
            if source == "sni" and (best is None or best[1] != "sni"):
                self._sni[mac] = self._sni.get(mac, 0) + 1
                self._sni_keys.add((mac, ip))
            self._best[(mac, ip)] = (name, source)

    def name_for(self, mac: str, ip: str) -> str | None:
        best = self._best.get((mac, ip))
        return best[0] if best else None

    def entries(self, only: Container[tuple[str, str]] | None = None) -> list[EndpointName]:
        """Every entry, or those of the (MAC, IP) in ``only``; by device, oldest first."""
        self._settle()
        entries = self._entries
        keys = entries if only is None else [k for k in entries if (k[0], k[1]) in only]
        out = [EndpointName(*k, *entries[k]) for k in keys]
        out.sort(key=attrgetter("device_mac", "first_seen"))
        return out
