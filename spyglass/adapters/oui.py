"""MAC address -> manufacturer, from netaddr's bundled IEEE OUI registry (offline, no network).

Choice for locally administered addresses (bit 0x02 of the first octet set): phones and laptops
randomise their Wi-Fi MAC per network, so no vendor is registered for them; we return
:data:`RANDOMISED` rather than ``None`` so the device list can say *why* there is no vendor.
Multicast / broadcast addresses (bit 0x01) are not devices: ``None``. So is anything that does
not parse as a 48-bit MAC.
"""

from __future__ import annotations

import re
from functools import lru_cache

from netaddr import OUI, NotRegisteredError

RANDOMISED = "randomised MAC"

_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def _digits(mac: str) -> str | None:
    digits = re.sub(r"[:\-.\s]", "", mac.strip().lower())
    return digits if _HEX12.match(digits) else None


@lru_cache(maxsize=4096)
def _vendor_for_oui(oui: int) -> str | None:
    try:
        reg = OUI(oui)
        return str(reg.registration(0).org).strip() or None
    except (NotRegisteredError, IndexError, ValueError):
        return None


def vendor_for_mac(mac: str) -> str | None:
    """The organisation the MAC's OUI is registered to, e.g. ``"Amazon Technologies Inc."``;
    :data:`RANDOMISED` for a locally administered MAC; ``None`` for multicast, unregistered or
    unparseable input."""
    digits = _digits(mac)
    if digits is None or digits == "000000000000":  # all zero: "no address" (ARP requests)
        return None
    oui = int(digits[:6], 16)
    first = oui >> 16
    if first & 0x01:
        return None
    if first & 0x02:
        return RANDOMISED
    return _vendor_for_oui(oui)
