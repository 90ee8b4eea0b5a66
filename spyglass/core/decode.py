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
from typing import Any, Final

import numpy as np
import numpy.typing as npt

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
_S16: Final = np.uint64(16)
_MAX_EXT: Final = 8  # longer extension chains are treated as malformed

Idx = Any  # a slice (all rows) or an index array
_MOST: Final = 0.75  # a selection of at least this share of rows is done as all rows + a mask


_HEAD: Final = 64  # link + IPv4 + TCP headers of the common frame
_L3_BLOCK: Final = 20  # IPv4 header without options
_L4_BLOCK: Final = 16  # fixed part of a TCP header up to its flags, UDP and ICMP headers
_TAIL: Final = 4096


class _Buf:
    """Reads at any byte offset of one buffer: fixed-size blocks and big-endian integers.

    Gathering a whole header block per row (a void-dtype view at every byte offset) costs about
    what one integer gather does, and the fields are then strided views of the compact copy,
    so each layer pays for one gather. Indices past the buffer are served from a zero-padded
    copy of its tail, so a block is never shifted and never read out of bounds.
    """

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.n = len(buf)
        base = max(self.n - _TAIL, 0)
        self._tail_base = base
        self._tail = bytes(buf[base:]) + bytes(64)
        self._views: dict[tuple[int, bool], npt.NDArray[np.void]] = {}

    def _view(self, width: int, tail: bool) -> npt.NDArray[np.void]:
        view = self._views.get((width, tail))
        if view is None:
            src = self._tail if tail else self.buf
            count = len(src) - width + 1
            view = np.ndarray((max(count, 0),), np.dtype(f"V{width}"), src, 0, (1,))
            self._views[(width, tail)] = view
        return view

    def block(self, idx: I64, width: int) -> npt.NDArray[np.void]:
        """``width`` bytes from every offset in ``idx``, as one contiguous (n,) void array."""
        last = self.n - width  # highest offset whose block lies inside the buffer
        if idx.size == 0:
            return np.zeros(0, np.dtype(f"V{width}"))
        if last >= 0 and int(idx.max()) <= last:
            return self._view(width, False)[idx]
        inside = np.maximum(np.minimum(idx, last), 0)
        out = self._view(width, False)[inside] if last >= 0 else np.zeros(idx.size, f"V{width}")
        late = idx > last
        rel = np.clip(idx[late] - self._tail_base, 0, len(self._tail) - 64)
        out[late] = self._view(width, True)[rel]
        return out

    def b(self, idx: I64) -> npt.NDArray[np.int64]:
        return _col(self.block(idx, 1), 1, 0, "u1")

    def w16(self, idx: I64) -> npt.NDArray[np.int64]:
        return _col(self.block(idx, 2), 2, 0, ">u2")


def _field(blocks: npt.NDArray[np.void], at: int, dtype: str) -> npt.NDArray[Any]:
    """Field at byte ``at`` of every block, as a view (the blocks may be a strided view of a
    larger contiguous array, see :meth:`_Head.block`)."""
    n = blocks.size
    if n == 0:
        return np.zeros(0, np.dtype(dtype))
    if blocks.flags.c_contiguous:
        return np.ndarray((n,), np.dtype(dtype), blocks, at, (blocks.itemsize,))
    base = blocks.base
    assert isinstance(base, np.ndarray)
    start = blocks.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return np.ndarray((n,), np.dtype(dtype), base, start + at, blocks.strides)


def _col(blocks: npt.NDArray[np.void], width: int, at: int, dtype: str) -> npt.NDArray[np.int64]:
    """Field at byte ``at`` of every block, as int64."""
    return _field(blocks, at, dtype).astype(np.int64)


def _mac(blocks: npt.NDArray[np.void], width: int, at: int) -> U64:
    """The 48-bit MAC at ``at``: one 8-byte read, the 2 bytes after it shifted out."""
    assert at + 8 <= width
    mac: U64 = _field(blocks, at, ">u8") >> _S16
    return mac


