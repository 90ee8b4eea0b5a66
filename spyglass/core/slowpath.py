"""The few packets whose payload is read: DNS, mDNS, DHCP, SSDP, TLS ClientHello, ARP.

They are picked out of a decoded batch with array masks, then parsed one by one. A malformed
payload is counted and sampled into the problems list; it never stops the capture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from spyglass.core.decode import ip_str, mac_str
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
from spyglass.core.proto.dnsmemo import DnsAnswerMemo
from spyglass.core.proto.mdns import MdnsInfo, mdns_info
from spyglass.core.proto.ssdp import SsdpInfo, parse_ssdp
from spyglass.core.proto.tls import client_hello_sni

ETH_ARP = 0x0806
# Link header length before an ARP packet, per link type (Ethernet, Linux SLL, SLL2).
_ARP_AT = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16, LINKTYPE_LINUX_SLL2: 20}
UDP, TCP = 17, 6
MAX_SAMPLES = 20  # malformed-payload messages kept verbatim; the rest are only counted
MEMO_SIZE = 4096  # parsed announcements remembered (by payload)
KNOWN_SIZE = 16_384  # MAC strings, and (device, DNS questions) already told to the identifier


@dataclass(slots=True)
class SlowPathStats:
    parsed: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    _samples: dict[str, list[float]] = field(default_factory=dict)  # message -> [first t, count]

    def bad(self, kind: str, ts: float, err: Exception) -> None:
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
    """Rows worth a payload parse. ``arr`` is the batch buffer as uint8, ``up`` the
    device-to-internet mask (ClientHellos are only read going out)."""
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
        # DNS answers repeat too, apart from their ids and TTLs.
        self._dns_memo = DnsAnswerMemo()
        self._macs: dict[int, str] = {}
        # Telling a device's identifier a name again changes nothing (it keeps what matched
        # first): the (device, questions) it was told are skipped.
        self._asked: set[tuple[str, tuple[str, ...]]] = set()

    def select(self, d: Decoded, arr: np.ndarray, up: np.ndarray) -> I64:
        """See :func:`select_rows`."""
        return select_rows(d, arr, up)

    def handle(self, d: Decoded, batch: FrameBatch, rows: I64) -> None:
        if not rows.size:
            return
        buf = batch.buf
        # The columns every row needs, as Python values in one go: indexing numpy arrays one
        # element at a time costs more than the parse of a remembered DNS answer.
        cols = zip(
            rows.tolist(), d.ts[rows].tolist(), d.ethertype[rows].tolist(),
            d.proto[rows].tolist(), d.payload_off[rows].tolist(), d.payload_cap[rows].tolist(),
            d.sport[rows].tolist(), d.dport[rows].tolist(), d.dst_mac[rows].tolist(), strict=True,
        )
        for i, ts, ethertype, proto, off, cap, sp, dp, dst in cols:
            if sp == 53 and proto == UDP:  # first: most rows of a DNS-heavy capture
                self._dns_answer(dst, buf[off : off + cap], ts)
                continue
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

    def _dns_answer(self, dst_mac: int, payload: bytes, ts: float) -> None:
        facts = self._parse("DNS", self._dns_memo.facts, payload, ts)
        if facts is None or not facts.is_response:
            return
        mac = self._mac(dst_mac)  # the device that asked
        self.names.learn_dns(mac, facts.pairs, ts)
        if facts.questions:
            asked = (mac, facts.questions)
            if asked in self._asked:
                self.inventory.touch(mac, ts, ts)
                return
            ident = self.inventory.identifier(mac, ts)
            for qname in facts.questions:
                ident.add_domain(qname, "dns")
            if len(self._asked) >= KNOWN_SIZE:
                self._asked.clear()
            self._asked.add(asked)

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
