"""Column reads for the decoder: bytes at per-row offsets of a batch, gathered in blocks.

The decoder reads each layer's header fields for many frames at once: one gather of a
fixed-width block per row (``FrameBytes``, ``Head`` for the first HEAD bytes every frame has
read anyway), integer columns out of the blocks, and the row selections the layers pass on
(an index array, or all rows plus a mask when most rows are selected). Reads never leave the
buffer: indexes are clamped, and the decoder uses a value only where its length checks passed.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from spyglass.core.frames import I64, U64, B, FrameBatch

Idx = Any  # a slice (all rows) or an index array
S16: Final = np.uint64(16)
MOST: Final = 0.75  # a selection of at least this share of rows is done as all rows + a mask
HEAD: Final = 64  # link + IPv4 + TCP headers of the common frame
TAIL: Final = 4096


class FrameBytes:
    """Reads at any byte offset of one buffer: fixed-size blocks and big-endian integers.

    Gathering a whole header block per row (a void-dtype view at every byte offset) costs about
    what one integer gather does, and the fields are then strided views of the compact copy,
    so each layer pays for one gather. Indices past the buffer are served from a zero-padded
    copy of its tail, so a block is never shifted and never read out of bounds.
    """

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.n = len(buf)
        base = max(self.n - TAIL, 0)
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
        return block_col(self.block(idx, 1), 1, 0, "u1")

    def w16(self, idx: I64) -> npt.NDArray[np.int64]:
        return block_col(self.block(idx, 2), 2, 0, ">u2")


def block_field(blocks: npt.NDArray[np.void], at: int, dtype: str) -> npt.NDArray[Any]:
    """Field at byte ``at`` of every block, as a view (the blocks may be a strided view of a
    larger contiguous array, see :meth:`Head.block`)."""
    n = blocks.size
    if n == 0:
        return np.zeros(0, np.dtype(dtype))
    if blocks.flags.c_contiguous:
        return np.ndarray((n,), np.dtype(dtype), blocks, at, (blocks.itemsize,))
    base = blocks.base
    assert isinstance(base, np.ndarray)
    start = blocks.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return np.ndarray((n,), np.dtype(dtype), base, start + at, blocks.strides)


def block_col(
    blocks: npt.NDArray[np.void], width: int, at: int, dtype: str
) -> npt.NDArray[np.int64]:
    """Field at byte ``at`` of every block, as int64."""
    return block_field(blocks, at, dtype).astype(np.int64)


def block_mac(blocks: npt.NDArray[np.void], width: int, at: int) -> U64:
    """The 48-bit MAC at ``at``: one 8-byte read, the 2 bytes after it shifted out."""
    assert at + 8 <= width
    mac: U64 = block_field(blocks, at, ">u8") >> S16
    return mac


class Head:
    """The first 64 bytes of every frame, gathered once from the (large, cache-cold) buffer.

    Later layers read their headers out of this compact copy, which stays in cache; only
    headers reaching past it (VLAN stacks, IP options, IPv6 extension chains) go back to
    the buffer.
    """

    def __init__(self, g: FrameBytes, off: I64) -> None:
        self.g = g
        self.off = off
        self.arr = g.block(off, HEAD)
        self.start = np.arange(off.size, dtype=np.int64) * HEAD
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
            if 0 <= r0 <= HEAD - width and bool(same.all()):
                return np.ndarray((rel.size,), np.dtype(f"V{width}"), self.arr, r0, (HEAD,))
        flat = self.start[rows] + rel
        inside = (rel >= 0) & (rel <= HEAD - width)
        view = self._views.get(width)
        if view is None:
            count = self.arr.size * HEAD - width + 1
            view = np.ndarray((max(count, 0),), np.dtype(f"V{width}"), self.arr, 0, (1,))
            self._views[width] = view
        if inside.all():
            return view[flat]
        out = view[np.where(inside, flat, 0)] if view.size else self.g.block(at, width)
        outside = ~inside
        out[outside] = self.g.block(at[outside], width)
        return out


def rows_of(mask: B) -> Idx:
    """Rows where mask holds: a slice when that is every row (views, no gathers)."""
    rows = np.flatnonzero(mask)
    if rows.size == mask.size:
        return slice(None)
    return rows


def most_rows_of(mask: B) -> tuple[Idx, B | None]:
    """Rows where mask holds, as :func:`rows_of`; but when that is most rows, all of them
    (a slice) and the mask: working on every row and writing where the mask holds costs less
    than gathering and scattering nearly all of them."""
    count = int(np.count_nonzero(mask))
    if count == mask.size:
        return slice(None), None
    if count >= MOST * mask.size:
        return slice(None), mask
    return np.flatnonzero(mask), None


def put_rows(dst: npt.NDArray[Any], rows: Idx, value: Any, where: B | None) -> None:
    """``dst[rows] = value``, or with ``where`` (rows all rows) only where it holds."""
    if where is None:
        dst[rows] = value
    else:
        np.copyto(dst, value, casting="unsafe", where=where)


def sub_rows(rows: Idx, keep: B) -> Idx:
    """Narrow ``rows`` to those where ``keep`` (indexed like ``rows``) holds."""
    if isinstance(rows, slice):
        return rows_of(keep)
    return rows[keep] if not keep.all() else rows


class Out:
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

    def drop(self, rows: Idx, fail: B, where: B | None) -> tuple[Idx, B | None, B | None]:
        """Mark the ``fail`` rows (of those ``where`` selects) malformed and take them out of
        the later layers. Returns the rows and the mask that go on, and the mask that narrows
        the caller's per-row arrays to them (None: the arrays stay as they are)."""
        if where is not None:
            fail &= where
        self.bad(rows, fail)
        good = ~fail
        if where is not None:
            return rows, good & where, None
        if good.all():
            return rows, None, None
        if isinstance(rows, slice):
            return rows, good, None
        return sub_rows(rows, good), None, good
