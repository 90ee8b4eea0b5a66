"""Vectorized header decode: a whole FrameBatch at once, with numpy gathers at computed offsets.

Every layer works on the rows that reached it (an index array, or all rows as a slice when
the batch is uniform, which is the common case) and writes its fields into full-size output
arrays. A row that fails a check is marked malformed and drops out of the later layers, so its
fields after the failure stay 0. Reads never leave the buffer: every gather index is clamped,
and a value read at a clamped index is only used where the length checks passed.

Conventions beyond frames.Decoded's docstrings:
- ports and tcp_flags are 0 for everything but TCP and UDP (ICMP type/code are not ports);
- a non-first IP fragment (IPv4 offset != 0, or an IPv6 fragment header with offset != 0)
  keeps its protocol but has no transport header: ports 0, payload = the fragment data;
- the payload of ICMP/ICMPv6 starts after its 8-byte header; for other protocols it is the
  whole IP payload;
- an IPv4 total length (or IPv6 payload length) of 0 means segmentation offload or a
  jumbogram: the length is taken from the frame's wire length;
- payload_cap never counts Ethernet padding or bytes beyond the frame's caplen.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Final

import numpy as np

from spyglass.core.decodecols import (
    HEAD,
    FrameBytes,
    Head,
    Idx,
    Out,
    block_col,
    block_field,
    block_mac,
    most_rows_of,
    put_rows,
    rows_of,
    sub_rows,
)
from spyglass.core.frames import (
    I64,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    U64,
    B,
    Decoded,
    FrameBatch,
)

__all__ = ["decode", "ip_key", "ip_str", "is_v4_mapped", "mac_str"]

ETH_IPV4: Final = 0x0800
ETH_IPV6: Final = 0x86DD
ETH_ARP: Final = 0x0806
_VLAN_TPIDS: Final = (0x8100, 0x88A8, 0x9100)
_V4_MAPPED: Final = np.uint64(0xFFFF << 32)
_MAX_EXT: Final = 8  # longer extension chains are treated as malformed



_L3_BLOCK: Final = 20  # IPv4 header without options
_L4_BLOCK: Final = 16  # fixed part of a TCP header up to its flags, UDP and ICMP headers


def decode(batch: FrameBatch) -> Decoded:
    """Decode link, network and transport headers of every frame in ``batch``."""
    out = Out(batch)
    n = out.n
    if n == 0:
        return _finish(batch, out)
    g = FrameBytes(batch.buf)
    off = batch.offset.astype(np.int64, copy=False)
    end = off + batch.caplen
    wend = off + batch.wirelen  # where the frame ends on the wire
    head = Head(g, off)
    first = int(batch.linktype[0])
    if bool((batch.linktype == first).all()):
        _link(head, out, first, slice(None), off, end)
    else:
        for lt in np.unique(batch.linktype).tolist():
            rows = np.flatnonzero(batch.linktype == lt)
            _link(head, out, int(lt), rows, off[rows], end[rows])
    _vlans(head, out, end)
    ok = ~out.malformed
    _ipv4(head, out, ok & (out.ethertype == ETH_IPV4), end, wend)
    v6 = ok & (out.ethertype == ETH_IPV6)
    if v6.any():
        _ipv6(head, out, rows_of(v6), end, wend)
    _transport(head, out, end)
    return _finish(batch, out)


def _finish(batch: FrameBatch, out: Out) -> Decoded:
    return Decoded(
        ts=batch.ts,
        wirelen=batch.wirelen,
        src_mac=out.src_mac,
        dst_mac=out.dst_mac,
        ethertype=out.ethertype.astype(np.uint16),
        vlan=out.vlan,
        ipver=out.ipver,
        src_hi=out.src_hi,
        src_lo=out.src_lo,
        dst_hi=out.dst_hi,
        dst_lo=out.dst_lo,
        proto=out.proto,
        sport=out.sport,
        dport=out.dport,
        tcp_flags=out.tcp_flags,
        payload_len=out.payload_len,
        payload_off=out.payload_off,
        payload_cap=out.payload_cap,
        malformed=out.malformed,
    )


def _link(head: Head, out: Out, lt: int, rows: Idx, off: I64, end: I64) -> None:
    """Link-layer header: MACs, ethertype and the network header offset."""
    cap = end - off
    blk = head.rows(rows)
    w = HEAD
    if lt == LINKTYPE_ETHERNET:
        short = cap < 14
        dst, src, et = block_mac(blk, w, 0), block_mac(blk, w, 6), block_col(blk, w, 12, ">u2")
        if short.any():
            dst[short] = src[short] = et[short] = 0
        out.dst_mac[rows] = dst
        out.src_mac[rows] = src
        l3 = off + 14
    elif lt == LINKTYPE_LINUX_SLL:
        short = cap < 16
        has_mac = ~short & (block_col(blk, w, 4, ">u2") == 6)
        out.src_mac[rows] = np.where(has_mac, block_mac(blk, w, 6), 0)
        et = np.where(short, 0, block_col(blk, w, 14, ">u2"))
        l3 = off + 16
    elif lt == LINKTYPE_LINUX_SLL2:
        short = cap < 20
        has_mac = ~short & (block_col(blk, w, 11, "u1") == 6)
        out.src_mac[rows] = np.where(has_mac, block_mac(blk, w, 12), 0)
        et = np.where(short, 0, block_col(blk, w, 0, ">u2"))
        l3 = off + 20
    elif lt in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        short = cap < 1
        if lt == LINKTYPE_RAW:
            ver = block_col(blk, w, 0, "u1") >> 4
            et = np.where(ver == 4, ETH_IPV4, np.where(ver == 6, ETH_IPV6, 0))
            short = short | (et == 0)  # raw IP that is neither v4 nor v6
        else:
            et = np.full(off.shape, ETH_IPV4 if lt == LINKTYPE_IPV4 else ETH_IPV6, np.int64)
        l3 = off
    elif lt == LINKTYPE_NULL:
        short = cap < 4
        # The family is in the capturing host's byte order; every value we know fits a byte.
        first = block_col(blk, w, 0, "u1")
        fam = np.where(first != 0, first, block_col(blk, w, 3, "u1"))
        v6fam = (fam == 10) | (fam == 24) | (fam == 28) | (fam == 30)
        et = np.where(short, 0, np.where(fam == 2, ETH_IPV4, np.where(v6fam, ETH_IPV6, 0)))
        l3 = off + 4
    else:
        short = np.ones(off.shape, np.bool_)
        et = np.zeros(off.shape, np.int64)
        l3 = off
    out.ethertype[rows] = et
    out.l3[rows] = l3
    out.bad(rows, short)


def _vlans(head: Head, out: Out, end: I64) -> None:
    """Skip up to two 802.1Q/802.1ad tags; ``vlan`` keeps the outermost id."""
    for depth in range(2):
        et = out.ethertype
        tagged = (et == _VLAN_TPIDS[0]) | (et == _VLAN_TPIDS[1]) | (et == _VLAN_TPIDS[2])
        tagged &= ~out.malformed
        if not tagged.any():
            return
        rows = np.flatnonzero(tagged)
        l3 = out.l3[rows]
        short = end[rows] - l3 < 4
        blk = head.block(rows, l3, 4)
        if depth == 0:
            out.vlan[rows] = np.where(short, 0, block_col(blk, 4, 0, ">u2") & 0x0FFF)
        out.ethertype[rows] = np.where(short, 0, block_col(blk, 4, 2, ">u2"))
        out.l3[rows] = l3 + 4
        out.bad(rows, short)


def _ipv4(head: Head, out: Out, sel: B, end_all: I64, wend_all: I64) -> None:
    rows, where = most_rows_of(sel)
    p = out.l3[rows]
    if p.size == 0:
        return
    w = _L3_BLOCK
    blk = head.block(rows, p, w, where)
    end = end_all[rows]
    room = wend_all[rows] - p  # bytes of network layer on the wire
    vihl = block_col(blk, w, 0, "u1")
    hlen = (vihl & 15) * 4
    total = block_col(blk, w, 2, ">u2")
    total = np.where(total == 0, room, total)  # 0 = segmentation offload: the frame tells
    fail = (end - p < 20) | (vihl >> 4 != 4) | (hlen < 20) | (end - p < hlen)
    fail |= (total < hlen) | (total > room)
    rows, where, good = out.drop(rows, fail, where)
    if good is not None:
        p, hlen, total, blk = p[good], hlen[good], total[good], blk[good]
        if p.size == 0:
            return
    put_rows(out.ipver, rows, 4, where)
    put_rows(out.src_lo, rows, block_field(blk, 12, ">u4") | _V4_MAPPED, where)
    put_rows(out.dst_lo, rows, block_field(blk, 16, ">u4") | _V4_MAPPED, where)
    put_rows(out.proto, rows, block_field(blk, 9, "u1"), where)
    put_rows(out.l4, rows, p + hlen, where)
    put_rows(out.l4len, rows, total - hlen, where)
    put_rows(out.frag, rows, (block_field(blk, 6, ">u2") & 0x1FFF) != 0, where)


def _ipv6(head: Head, out: Out, rows: Idx, end_all: I64, wend_all: I64) -> None:
    p = out.l3[rows]
    end = end_all[rows]
    room = wend_all[rows] - p - 40
    blk = head.block(rows, p, 40)
    plen = block_col(blk, 40, 4, ">u2")
    plen = np.where(plen == 0, room, plen)  # jumbogram or offload: the frame tells
    fail = (end - p < 40) | (block_col(blk, 40, 0, "u1") >> 4 != 6) | (plen > room)
    good = ~fail
    out.bad(rows, fail)
    if not good.all():
        rows = sub_rows(rows, good)
        p, end, plen, blk = p[good], end[good], plen[good], blk[good]
        if p.size == 0:
            return
    out.ipver[rows] = 6
    out.src_hi[rows] = block_field(blk, 8, ">u8")
    out.src_lo[rows] = block_field(blk, 16, ">u8")
    out.dst_hi[rows] = block_field(blk, 24, ">u8")
    out.dst_lo[rows] = block_field(blk, 32, ">u8")
    nh = block_col(blk, 40, 6, "u1")
    l4 = p + 40
    l4len = plen
    frag = np.zeros(p.shape, np.bool_)
    bad = np.zeros(p.shape, np.bool_)
    for _ in range(_MAX_EXT):
        ext = (nh == 0) | (nh == 43) | (nh == 44) | (nh == 60) | (nh == 51)
        ext &= ~frag & ~bad
        if not ext.any():
            break
        eb = head.block(rows, l4, 4)
        size = block_col(eb, 4, 1, "u1")
        hl = np.where(nh == 44, 8, np.where(nh == 51, (size + 2) * 4, (size + 1) * 8))
        cut = ext & ((end - l4 < 8) | (end - l4 < hl) | (l4len < hl))
        bad |= cut
        step = ext & ~cut
        # A fragment header with a non-zero offset: what follows is mid-datagram data.
        frag |= step & (nh == 44) & ((block_col(eb, 4, 2, ">u2") >> 3) != 0)
        nh = np.where(step, block_col(eb, 4, 0, "u1"), nh)
        l4 = np.where(step, l4 + hl, l4)
        l4len = np.where(step, l4len - hl, l4len)
    else:
        bad |= ~frag & ((nh == 0) | (nh == 43) | (nh == 44) | (nh == 60) | (nh == 51))
    out.bad(rows, bad)
    if bad.any():
        # Addresses are valid; the protocol and what follows are not.
        keep = ~bad
        rows = sub_rows(rows, keep)
        nh, l4, l4len, frag = nh[keep], l4[keep], l4len[keep], frag[keep]
    out.proto[rows] = nh
    out.l4[rows] = l4
    out.l4len[rows] = l4len
    out.frag[rows] = frag


def _transport(head: Head, out: Out, end_all: I64) -> None:
    """TCP/UDP/ICMP headers and the payload window of every IP row still well-formed."""
    ip = (out.ipver != 0) & ~out.malformed
    if not ip.any():
        return
    rows, where = most_rows_of(ip)
    proto = out.proto[rows]
    l4 = out.l4[rows]
    l4len = out.l4len[rows]
    w = _L4_BLOCK
    blk = head.block(rows, l4, w, where)
    avail = end_all[rows] - l4  # captured bytes from the transport header on
    whole = out.frag[rows]  # non-first fragments: everything is payload
    tcp = (proto == 6) & ~whole
    udp = (proto == 17) & ~whole
    icmp = ((proto == 1) | (proto == 58)) & ~whole
    small = udp | icmp
    need = np.where(tcp, 20, np.where(small, 8, 0))  # bytes the fixed header needs
    tcp_word = block_col(blk, w, 12, ">u2")  # data offset nibble and the flags byte
    hdr = np.where(tcp, (tcp_word >> 12) * 4, need)
    fail = (avail < need) | (l4len < need)
    fail |= tcp & ((hdr < 20) | (hdr > l4len) | (hdr > avail))
    paylen = l4len - hdr
    if udp.any():
        ulen = block_col(blk, w, 4, ">u2")
        ulen = np.where(ulen == 0, l4len, ulen)  # 0: IPv6 jumbogram
        fail |= udp & ((ulen < 8) | (ulen > l4len))
        paylen = np.where(udp, ulen - 8, paylen)
    rows, where, good = out.drop(rows, fail, where)
    if good is not None:
        blk, tcp, udp = blk[good], tcp[good], udp[good]
        tcp_word, hdr, paylen = tcp_word[good], hdr[good], paylen[good]
        l4, avail = l4[good], avail[good]
    has_ports = tcp | udp
    if isinstance(rows, slice):
        # Ports and flags are still 0 where there are none: write only the rows that have.
        np.copyto(out.sport, block_field(blk, 0, ">u2"), where=has_ports if where is None
                  else has_ports & where)
        np.copyto(out.dport, block_field(blk, 2, ">u2"), where=has_ports if where is None
                  else has_ports & where)
        np.copyto(out.tcp_flags, tcp_word & 0xFF, casting="unsafe",
                  where=tcp if where is None else tcp & where)
    else:
        out.sport[rows] = np.where(has_ports, block_field(blk, 0, ">u2"), 0)
        out.dport[rows] = np.where(has_ports, block_field(blk, 2, ">u2"), 0)
        out.tcp_flags[rows] = np.where(tcp, tcp_word & 0xFF, 0)
    put_rows(out.payload_off, rows, l4 + hdr, where)
    put_rows(out.payload_len, rows, paylen, where)
    put_rows(out.payload_cap, rows, np.clip(avail - hdr, 0, paylen), where)


# ---- helpers for the rest of the code ------------------------------------------------------


# A home has a few dozen MACs and a few thousand addresses, formatted again for every packet
# of the slow path and every new flow: cache them.
@lru_cache(maxsize=1 << 14)
def mac_str(mac: int) -> str:
    """48-bit MAC integer as ``aa:bb:cc:dd:ee:ff``."""
    return int(mac).to_bytes(6, "big").hex(":")


@lru_cache(maxsize=1 << 16)
def ip_str(hi: int, lo: int) -> str:
    """Address from its two 64-bit halves; IPv4-mapped addresses print as a dotted quad."""
    hi, lo = int(hi), int(lo)
    if hi == 0 and lo >> 32 == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def ip_key(text: str) -> tuple[int, int]:
    """Inverse of ip_str: ``(hi, lo)`` of an IPv4 (stored IPv4-mapped) or IPv6 address."""
    addr = ipaddress.ip_address(text.strip())
    value = int(addr) | (0xFFFF << 32) if addr.version == 4 else int(addr)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def is_v4_mapped(hi: U64, lo: U64) -> B:
    """Which addresses of the arrays are IPv4 (stored IPv4-mapped)."""
    mapped: B = (hi == 0) & ((lo >> np.uint64(32)) == np.uint64(0xFFFF))
    return mapped
