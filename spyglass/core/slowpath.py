"""The few packets whose payload is read: DNS, mDNS, DHCP, SSDP, TLS ClientHello, ARP.

They are picked out of a decoded batch with array masks, then parsed one by one; DNS answers
arrive already summed up per batch (:mod:`spyglass.core.dnsdigest`). A malformed payload is
counted and sampled into the problems list; it never stops the capture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from spyglass.core.decode import ip_str, mac_str
from spyglass.core.dnsdigest import DnsDigest
from spyglass.core.frames import (
    I64,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    Decoded,
    FrameBatch,
)
from spyglass.core.inventory import Inventory, NameBook
from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.arp import parse_arp
from spyglass.core.proto.dhcp import parse_dhcp
from spyglass.core.proto.dns import parse_dns
from spyglass.core.proto.mdns import MdnsInfo, mdns_info
from spyglass.core.proto.ssdp import SsdpInfo, parse_ssdp
from spyglass.core.proto.tls import client_hello_sni

ETH_ARP = 0x0806
# Link header length before an ARP packet, per link type (Ethernet, Linux SLL, SLL2).
_ARP_AT = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16, LINKTYPE_LINUX_SLL2: 20}
UDP, TCP = 17, 6
MAX_SAMPLES = 20  # malformed-payload messages kept verbatim; the rest are only counted
MEMO_SIZE = 4096  # parsed announcements remembered (by payload)
KNOWN_SIZE = 16_384  # MAC strings, and (device, asked name) already told to the identifier


@dataclass(slots=True)
class SlowPathStats:
    parsed: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    _samples: dict[str, list[float]] = field(default_factory=dict)  # message -> [first t, count]

    def bad(self, kind: str, ts: float, err: Exception | str) -> None:
        self.malformed[kind] = self.malformed.get(kind, 0) + 1
        msg = f"malformed {kind} payload: {str(err)[:100]}"
        seen = self._samples.get(msg)
        if seen is not None:
            seen[1] += 1
        elif len(self._samples) < MAX_SAMPLES:
            self._samples[msg] = [ts, 1]

    @property
    def samples(self) -> list[str]:
        """One line per distinct fault: the first packet's time and how often it recurred."""
        out = []
        for msg, (ts, n) in self._samples.items():
            more = f" ({int(n)} packets)" if n > 1 else ""
            out.append(f"{msg} (first at t={ts:.6f}){more}")
        return out


def select_rows(d: Decoded, arr: np.ndarray, up: np.ndarray) -> I64:
    """Rows worth a payload parse, DNS answers (:func:`dns_rows`) included. ``arr`` is the
    batch buffer as uint8, ``up`` the device-to-internet mask (ClientHellos are only read
    going out)."""
    udp = (d.proto == UDP) & ~d.malformed & (d.payload_cap > 0)
    sp, dp = d.sport, d.dport
    mask = udp & (
        (sp == 53) | (sp == 5353) | (dp == 5353) | (sp == 67) | (sp == 68)
        | (sp == 1900) | (dp == 1900)
    )
    mask |= d.ethertype == ETH_ARP
    tcp = (d.proto == TCP) & up & (d.payload_cap >= 6) & ~d.malformed
    rows = np.flatnonzero(tcp)
    if rows.size:
        off = d.payload_off[rows]
        hello = (arr[off] == 0x16) & (arr[off + 5] == 0x01)
        mask[rows[hello]] = True
    return np.flatnonzero(mask)


def dns_rows(d: Decoded, rows: I64) -> np.ndarray:
    """Which of the selected ``rows`` are DNS messages from a resolver (UDP from port 53)."""
    out: np.ndarray = (d.proto[rows] == UDP) & (d.sport[rows] == 53)
    return out


def _remember[T](memo: dict[bytes, T], key: bytes, value: T) -> None:
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


