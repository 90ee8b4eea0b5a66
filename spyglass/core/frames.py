"""Packets in bulk: the struct-of-arrays types shared by readers, the decoder and the pipeline.

Per-packet Python objects cost more than the whole decode, so packets travel in batches: one
buffer plus numpy arrays indexed by packet. A file reader hands out slices of the file itself;
the live agent concatenates the frames it received.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
U64 = npt.NDArray[np.uint64]
U16 = npt.NDArray[np.uint16]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

# Link-layer header types (tcpdump.org/linktypes.html) the decoder understands.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276


@dataclass(slots=True)
class FrameBatch:
    """Raw frames: ``buf[offset[i] : offset[i] + caplen[i]]`` is frame i as captured."""

    buf: bytes
    offset: I64
    caplen: I32
    wirelen: I32  # length on the wire (>= caplen when the snaplen cut the frame)
    ts: F64  # UNIX epoch seconds
    linktype: U16

    def __len__(self) -> int:
        return int(self.offset.shape[0])


@dataclass(slots=True)
class Decoded:
    """Header fields of every frame of a batch, one array per field.

    IP addresses are 128-bit, split in two uint64 halves; IPv4 is stored IPv4-mapped
    (``::ffff:a.b.c.d``, so ``hi == 0`` and ``lo >> 32 == 0xffff``) to keep one code path.
    MACs are 48-bit integers (0 where the link layer has none, e.g. raw IP).
    """

    ts: F64
    wirelen: I32
    src_mac: U64
    dst_mac: U64
    ethertype: U16  # after VLAN tags; 0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP
    vlan: U16  # outermost 802.1Q VLAN id, 0 when untagged
    ipver: U8  # 4, 6, or 0 for non-IP
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    proto: U8  # IP protocol after IPv6 extension headers: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
    sport: U16
    dport: U16
    tcp_flags: U8
    payload_len: I32  # transport payload length as the headers declare it (on the wire)
    payload_off: I64  # offset of the transport payload in the batch buffer
    payload_cap: I32  # how many payload bytes were captured (may be < payload_len)
    malformed: B  # headers could not be parsed; fields after the failure are 0

    def __len__(self) -> int:
        return int(self.ts.shape[0])
