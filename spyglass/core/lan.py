"""Which addresses are the home's and which are the internet's, for whole arrays at once.

Addresses arrive as 128-bit (hi, lo) uint64 pairs with IPv4 mapped into ::ffff:0:0/96 (see
frames.Decoded). "Local" means the LAN itself plus link-local, multicast and broadcast: traffic
that never leaves the house. Everything else is remote.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from spyglass.core.frames import U64, B

_V4_MAPPED_HI = np.uint64(0)
_V4_TAG = np.uint64(0xFFFF)
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

DEFAULT_LAN = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
# Never the internet, whatever --lan says.
ALWAYS_LOCAL = (
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "0.0.0.0/32",
    "fe80::/10",
    "ff00::/8",
    "::/128",
    "::1/128",
    "127.0.0.0/8",
)


@dataclass(frozen=True, slots=True)
class _Net:
    v4: bool
    net_hi: np.uint64
    net_lo: np.uint64
    mask_hi: np.uint64
    mask_lo: np.uint64


def _net(cidr: str) -> _Net:
    n = ipaddress.ip_network(cidr, strict=False)
    if n.version == 4:
        mask = (0xFFFFFFFF << (32 - n.prefixlen)) & 0xFFFFFFFF
        return _Net(True, np.uint64(0), np.uint64(int(n.network_address)), np.uint64(0),
                    np.uint64(mask))
    value = int(n.network_address)
    full = ((1 << 128) - 1) ^ ((1 << (128 - n.prefixlen)) - 1)
    return _Net(False, np.uint64(value >> 64), np.uint64(value & (2**64 - 1)),
                np.uint64(full >> 64), np.uint64(full & (2**64 - 1)))


class LanClassifier:
    """``is_local(hi, lo)`` for arrays of addresses; ``lan`` lists the home's own networks."""

    def __init__(self, lan: list[str] | tuple[str, ...] | None = None) -> None:
        self.lan = tuple(lan) if lan else DEFAULT_LAN
        for cidr in self.lan:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad CIDR
        self._nets = [_net(c) for c in (*self.lan, *ALWAYS_LOCAL)]

    def is_local(self, hi: U64, lo: U64) -> B:
        is_v4 = (hi == _V4_MAPPED_HI) & ((lo >> _S32) == _V4_TAG)
        v4 = lo & _M32
        out = np.zeros(hi.shape, dtype=np.bool_)
        for n in self._nets:
            if n.v4:
                out |= is_v4 & ((v4 & n.mask_lo) == n.net_lo)
            else:
                out |= ~is_v4 & ((hi & n.mask_hi) == n.net_hi) & ((lo & n.mask_lo) == n.net_lo)
        return out