class _Head:
    """The first 64 bytes of every frame, gathered once from the (large, cache-cold) buffer.

    Later layers read their headers out of this compact copy, which stays in cache; only
    headers reaching past it (VLAN stacks, IP options, IPv6 extension chains) go back to
    the buffer.
    """

    def __init__(self, g: _Buf, off: I64) -> None:
        self.g = g
        self.off = off
        self.arr = g.block(off, _HEAD)
        self.start = np.arange(off.size, dtype=np.int64) * _HEAD
        self._views: dict[int, npt.NDArray[np.void]] = {}

    def rows(self, rows: Idx) -> npt.NDArray[np.void]:
        return self.arr if isinstance(rows, slice) else self.arr[rows]

    def block(
        self, rows: Idx, at: I64, width: int, where: B | None = None
    ) -> npt.NDArray[np.void]:
        """``width`` bytes at buffer offsets ``at`` (one per row of ``rows``); with ``where``
        (all rows), only the rows where it holds need to be right."""
        rel = at - self.off[rows]
        if isinstance(rows, slice) and rel.size:
            # Every row's header at the same place in its head (the common case: no VLAN
            # tags, no IP options): a strided view, nothing copied.
            r0 = int(rel[0] if where is None else rel[int(where.argmax())])
            same = rel == r0
            if where is not None:
                same |= ~where
            if 0 <= r0 <= _HEAD - width and bool(same.all()):
                return np.ndarray((rel.size,), np.dtype(f"V{width}"), self.arr, r0, (_HEAD,))
        flat = self.start[rows] + rel
        inside = (rel >= 0) & (rel <= _HEAD - width)
        view = self._views.get(width)
        if view is None:
            count = self.arr.size * _HEAD - width + 1
            view = np.ndarray((max(count, 0),), np.dtype(f"V{width}"), self.arr, 0, (1,))
            self._views[width] = view
        if inside.all():
            return view[flat]
        out = view[np.where(inside, flat, 0)] if view.size else self.g.block(at, width)
        outside = ~inside
        out[outside] = self.g.block(at[outside], width)
        return out


def _select(mask: B) -> Idx:
    """Rows where mask holds: a slice when that is every row (views, no gathers)."""
    rows = np.flatnonzero(mask)
    if rows.size == mask.size:
        return slice(None)
    return rows


def _select_most(mask: B) -> tuple[Idx, B | None]:
    """Rows where mask holds, as :func:`_select`; but when that is most rows, all of them
    (a slice) and the mask: working on every row and writing where the mask holds costs less
    than gathering and scattering nearly all of them."""
    count = int(np.count_nonzero(mask))
    if count == mask.size:
        return slice(None), None
    if count >= _MOST * mask.size:
        return slice(None), mask
    return np.flatnonzero(mask), None


def _put(dst: npt.NDArray[Any], rows: Idx, value: Any, where: B | None) -> None:
    """``dst[rows] = value``, or with ``where`` (rows all rows) only where it holds."""
    if where is None:
        dst[rows] = value
    else:
        np.copyto(dst, value, casting="unsafe", where=where)


def _sub(rows: Idx, keep: B) -> Idx:
    """Narrow ``rows`` to those where ``keep`` (indexed like ``rows``) holds."""
    if isinstance(rows, slice):
        return _select(keep)
    return rows[keep] if not keep.all() else rows


class _Out:
    """The output arrays, zero-filled, plus the working per-row layer state."""

    def __init__(self, batch: FrameBatch) -> None:
        n = len(batch)
        self.n = n
        self.src_mac = np.zeros(n, np.uint64)
        self.dst_mac = np.zeros(n, np.uint64)
        self.ethertype = np.zeros(n, np.int64)
        self.vlan = np.zeros(n, np.uint16)
        self.ipver = np.zeros(n, np.uint8)
        self.src_hi = np.zeros(n, np.uint64)
        self.src_lo = np.zeros(n, np.uint64)
        self.dst_hi = np.zeros(n, np.uint64)
        self.dst_lo = np.zeros(n, np.uint64)
        self.proto = np.zeros(n, np.uint8)
        self.sport = np.zeros(n, np.uint16)
        self.dport = np.zeros(n, np.uint16)
        self.tcp_flags = np.zeros(n, np.uint8)
        self.payload_len = np.zeros(n, np.int32)
        self.payload_off = np.zeros(n, np.int64)
        self.payload_cap = np.zeros(n, np.int32)
        self.malformed = np.zeros(n, np.bool_)
        self.l3 = np.zeros(n, np.int64)  # absolute offset of the network header
        self.l4 = np.zeros(n, np.int64)  # absolute offset of the transport header
        self.l4len = np.zeros(n, np.int64)  # transport bytes on the wire (IP payload)
        self.frag = np.zeros(n, np.bool_)  # a non-first fragment: no transport header

    def bad(self, rows: Idx, fail: B) -> None:
        if isinstance(rows, slice):
            self.malformed |= fail
        else:
            self.malformed[rows[fail]] = True


def decode(batch: FrameBatch) -> Decoded:
    """Decode link, network and transport headers of every frame in ``batch``."""
    out = _Out(batch)
    n = out.n
    if n == 0:
        return _finish(batch, out)
    g = _Buf(batch.buf)
    off = batch.offset.astype(np.int64, copy=False)
    end = off + batch.caplen
    wend = off + batch.wirelen  # where the frame ends on the wire
    head = _Head(g, off)
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
        _ipv6(head, out, _select(v6), end, wend)
    _transport(head, out, end)
    return _finish(batch, out)


