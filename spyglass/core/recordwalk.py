"""The record-walk machinery shared by the pcap and pcapng formats of ``capfile``.

The speculative walk (see the ``capfile`` docstring): per-byte candidate search and chaining
(``Scratch``), the walk that accepts verified candidate runs in bulk and hands everything else
to a format's careful step (``hybrid_walk``), header gathers (``gather_headers``,
``header_field``), and ``Format``, what a format gives the chunk loop. Public names: the two
format modules and ``capfile`` share them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from spyglass.core.frames import I32, I64, U8, FrameBatch

MAX_WIRE: Final = 1 << 24  # wire lengths beyond this (jumbo, offload: <= 256 KiB) are junk


# Outcome of a careful single-record step.
NEED, FAULT, FLUSH, SKIP, REC = range(5)


@dataclass(slots=True)
class Walk:
    """Records found in one buffer, and why the walk stopped."""

    pos: I64
    kind: U8
    stop: int
    reason: int  # NEED (stop starts an incomplete record), FAULT, FLUSH
    need: int = 0  # bytes the incomplete record needs, from ``stop``
    # The format's fixed-size record headers at ``pos``, where the walk read them anyway.
    rows: npt.NDArray[np.void] | None = None


def u32_view(buf: bytes, order: str) -> np.ndarray:
    """A uint32 at every byte position of ``buf`` (unaligned strided view, no copy)."""
    n = max(len(buf) - 3, 0)
    return np.ndarray((n,), dtype=np.dtype(order + "u4"), buffer=buf, strides=(1,))


def gather_headers(buf: bytes, pos: I64, width: int) -> npt.NDArray[np.void]:
    """``width`` bytes at every position (all inside ``buf``), one gather into a compact copy."""
    view: npt.NDArray[np.void] = np.ndarray(
        (len(buf) - width + 1,), np.dtype(f"V{width}"), buf, 0, (1,)
    )
    return view[pos]


def header_field(hdr: npt.NDArray[np.void], width: int, at: int, dtype: str) -> npt.NDArray[Any]:
    """The integer at byte ``at`` of every gathered header (a strided view)."""
    if hdr.size == 0:
        return np.zeros(0, np.dtype(dtype))
    return np.ndarray((hdr.size,), np.dtype(dtype), hdr, at, (width,))


def _set_bytes(words: npt.NDArray[np.uint64], index: I64) -> I64:
    """``index * 8 + k`` for every non-zero byte k of ``words`` (bytes of a bool array)."""
    parts: list[I64] = []
    one = np.uint64(1)
    while words.size:
        low = words & (~words + one)  # the lowest set bit: bit 0 of one true byte
        parts.append(index * 8 + (np.log2(low.astype(np.float64)).astype(np.int64) >> 3))
        words = words ^ low
        more = words != 0
        if not more.any():
            break
        words, index = words[more], index[more]
    if len(parts) == 1:
        return parts[0]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


SCAN_WINDOW = 4 << 20  # bytes compared per step of the full scan: its work array's size


class Scratch:
    """A reusable per-byte work array for the full scan: a fresh one per chunk costs page faults.

    The scan goes through a chunk SCAN_WINDOW bytes at a time, so the array stays that small
    whatever the chunk size. (Sized to the chunk, it and the chain marks kept 64 MB per process
    once a 32 MB chunk had needed the scan, e.g. where a capture's seconds cross a multiple of
    65,536 and the lanes give up.)
    """

    def __init__(self) -> None:
        self._mask = np.zeros(0, np.bool_)

    def find(self, buf: bytes, lo: int, hi: int, value: int) -> I64:
        """Every position p in [lo, hi) where buf[p] == value."""
        if hi - lo > SCAN_WINDOW:
            parts = [
                self._find(buf, a, min(a + SCAN_WINDOW, hi), value)
                for a in range(lo, hi, SCAN_WINDOW)
            ]
            return np.concatenate(parts)
        return self._find(buf, lo, hi, value)

    def _find(self, buf: bytes, lo: int, hi: int, value: int) -> I64:
        n = hi - lo
        if n <= 0:
            return np.zeros(0, np.int64)
        words = (n + 7) // 8
        if self._mask.size < words * 8:
            self._mask = np.zeros(words * 8 + (1 << 16), np.bool_)
        mask = self._mask[: words * 8]
        np.equal(np.frombuffer(buf, np.uint8, n, lo), value, out=mask[:n])
        mask[n:] = False
        # Matches are sparse: find the 8-byte words holding one, then the bytes inside them.
        words_u64 = mask.view(np.uint64)
        hit = np.flatnonzero(words_u64 != 0)
        found: I64 = _set_bytes(words_u64[hit], hit) + lo
        return found

    @staticmethod
    def chain(cand: I64, nxt: I64, start: int) -> tuple[I64, I64, I64]:
        """Keep the candidates some other candidate points at (or ``start``); find breaks.

        A true record's successor pointer only ever lands on the true next record, so
        dropping candidates nobody points at removes the false ones apart from false
        chains, which the break list then cuts out.
        """
        if cand.size == 0:
            return cand, nxt, np.zeros(0, np.int64)
        # Whether each candidate is some candidate's successor: a search in the sorted
        # successors (a mark per byte of the chunk would take as much memory as the chunk).
        targets = np.sort(nxt)
        at = np.minimum(np.searchsorted(targets, cand), targets.size - 1)
        keep = targets[at] == cand
        keep[0] |= cand[0] == start
        cand = cand[keep]
        nxt = nxt[keep]
        brk = np.flatnonzero(nxt[:-1] != cand[1:]).astype(np.int64)
        return cand, nxt, np.append(brk, cand.size - 1)


def hybrid_walk(
    cand: I64,
    nxt: I64,
    brk: I64,
    start: int,
    step: Callable[[int, bool], tuple[int, int, int]],
    rows: npt.NDArray[np.void] | None = None,
    rows_at: Callable[[I64], npt.NDArray[np.void]] | None = None,
) -> Walk:
    """Walk from ``start``: verified candidate runs in bulk, anything else with ``step``.

    ``step(pos, pending)`` returns (outcome, next_pos_or_need, kind); ``pending`` says whether
    this walk already holds records (a new interface table must not apply to them). With
    ``rows`` (one per candidate) and ``rows_at`` (rows of other positions) the walk also hands
    back the rows of the records it took.
    """
    pieces: list[I64] = []
    kinds: list[U8] = []
    row_pieces: list[npt.NDArray[np.void]] = []
    slow_pos: list[int] = []
    slow_kind: list[int] = []
    nc = int(cand.size)
    pos = start
    i = int(np.searchsorted(cand, pos))
    next_cand = int(cand[i]) if i < nc else -1

    def flush_slow() -> None:
        if slow_pos:
            pieces.append(np.array(slow_pos, np.int64))
            if rows_at is not None:
                row_pieces.append(rows_at(pieces[-1]))
            kinds.append(np.array(slow_kind, np.uint8))
            slow_pos.clear()
            slow_kind.clear()

    while True:
        if pos == next_cand:
            j = int(brk[np.searchsorted(brk, i)])
            flush_slow()
            pieces.append(cand[i : j + 1])
            kinds.append(np.zeros(j + 1 - i, np.uint8))
            if rows is not None:
                row_pieces.append(rows[i : j + 1])
            pos = int(nxt[j])
            i = int(np.searchsorted(cand, pos, "left"))
            next_cand = int(cand[i]) if i < nc else -1
            continue
        if next_cand != -1 and pos > next_cand:
            i = int(np.searchsorted(cand, pos, "left"))
            next_cand = int(cand[i]) if i < nc else -1
            continue
        outcome, value, kind = step(pos, bool(pieces or slow_pos))
        if outcome == REC:
            slow_pos.append(pos)
            slow_kind.append(kind)
            pos = value
        elif outcome == SKIP:
            pos = value
        else:
            flush_slow()
            stop = value if outcome == FLUSH else pos
            if pieces:
                allpos = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
                allkind = np.concatenate(kinds) if len(kinds) > 1 else kinds[0]
            else:
                allpos, allkind = np.zeros(0, np.int64), np.zeros(0, np.uint8)
            walk = Walk(allpos, allkind, stop, outcome, value if outcome == NEED else 0)
            if rows is not None and rows_at is not None:
                if len(row_pieces) == 1:
                    walk.rows = row_pieces[0]
                elif row_pieces:
                    walk.rows = np.concatenate(row_pieces)
                else:
                    walk.rows = rows_at(allpos)
            return walk


def fixed_wire(wirelen: I64, caplen: npt.NDArray[np.integer[Any]]) -> I32:
    """Wire lengths, with implausible ones (below caplen, absurdly large) replaced by caplen."""
    bad = wirelen < caplen
    bad |= wirelen > MAX_WIRE
    fixed: I32 = wirelen.astype(np.int32)
    if bad.any():  # rare: the careful step reported each
        fixed[bad] = caplen[bad]
    return fixed


class Format:
    """What a file format must provide to the chunk loop."""

    file_base = 0  # file offset of the current buffer's first byte, for messages

    def walk(self, buf: bytes, start: int) -> Walk:
        raise NotImplementedError

    def batch(self, buf: bytes, walk: Walk) -> FrameBatch | None:
        raise NotImplementedError
