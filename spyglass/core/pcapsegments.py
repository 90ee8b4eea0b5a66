"""Classic pcap files walked in fixed segments, so that two processes can share one file.

A pcap file has no index: where a record starts depends on every record before it. So the file
is cut at fixed offsets (``chunk`` bytes apart after the 24-byte file header), and segment k holds
the records that *start* in its range. Walked from a known record start (where segment k-1
ended) a segment is exactly what a record-by-record walk gives; the one-process reader does only
that. Walked from a record start *found* inside the segment (a chain of plausible headers, see
``_find_start``) it is a guess, which the reader putting the segments together takes only where
segment k-1 ended exactly there; anywhere else it walks the segment again from the known start.
A wrong guess costs time, never a record, and the batches are the same whoever walked them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from spyglass.core.frames import I64, FrameBatch
from spyglass.core.pcapformat import _PCAP_MAGICS, MAX_CAPLEN, _Pcap
from spyglass.core.readreport import ProblemLog, Problems, ReadReport
from spyglass.core.recordwalk import FAULT, MAX_WIRE, NEED, Walk, gather_headers

__all__ = ["CUT", "FAILED", "NEXT", "NOT_FOUND", "PcapSegments", "ReadAt", "Segment"]

HEADER: Final = 24  # the pcap file header
RECORD_MAX: Final = 16 + MAX_CAPLEN  # the largest record any pcap walk accepts
SYNC_RECORDS: Final = 8  # plausible records in a row that make a found start believable
_FIRST_LOOK: Final = 4096  # most records are small: look this far before searching further

# How a segment ended.
NEXT = 0  # at the first record after it: ``stop`` is that record's file offset
FAILED = 1  # at a fault the walk cannot pass (``stop``): the file is unusable from there
CUT = 2  # the file ends inside the record at ``stop``
NOT_FOUND = 3  # no record start was found in it (only when looking for one)

ReadAt = Callable[[int, int], bytes]  # (file offset, size) -> that much (less at the end)


@dataclass(slots=True)
class Segment:
    """What walking one segment gave, apart from its frames (small, sent between processes)."""

    index: int
    start: int  # file offset where the walk began (a known or a found record start)
    stop: int  # see NEXT / FAILED / CUT
    end: int
    packets: int = 0
    problems: list[tuple[str, int, str]] = field(default_factory=list)  # as ProblemLog has them
    need: int = 0  # CUT: bytes the cut record needs from ``stop``
    left: int = 0  # CUT: bytes of it in the file

    def report_to(self, report: ReadReport, problems: Problems) -> bool:
        """Add this segment, the next in file order, to ``report``; True when reading ends."""
        problems.replay(self.problems)
        report.packets += self.packets
        report.bytes_read = self.stop
        if self.end == FAILED:
            report.stopped_early = True
            return True
        if self.end == CUT:
            report.cut_short = True
            problems.add(
                "cut",
                self.stop,
                f"file ends inside the record at byte {self.stop} ({self.left} of at least "
                f"{max(self.need, self.left + 1)} bytes present); everything before it was kept",
            )
            return True
        return False


def _joined(buf: bytes, pieces: list[Walk]) -> Walk:
    """One walk of the records of several (only ``pos`` and ``rows`` matter to a batch)."""
    if len(pieces) == 1:
        return pieces[0]
    last = pieces[-1]
    pos = np.concatenate([p.pos for p in pieces])
    # The bulk walk read its headers already; the few records after it are gathered here
    # (when the walk's rows are headers as gathered; otherwise the batch gathers them all).
    rows = [p.rows if p.rows is not None else gather_headers(buf, p.pos, 16) for p in pieces]
    same = all(r.dtype == rows[0].dtype and r.ndim == rows[0].ndim for r in rows)
    return Walk(pos, np.zeros(pos.size, np.uint8), last.stop, last.reason, last.need,
                np.concatenate(rows) if same else None)


class PcapSegments:
    """The segments of one pcap file (``header`` its first 24 bytes, ``file_size`` bytes)."""

    def __init__(self, header: bytes, file_size: int, chunk: int) -> None:
        self.size = file_size
        self.chunk = max(int(chunk), 256)
        self.count = max(0, -(-(file_size - HEADER) // self.chunk))
        self._log = ProblemLog()
        self._fmt = _Pcap(header, self._log)
        order, frac = _PCAP_MAGICS[header[:4]]
        self._frac_max = round(1 / frac)  # 1e6 or 1e9: a fraction of a second is below it
        self._head = struct.Struct(order + "IIII").unpack_from
        self._order = order

    def bounds(self, k: int) -> tuple[int, int]:
        """File offsets [lo, hi) where the records of segment ``k`` start."""
        lo = HEADER + k * self.chunk
        return lo, min(lo + self.chunk, self.size)

    def walk(self, k: int, read: ReadAt, start: int | None) -> tuple[Segment, FrameBatch | None]:
        """Walk segment ``k`` from the record at file offset ``start``, or from one found in it
        when ``start`` is None. The batch's ``buf`` is what ``read`` gave."""
        lo, hi = self.bounds(k)
        if start is not None and start >= hi:
            return Segment(k, start, start, NEXT), None  # a record before covers all of it
        base = lo if start is None else start
        # Usually enough for the record that crosses ``hi`` (_walk reads on when it is not).
        extra = min(RECORD_MAX, max(2048, self.chunk // 8))
        buf = read(base, min(self.size, hi + extra) - base)
        if start is None:
            found = self._find_start(buf)
            if found is None:
                return Segment(k, -1, lo, NOT_FOUND), None
            start = base + found
            if start >= hi:
                return Segment(k, start, start, NEXT), None
        return self._walk(k, read, buf, base, start - base, hi - base)

    def _walk(
        self, k: int, read: ReadAt, buf: bytes, base: int, at: int, rel_hi: int
    ) -> tuple[Segment, FrameBatch | None]:
        fmt = self._fmt
        fmt.file_base = base
        view = memoryview(buf)
        w = fmt.walk(view[:rel_hi], at)  # type: ignore[arg-type]  # read like bytes
        pieces: list[Walk] = [w]
        cur, reason, need = w.stop, w.reason, w.need
        # The walk stopped at the record that crosses the segment's end (or at a fault): take
        # it, and any record right after it that still starts inside, each with the view
        # ending where that record ends, so the walk never looks past what it takes.
        seg = Segment(k, base + at, 0, NEXT)
        while reason == NEED and cur < rel_hi:
            until = cur + need
            if until > len(buf) and base + len(buf) < self.size:
                del view
                buf = read(base, min(self.size - base, until + RECORD_MAX))
                view = memoryview(buf)
            if until > len(buf):  # the end of the file
                seg.end, seg.need, seg.left = CUT, need, len(buf) - cur
                break
            w = fmt.walk(view[:until], cur)  # type: ignore[arg-type]
            pieces.append(w)
            cur, reason, need = w.stop, w.reason, w.need
        if reason == FAULT:
            seg.end = FAILED
        seg.stop = base + cur
        seg.problems = self._log.take()
        seg.packets = sum(int(p.pos.size) for p in pieces)
        return seg, fmt.batch(buf, _joined(buf, pieces))

    def _find_start(self, buf: bytes) -> int | None:
        """The first offset in ``buf`` where SYNC_RECORDS plausible records follow each other
        (a record starts within RECORD_MAX of any offset, or the file ends first)."""
        limit = min(len(buf) - 15, RECORD_MAX + 1)
        lo = 0
        hi = min(limit, _FIRST_LOOK)
        while lo < hi:
            for p in self._plausible(buf, lo, hi).tolist():
                if self._chain_holds(buf, p):
                    return int(p)
            lo, hi = hi, min(limit, hi * 8)
        return None

    def _plausible(self, buf: bytes, lo: int, hi: int) -> I64:
        """Offsets in [lo, hi) holding a plausible record header (all of it inside ``buf``)."""
        n = hi - lo
        u32 = np.dtype(self._order + "u4")

        def field_at(at: int) -> np.ndarray:
            return np.ndarray((n,), u32, buf, lo + at, (1,))

        frac, caplen, wirelen = field_at(4), field_at(8), field_at(12)
        ok = (caplen > 0) & (caplen <= MAX_CAPLEN) & (caplen <= wirelen) & (wirelen <= MAX_WIRE)
        ok &= frac < self._frac_max
        found: I64 = np.flatnonzero(ok) + lo
        return found

    def _chain_holds(self, buf: bytes, pos: int) -> bool:
        end = len(buf)
        top = -1
        for _ in range(SYNC_RECORDS):
            if pos + 16 > end:
                return True  # the buffer ends first: the seam check decides
            sec, frac, caplen, wirelen = self._head(buf, pos)
            if top < 0:
                top = sec >> 24
            ok = 0 < caplen <= MAX_CAPLEN and caplen <= wirelen <= MAX_WIRE
            if not (ok and frac < self._frac_max and sec >> 24 == top):
                return False
            pos += 16 + caplen
        return True
