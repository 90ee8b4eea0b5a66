"""MAC address -> manufacturer, from netaddr's bundled IEEE OUI registry (offline, no network).

Choice for locally administered addresses (bit 0x02 of the first octet set): phones and laptops
randomise their Wi-Fi MAC per network, so no vendor is registered for them; we return
:data:`RANDOMISED` rather than ``None`` so the device list can say *why* there is no vendor.
Multicast / broadcast addresses (bit 0x01) are not devices: ``None``. So is anything that does
not parse as a 48-bit MAC.

Importing netaddr's registry parses both of its index files into dicts (~0.15 s, longer than
analysing a small capture), so we read netaddr's files ourselves: one search in the raw index per
OUI, then the record itself, parsed as netaddr parses it. Where the files are not where we expect
them we fall back to netaddr's own lookup.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path

RANDOMISED = "randomised MAC"

_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def _digits(mac: str) -> str | None:
    digits = re.sub(r"[:\-.\s]", "", mac.strip().lower())
    return digits if _HEX12.match(digits) else None


class _Registry:
    """netaddr's oui.txt through its oui.idx (lines ``oui,offset,size``, in file order)."""

    def __init__(self, folder: Path) -> None:
        self._index = b"\n" + (folder / "oui.idx").read_bytes()
        self._text = folder / "oui.txt"

    def org(self, oui: int) -> str | None:
        at = self._index.find(b"\n%d," % oui)
        if at < 0:
            return None
        end = self._index.find(b"\n", at + 1)
        _, offset, size = self._index[at + 1 : end if end >= 0 else None].split(b",")
        with self._text.open("rb") as fh:
            fh.seek(int(offset))
            record = fh.read(int(size)).decode("utf-8")
        for line in record.split("\n"):
            line = line.strip()
            if "(hex)" in line:
                parts = line.split(None, 2)
                return parts[2].strip() if len(parts) > 2 else None
        return None


@lru_cache(maxsize=1)
def _registry() -> _Registry | None:
    spec = importlib.util.find_spec("netaddr")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "eui"
    try:
        return _Registry(folder)
    except OSError:
        return None


def _netaddr_org(oui: int) -> str | None:
    from netaddr import OUI, NotRegisteredError

    try:
        return str(OUI(oui).registration(0).org).strip() or None
    except (NotRegisteredError, IndexError, ValueError):
        return None


@lru_cache(maxsize=4096)
def _vendor_for_oui(oui: int) -> str | None:
    reg = _registry()
    if reg is None:
        return _netaddr_org(oui)
    try:
        return reg.org(oui) or None
    except (OSError, ValueError):
        return _netaddr_org(oui)


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