def _finish(batch: FrameBatch, out: _Out) -> Decoded:
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


def _link(head: _Head, out: _Out, lt: int, rows: Idx, off: I64, end: I64) -> None:
    """Link-layer header: MACs, ethertype and the network header offset."""
    cap = end - off
    blk = head.rows(rows)
    w = _HEAD
    if lt == LINKTYPE_ETHERNET:
        short = cap < 14
        dst, src, et = _mac(blk, w, 0), _mac(blk, w, 6), _col(blk, w, 12, ">u2")
        if short.any():
            dst[short] = src[short] = et[short] = 0
        out.dst_mac[rows] = dst
        out.src_mac[rows] = src
        l3 = off + 14
    elif lt == LINKTYPE_LINUX_SLL:
        short = cap < 16
        has_mac = ~short & (_col(blk, w, 4, ">u2") == 6)
        out.src_mac[rows] = np.where(has_mac, _mac(blk, w, 6), 0)
        et = np.where(short, 0, _col(blk, w, 14, ">u2"))
        l3 = off + 16
    elif lt == LINKTYPE_LINUX_SLL2:
        short = cap < 20
        has_mac = ~short & (_col(blk, w, 11, "u1") == 6)
        out.src_mac[rows] = np.where(has_mac, _mac(blk, w, 12), 0)
        et = np.where(short, 0, _col(blk, w, 0, ">u2"))
        l3 = off + 20
    elif lt in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        short = cap < 1
        if lt == LINKTYPE_RAW:
            ver = _col(blk, w, 0, "u1") >> 4
            et = np.where(ver == 4, ETH_IPV4, np.where(ver == 6, ETH_IPV6, 0))
            short = short | (et == 0)  # raw IP that is neither v4 nor v6
        else:
            et = np.full(off.shape, ETH_IPV4 if lt == LINKTYPE_IPV4 else ETH_IPV6, np.int64)
        l3 = off
    elif lt == LINKTYPE_NULL:
        short = cap < 4
        # The family is in the capturing host's byte order; every value we know fits a byte.
        first = _col(blk, w, 0, "u1")
        fam = np.where(first != 0, first, _col(blk, w, 3, "u1"))
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


def _vlans(head: _Head, out: _Out, end: I64) -> None:
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
            out.vlan[rows] = np.where(short, 0, _col(blk, 4, 0, ">u2") & 0x0FFF)
        out.ethertype[rows] = np.where(short, 0, _col(blk, 4, 2, ">u2"))
        out.l3[rows] = l3 + 4
        out.bad(rows, short)


def _ipv4(head: _Head, out: _Out, sel: B, end_all: I64, wend_all: I64) -> None:
    rows, where = _select_most(sel)
    p = out.l3[rows]
    if p.size == 0:
        return
    w = _L3_BLOCK
    blk = head.block(rows, p, w, where)
    end = end_all[rows]
    room = wend_all[rows] - p  # bytes of network layer on the wire
    vihl = _col(blk, w, 0, "u1")
    hlen = (vihl & 15) * 4
    total = _col(blk, w, 2, ">u2")
    total = np.where(total == 0, room, total)  # 0 = segmentation offload: the frame tells
    fail = (end - p < 20) | (vihl >> 4 != 4) | (hlen < 20) | (end - p < hlen)
    fail |= (total < hlen) | (total > room)
    if where is not None:
        fail &= where
    out.bad(rows, fail)
    good = ~fail
    if where is not None:
        where = good & where
    elif not good.all():
        if isinstance(rows, slice):
            where = good
        else:
            rows = _sub(rows, good)
            p, hlen, total, blk = p[good], hlen[good], total[good], blk[good]
            if p.size == 0:
                return
    _put(out.ipver, rows, 4, where)
    _put(out.src_lo, rows, _field(blk, 12, ">u4") | _V4_MAPPED, where)
    _put(out.dst_lo, rows, _field(blk, 16, ">u4") | _V4_MAPPED, where)
    _put(out.proto, rows, _field(blk, 9, "u1"), where)
    _put(out.l4, rows, p + hlen, where)
    _put(out.l4len, rows, total - hlen, where)
    _put(out.frag, rows, (_field(blk, 6, ">u2") & 0x1FFF) != 0, where)


