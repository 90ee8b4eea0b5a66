"""Which devices the agent watches, and the capture filter that follows from it.

Discovery traffic (ARP, DHCP, DNS, mDNS, SSDP) always passes so new devices and names appear;
the full traffic of a device passes once it is watched: everything that looks like a speaker or
assistant, plus devices the user added. ``watch_all`` (research, gateway boxes with CPU to spare)
passes everything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DISCOVERY = "arp or udp port 53 or udp port 67 or udp port 68 or udp port 5353 or udp port 1900"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_FILTER_HOSTS = 200  # past this a filter costs more than it saves: capture everything


@dataclass(slots=True)
class WatchSet:
    watch_all: bool = False
    added: set[str] = field(default_factory=set)  # by the user
    speakers: set[str] = field(default_factory=set)  # found by identification

    def macs(self) -> set[str]:
        return self.added | self.speakers

    def add(self, mac: str, *, by_user: bool = False) -> bool:
        """Returns True when the set changed (so the filter must be rebuilt)."""
        mac = mac.lower()
        if not _MAC.match(mac):
            raise ValueError(f"not a MAC address: {mac!r}")
        target = self.added if by_user else self.speakers
        if mac in target or mac in self.macs():
            target.add(mac)
            return False
        target.add(mac)
        return True

    def remove(self, mac: str) -> bool:
        """Stop watching a device the user added (a speaker stays watched while it is one)."""
        mac = mac.lower()
        before = self.macs()
        self.added.discard(mac)
        self.speakers.discard(mac)
        return self.macs() != before

    def filter_expression(self) -> str | None:
        """tcpdump syntax; None means no filter (capture everything)."""
        macs = sorted(self.macs())
        if self.watch_all or len(macs) > MAX_FILTER_HOSTS:
            return None
        hosts = " or ".join(f"ether host {m}" for m in macs)
        return f"{DISCOVERY} or {hosts}" if hosts else DISCOVERY

