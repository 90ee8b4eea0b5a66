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
_M32 = np.uint64(0xFFFFFFFF)
_S16 = np.uint64(16)
_V4_TAG_16 = np.uint64(0xFFFF << 16)
_NOT_V4 = np.uint64(1 << 16)

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


_LOCAL, _LONGER = 1, 2  # entries of the IPv4 table by top 16 bits (0: not local)


@dataclass(frozen=True, slots=True)
class _Net:
    v4: bool
    prefix: int
    net_hi: np.uint64
    net_lo: np.uint64
    mask_hi: np.uint64
    mask_lo: np.uint64


def _net(cidr: str) -> _Net:
    n = ipaddress.ip_network(cidr, strict=False)
    if n.version == 4:
        mask = (0xFFFFFFFF << (32 - n.prefixlen)) & 0xFFFFFFFF
        return _Net(True, n.prefixlen, np.uint64(0), np.uint64(int(n.network_address)),
                    np.uint64(0), np.uint64(mask))
    value = int(n.network_address)
    full = ((1 << 128) - 1) ^ ((1 << (128 - n.prefixlen)) - 1)
    return _Net(False, n.prefixlen, np.uint64(value >> 64), np.uint64(value & (2**64 - 1)),
                np.uint64(full >> 64), np.uint64(full & (2**64 - 1)))


class LanClassifier:
    """``is_local(hi, lo)`` for arrays of addresses; ``lan`` lists the home's own networks."""

    def __init__(self, lan: list[str] | tuple[str, ...] | None = None) -> None:
        self.lan = tuple(lan) if lan else DEFAULT_LAN
        for cidr in self.lan:
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad CIDR
        self._nets = [_net(c) for c in (*self.lan, *ALWAYS_LOCAL)]
        self._v4_long = [n for n in self._nets if n.v4 and n.prefix > 16]
        self._v6 = [n for n in self._nets if not n.v4]
        # IPv4 by a table lookup on the top 16 bits: a /16 or shorter network decides the
        # whole entry; a longer one marks it for an exact look at the rows that land there.
        table = np.zeros((1 << 16) + 1, np.uint8)
        for n in self._nets:
            if n.v4 and n.prefix <= 16:
                start = int(n.net_lo) >> 16
                table[start : start + (1 << (16 - n.prefix))] = _LOCAL
        for n in self._v4_long:
            top = int(n.net_lo) >> 16
            if table[top] != _LOCAL:
                table[top] = _LONGER
        self._v4_table = table

    def is_local(self, hi: U64, lo: U64) -> B:
        # Bits 16..47 of an IPv4-mapped address are 0xffff and the top 16 bits of the IPv4
        # address: flip the tag and any such row has its table entry's index (< 2**16); every
        # other row is clipped to the extra, always-zero entry 2**16.
        idx = lo >> _S16
        idx ^= _V4_TAG_16
        np.minimum(idx, _NOT_V4, out=idx)
        entry = self._v4_table[idx.view(np.int64)]
        out: B = entry == _LOCAL
        is_v4 = idx != _NOT_V4
        if hi.any():  # only IPv6 has a non-zero high word
            hi0 = hi == _V4_MAPPED_HI
            out &= hi0
            is_v4 &= hi0
        if self._v4_long:
            longer = np.flatnonzero((entry == _LONGER) & is_v4)
            if longer.size:
                v4 = lo[longer] & _M32
                hit = np.zeros(longer.size, np.bool_)
                for n in self._v4_long:
                    hit |= (v4 & n.mask_lo) == n.net_lo
                out[longer] = hit
        if not is_v4.all():
            v6 = np.flatnonzero(~is_v4)
            h, low = hi[v6], lo[v6]
            hit = np.zeros(v6.size, np.bool_)
            for n in self._v6:
                hit |= ((h & n.mask_hi) == n.net_hi) & ((low & n.mask_lo) == n.net_lo)
            out[v6] = hit
        return out