def _ipv6(head: _Head, out: _Out, rows: Idx, end_all: I64, wend_all: I64) -> None:
    p = out.l3[rows]
    end = end_all[rows]
    room = wend_all[rows] - p - 40
    blk = head.block(rows, p, 40)
    plen = _col(blk, 40, 4, ">u2")
    plen = np.where(plen == 0, room, plen)  # jumbogram or offload: the frame tells
    fail = (end - p < 40) | (_col(blk, 40, 0, "u1") >> 4 != 6) | (plen > room)
    good = ~fail
    out.bad(rows, fail)
    if not good.all():
        rows = _sub(rows, good)
        p, end, plen, blk = p[good], end[good], plen[good], blk[good]
        if p.size == 0:
            return
    out.ipver[rows] = 6
    out.src_hi[rows] = _field(blk, 8, ">u8")
    out.src_lo[rows] = _field(blk, 16, ">u8")
    out.dst_hi[rows] = _field(blk, 24, ">u8")
    out.dst_lo[rows] = _field(blk, 32, ">u8")
    nh = _col(blk, 40, 6, "u1")
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
        size = _col(eb, 4, 1, "u1")
        hl = np.where(nh == 44, 8, np.where(nh == 51, (size + 2) * 4, (size + 1) * 8))
        cut = ext & ((end - l4 < 8) | (end - l4 < hl) | (l4len < hl))
        bad |= cut
        step = ext & ~cut
        # A fragment header with a non-zero offset: what follows is mid-datagram data.
        frag |= step & (nh == 44) & ((_col(eb, 4, 2, ">u2") >> 3) != 0)
        nh = np.where(step, _col(eb, 4, 0, "u1"), nh)
        l4 = np.where(step, l4 + hl, l4)
        l4len = np.where(step, l4len - hl, l4len)
    else:
        bad |= ~frag & ((nh == 0) | (nh == 43) | (nh == 44) | (nh == 60) | (nh == 51))
    out.bad(rows, bad)
    if bad.any():
        # Addresses are valid; the protocol and what follows are not.
        keep = ~bad
        rows, nh, l4, l4len, frag = _sub(rows, keep), nh[keep], l4[keep], l4len[keep], frag[keep]
    out.proto[rows] = nh
    out.l4[rows] = l4
    out.l4len[rows] = l4len
    out.frag[rows] = frag


def _transport(head: _Head, out: _Out, end_all: I64) -> None:
    """TCP/UDP/ICMP headers and the payload window of every IP row still well-formed."""
    ip = (out.ipver != 0) & ~out.malformed
    if not ip.any():
        return
    rows, where = _select_most(ip)
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
    tcp_word = _col(blk, w, 12, ">u2")  # data offset nibble and the flags byte
    hdr = np.where(tcp, (tcp_word >> 12) * 4, need)
    fail = (avail < need) | (l4len < need)
    fail |= tcp & ((hdr < 20) | (hdr > l4len) | (hdr > avail))
    paylen = l4len - hdr
    if udp.any():
        ulen = _col(blk, w, 4, ">u2")
        ulen = np.where(ulen == 0, l4len, ulen)  # 0: IPv6 jumbogram
        fail |= udp & ((ulen < 8) | (ulen > l4len))
        paylen = np.where(udp, ulen - 8, paylen)
    if where is not None:
        fail &= where
    out.bad(rows, fail)
    good = ~fail
    if where is not None:
        where = good & where
    elif not good.all():
        if isinstance(rows, slice):
            where = good
        else:
            rows = _sub(rows, good)
            blk, tcp, udp = blk[good], tcp[good], udp[good]
            tcp_word, hdr, paylen = tcp_word[good], hdr[good], paylen[good]
            l4, avail = l4[good], avail[good]
    has_ports = tcp | udp
    if isinstance(rows, slice):
        # Ports and flags are still 0 where there are none: write only the rows that have.
        np.copyto(out.sport, _field(blk, 0, ">u2"), where=has_ports if where is None
                  else has_ports & where)
        np.copyto(out.dport, _field(blk, 2, ">u2"), where=has_ports if where is None
                  else has_ports & where)
        np.copyto(out.tcp_flags, tcp_word & 0xFF, casting="unsafe",
                  where=tcp if where is None else tcp & where)
    else:
        out.sport[rows] = np.where(has_ports, _field(blk, 0, ">u2"), 0)
        out.dport[rows] = np.where(has_ports, _field(blk, 2, ">u2"), 0)
        out.tcp_flags[rows] = np.where(tcp, tcp_word & 0xFF, 0)
    _put(out.payload_off, rows, l4 + hdr, where)
    _put(out.payload_len, rows, paylen, where)
    _put(out.payload_cap, rows, np.clip(avail - hdr, 0, paylen), where)


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