class SlowPath:
    def __init__(self, inventory: Inventory, names: NameBook) -> None:
        self.inventory = inventory
        self.names = names
        self.stats = SlowPathStats()
        # Announcements (mDNS, SSDP NOTIFY) repeat byte for byte every few seconds: parse once.
        # The parsed objects are only read by the device identifier, so sharing them is safe.
        self._mdns_memo: dict[bytes, tuple[MdnsInfo | None] | MalformedPayload] = {}
        self._ssdp_memo: dict[bytes, SsdpInfo | MalformedPayload] = {}
        self._macs: dict[int, str] = {}
        # Telling a device's identifier a name again changes nothing (it keeps what matched
        # first): the (device, name) it was told are skipped.
        self._asked: set[tuple[str, str]] = set()

    def handle(self, d: Decoded, batch: FrameBatch, at: I64, dg: DnsDigest) -> None:
        """One batch's slow-path rows ``d`` (frames in ``batch``; ``at``: their rows in the
        batch they came from, which holds no DNS answers: :func:`dns_rows`) and its DNS
        answers, summed up where the batch was prepared. Evidence about devices is taken in
        the order of the batch's rows."""
        self._dns_names(dg)
        events, k = dg.events, 0
        buf = batch.buf
        # The columns every row needs, as Python values in one go: indexing numpy arrays one
        # element at a time costs more than the parse of a remembered announcement.
        cols = zip(
            at.tolist(), d.ts.tolist(), d.ethertype.tolist(), d.proto.tolist(),
            d.payload_off.tolist(), d.payload_cap.tolist(), d.sport.tolist(), d.dport.tolist(),
            strict=True,
        )
        for i, (row, ts, ethertype, proto, off, cap, sp, dp) in enumerate(cols):
            while k < len(events) and events[k][0] < row:
                self._dns_event(*events[k][1:])
                k += 1
            if ethertype == ETH_ARP:
                # The decoder stops at the link layer for ARP; find the ARP header ourselves.
                link = _ARP_AT.get(int(batch.linktype[i]))
                if link is not None:
                    start = int(batch.offset[i]) + link + (4 if d.vlan[i] else 0)
                    end = int(batch.offset[i]) + int(batch.caplen[i])
                    self._arp(buf[start:end], ts)
                continue
            payload = buf[off : off + cap]
            if proto == TCP:
                self._tls(d, i, payload, ts)
            elif sp == 5353 or dp == 5353:
                self._mdns(d, i, payload, ts)
            elif sp in (67, 68):
                self._dhcp(payload, ts)
            else:
                self._ssdp(d, i, payload, ts)
        for _, mac_i, qname, first, last in events[k:]:
            self._dns_event(mac_i, qname, first, last)

    def _dns_names(self, dg: DnsDigest) -> None:
        """The order-free part of a batch's DNS answers: counts, faults, names."""
        if dg.parsed:
            self.stats.parsed["dns"] = self.stats.parsed.get("dns", 0) + dg.parsed
        for ts, fault in dg.malformed:
            self.stats.bad("DNS", ts, fault)
        mac_of, learn = self._mac, self.names.learn_dns
        for mac_i, pairs, first, last in zip(dg.macs, dg.pairs, dg.first, dg.last, strict=True):
            learn(mac_of(mac_i), pairs, first, last)  # the device that asked

    def _dns_event(self, mac_i: int, qname: str | None, first: float, last: float) -> None:
        """A device's first DNS answer of the batch (``qname`` None), or a name it asked for
        that some identification rule matches."""
        mac = self._mac(mac_i)
        if qname is None:
            self.inventory.touch(mac, first, last)
        elif (mac, qname) not in self._asked:
            self.inventory.identifier(mac, first).add_domain(qname, "dns")
            if len(self._asked) >= KNOWN_SIZE:
                self._asked.clear()
            self._asked.add((mac, qname))

    # -- per protocol ------------------------------------------------------------------
    def _count(self, kind: str) -> None:
        self.stats.parsed[kind] = self.stats.parsed.get(kind, 0) + 1

    def _parse[T](
        self, name: str, parse: Callable[[bytes], T], payload: bytes, ts: float
    ) -> T | None:
        """``parse(payload)``, counted under ``name``; a malformed payload is recorded, None."""
        try:
            out = parse(payload)
        except MalformedPayload as e:
            self.stats.bad(name, ts, e)
            return None
        self._count(name.lower())
        return out

    def _arp(self, payload: bytes, ts: float) -> None:
        info = self._parse("ARP", parse_arp, payload, ts)
        if info is None:
            return
        if info.sender_ip != "0.0.0.0" and info.sender_mac != "00:00:00:00:00:00":
            self.inventory.add_ip(info.sender_mac, info.sender_ip, ts)

    def _tls(self, d: Decoded, i: int, payload: bytes, ts: float) -> None:
        try:
            sni = client_hello_sni(payload)
        except MalformedPayload as e:
            self.stats.bad("TLS ClientHello", ts, e)
            return
        if sni:
            self._count("tls-sni")
            mac = mac_str(int(d.src_mac[i]))
            self.names.learn(mac, ip_str(int(d.dst_hi[i]), int(d.dst_lo[i])), sni, "sni", ts)
            self.inventory.identifier(mac, ts).add_domain(sni, "sni")

    def _mac(self, mac_i: int) -> str:
        mac = self._macs.get(mac_i)
        if mac is None:
            if len(self._macs) >= KNOWN_SIZE:
                self._macs.clear()
            mac = self._macs[mac_i] = mac_str(mac_i)
        return mac

    def _mdns(self, d: Decoded, i: int, payload: bytes, ts: float) -> None:
        memo = self._mdns_memo.get(payload)
        if memo is None:
            try:
                msg = parse_dns(payload)
                useful = msg.is_response and (msg.answers or msg.additionals)
                memo = (mdns_info(msg) if useful else None,)
            except MalformedPayload as e:
                memo = e
            _remember(self._mdns_memo, payload, memo)
        if isinstance(memo, MalformedPayload):
            self.stats.bad("mDNS", ts, memo)
            return
        self._count("mdns")
        if memo[0] is None:
            return
        mac = mac_str(int(d.src_mac[i]))  # the announcer speaks about itself
        self.inventory.identifier(mac, ts).add_mdns(memo[0])

    def _dhcp(self, payload: bytes, ts: float) -> None:
        info = self._parse("DHCP", parse_dhcp, payload, ts)
        if info is None:
            return
        self.inventory.identifier(info.client_mac, ts).add_dhcp(info)
        if info.your_ip and info.your_ip != "0.0.0.0":
            self.inventory.add_ip(info.client_mac, info.your_ip, ts)

    def _ssdp(self, d: Decoded, i: int, payload: bytes, ts: float) -> None:
        memo = self._ssdp_memo.get(payload)
        if memo is None:
            try:
                memo = parse_ssdp(payload)
            except MalformedPayload as e:
                memo = e
            _remember(self._ssdp_memo, payload, memo)
        if isinstance(memo, MalformedPayload):
            self.stats.bad("SSDP", ts, memo)
            return
        info = memo
        self._count("ssdp")
        if info.method == "M-SEARCH":
            return  # a search says nothing about the searcher
        mac = mac_str(int(d.src_mac[i]))
        self.inventory.identifier(mac, ts).add_ssdp(info)
