"""LanClassifier.is_local against Python's ipaddress, address by address."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest

from spyglass.core.decode import ip_key
from spyglass.core.lan import ALWAYS_LOCAL, DEFAULT_LAN, LanClassifier

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _reference(text: str, nets: list[_Net]) -> bool:
    addr = ipaddress.ip_address(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # stored as IPv4 (frames.Decoded)
    return any(addr.version == n.version and addr in n for n in nets)


def _addresses(rng: random.Random) -> list[str]:
    """Addresses on, inside, just outside and far from the edges of the networks below."""
    out = [
        "0.0.0.0", "0.0.0.1", "255.255.255.255", "255.255.255.254", "127.0.0.1", "126.255.255.255",
        "10.0.0.1", "9.255.255.255", "11.0.0.0", "172.16.0.0", "172.31.255.255", "172.32.0.0",
        "172.15.255.255", "192.168.1.1", "192.168.1.255", "192.168.2.1", "192.169.0.1",
        "169.254.3.4", "224.0.0.251", "239.255.255.250", "240.0.0.1", "8.8.8.8", "100.64.0.1",
        "100.127.255.255", "100.128.0.0", "::", "::1", "::2", "::ffff:0:0", "::ffff:c0a8:101",
        "::c0a8:101", "64:ff9b::c0a8:101", "fe80::1", "febf::1", "fec0::1", "ff02::fb",
        "fc00::1", "fdff:ffff::1", "fe00::1", "2001:db8::1", "2001:db9::1", "2600::1",
    ]
    for _ in range(400):
        out.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        out.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
        # Near the networks: a random host in a random network's neighbourhood.
        base = int(ipaddress.ip_address(rng.choice(["192.168.1.0", "172.16.0.0", "10.1.2.3"])))
        out.append(str(ipaddress.IPv4Address(base ^ rng.getrandbits(rng.randrange(33)))))
    return out


@pytest.mark.parametrize("lan", [
    None,
    ["192.168.1.0/24"],
    ["192.168.1.128/25", "192.168.0.0/16"],
    ["10.1.2.3/32", "2001:db8::/32", "172.16.0.0/12"],
    ["192.168.1.0/24", "192.168.1.0/28", "100.64.0.0/10"],
    ["0.0.0.0/0"],
    ["::/0"],
])
def test_is_local_matches_ipaddress(lan: list[str] | None) -> None:
    texts = _addresses(random.Random(7))
    nets = [ipaddress.ip_network(c) for c in (*(lan or DEFAULT_LAN), *ALWAYS_LOCAL)]
    keys = [ip_key(t) for t in texts]
    hi = np.array([k[0] for k in keys], np.uint64)
    lo = np.array([k[1] for k in keys], np.uint64)
    got = LanClassifier(lan).is_local(hi, lo)
    want = np.array([_reference(t, nets) for t in texts])
    assert got.dtype == np.bool_
    assert [t for t, g, w in zip(texts, got, want, strict=True) if g != w] == []
    # A strided (non-contiguous) view gives the same answers.
    assert np.array_equal(LanClassifier(lan).is_local(hi[::3], lo[::3]), want[::3])


def test_ipv4_mapped_bits_with_a_high_word_are_ipv6() -> None:
    """::ffff:a.b.c.d only with hi == 0; the same low word under another high word is IPv6."""
    lan = LanClassifier(["192.168.0.0/16", "2001:db8::/32"])
    _, lo = ip_key("192.168.1.1")
    hi = np.array([0, 0x20010DB8 << 32, 0x20010DB9 << 32], np.uint64)
    got = lan.is_local(hi, np.full(3, lo, np.uint64))
    assert got.tolist() == [True, True, False]


def test_empty() -> None:
    out = LanClassifier().is_local(np.zeros(0, np.uint64), np.zeros(0, np.uint64))
    assert out.shape == (0,) and out.dtype == np.bool_
