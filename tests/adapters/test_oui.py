from __future__ import annotations

import pytest

from spyglass.adapters import oui
from spyglass.adapters.oui import RANDOMISED, vendor_for_mac


@pytest.mark.parametrize(
    ("mac", "vendor"),
    [
        # What netaddr's bundled IEEE registry really says for the captures' speakers.
        ("68:db:f5:c1:c0:01", "Amazon Technologies Inc."),  # Echo Dot (CICIoT2022)
        ("4c:ef:c0:03:f2:38", "Amazon Technologies Inc."),  # Echo (Kennedy et al.)
        ("c4:95:00:e3:93:2f", "Amazon Technologies Inc."),  # Echo (Kennedy et al.)
        ("1c:f2:9a:c1:c0:05", "Google, Inc."),  # Nest Mini
        ("48:a6:b8:c1:c0:06", "Sonos, Inc."),  # Sonos One
        ("d4:a3:3d:6b:1e:97", "Apple, Inc."),  # HomePod
    ],
)
def test_capture_speakers(mac: str, vendor: str) -> None:
    assert vendor_for_mac(mac) == vendor


@pytest.mark.parametrize(
    "mac", ["68-DB-F5-C1-C0-01", "68DB.F5C1.C001", "68dbf5c1c001", " 68:db:f5:c1:c0:01\n"]
)
def test_separators_and_case(mac: str) -> None:
    assert vendor_for_mac(mac) == "Amazon Technologies Inc."


def test_randomised_multicast_and_junk() -> None:
    assert vendor_for_mac("da:a1:19:12:34:56") == RANDOMISED  # locally administered
    assert vendor_for_mac("02:00:00:00:00:01") == RANDOMISED
    assert vendor_for_mac("01:00:5e:00:00:fb") is None  # mDNS multicast
    assert vendor_for_mac("33:33:00:00:00:fb") is None  # IPv6 multicast
    assert vendor_for_mac("ff:ff:ff:ff:ff:ff") is None
    assert vendor_for_mac("00:00:00:00:00:00") is None  # "unknown" in ARP requests
    for junk in ("", "zz:zz:zz:zz:zz:zz", "68:db:f5", "68:db:f5:c1:c0:01:02"):
        assert vendor_for_mac(junk) is None


def test_unregistered_oui_is_none() -> None:
    # 00:00:00 is Xerox; find an unassigned, globally administered block by walking a few.
    unregistered = [f"{b:02x}:ff:ff:00:00:01" for b in range(0x04, 0x100, 4)]
    assert any(vendor_for_mac(m) is None for m in unregistered)


def test_lookups_are_cached_per_oui() -> None:
    oui._vendor_for_oui.cache_clear()
    for last in range(50):
        vendor_for_mac(f"68:db:f5:00:00:{last:02x}")
    info = oui._vendor_for_oui.cache_info()
    assert (info.misses, info.hits) == (1, 49)


def test_every_labelled_device_has_a_vendor(labels: list[dict[str, str]]) -> None:
    for row in labels:
        vendor = vendor_for_mac(row["device_mac"])
        assert vendor is not None, row["device_mac"]
        brand = row["device_model"].split()[0]  # Amazon / Google / Sonos / Apple
        assert vendor.startswith(brand), (row["device_mac"], vendor)
