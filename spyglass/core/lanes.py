"""Candidate pcap record positions without scanning every byte of a chunk.

The full scan (every byte compared with the timestamp's top byte) reads and writes the whole
chunk several times over. Records are contiguous, so a few known record starts are enough: the
chunk is cut into lanes a few KB apart, each lane looks for a plausible record start in a short
window at its beginning (two timestamp bytes that match the first record's, a sane header, a sane
successor), and then all lanes follow their length chains in lock-step, one numpy step per record,
until each reaches the next lane's start. A lane that finds nothing is covered by the lane before
it running on.

What comes out is only a candidate list, like the scan's: the caller's walk accepts a candidate
only where the chain from the verified previous record lands on it. When the lanes cover too
little of the chunk (a timestamp byte changed mid-chunk, records too large for the windows,
garbage) the caller falls back to the full scan.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

from spyglass.core.frames import I64

LANE_BYTES = 4096  # distance between lane starts
WINDOW = 256  # bytes searched for a record start at each lane start
MAX_STEPS = 2048  # lock-step bound; a chunk needing more falls back to the scan
MIN_COVER = 0.9  # share of the chunk the lanes must span to be used
TAIL_LANES = 8  # this few lanes left: finish them record by record


def _gather16(arr: npt.NDArray[np.uint8], pos: I64) -> npt.NDArray[np.void]:
    view: npt.NDArray[np.void] = np.ndarray(
        (arr.size - 15,), np.dtype("V16"), arr, 0, (1,)
    )
    return view[pos]


def _u32(hdr: npt.NDArray[np.void], at: int, order: str) -> I64:
    if hdr.size == 0:
        return np.zeros(0, np.int64)
    col: npt.NDArray[np.uint32] = np.ndarray((hdr.size,), np.dtype(order + "u4"), hdr, at, (16,))
    return col.astype(np.int64)


class LaneFinder:
    """Record candidates (positions, successor positions) of a pcap chunk, or None."""

    def __init__(self, order: str, cap_limit: int, max_wire: int) -> None:
        self.order = order
        self.cap_limit = cap_limit
        self.max_wire = max_wire
        # Byte offsets (in a header) of the timestamp's two top bytes.
        self.top, self.second = (3, 2) if order == "<" else (0, 1)
        self._hits = np.empty((0, WINDOW), np.bool_)  # scratch for the window scan

    def _plausible(
        self, arr: npt.NDArray[np.uint8], pos: I64, end: int, t3: int, t2: int
    ) -> tuple[npt.NDArray[np.bool_], I64]:
        hdr = _gather16(arr, pos)
        raw = hdr.view(np.uint8).reshape(-1, 16) if hdr.size else np.zeros((0, 16), np.uint8)
        caplen = _u32(hdr, 8, self.order)
        wirelen = _u32(hdr, 12, self.order)
        nxt = pos + 16 + caplen
        ok = (caplen > 0) & (caplen <= self.cap_limit) & (nxt <= end)
        ok &= (wirelen >= caplen) & (wirelen <= self.max_wire)
        ok &= (raw[:, self.top] == t3) & (raw[:, self.second] == t2)
        return ok, nxt

    def find(self, buf: bytes, start: int) -> tuple[I64, I64] | None:
        end = len(buf)
        span = end - start
        if span < 8 * LANE_BYTES:
            return None
        arr = np.frombuffer(buf, np.uint8)
        t3, t2 = buf[start + self.top], buf[start + self.second]
        syncs = self._syncs(arr, start, end, t3, t2)
        cand_parts: list[I64] = []
        nxt_parts: list[I64] = []
        pos = syncs
        stop = np.append(syncs[1:], end)
        steps = 0
        while pos.size > TAIL_LANES:
            steps += 1
            if steps > MAX_STEPS:
                return None
            ok, nxt = self._plausible(arr, pos, end, t3, t2)
            cand_parts.append(pos[ok])
            nxt_parts.append(nxt[ok])
            go = ok & (nxt < stop) & (nxt + 16 <= end)
            pos, stop = nxt[go], stop[go]
        if pos.size:
            tail_cand, tail_nxt = self._tail(buf, pos.tolist(), stop.tolist(), t3, t2)
            cand_parts.append(tail_cand)
            nxt_parts.append(tail_nxt)
        cand_all = np.concatenate(cand_parts)
        nxt_all = np.concatenate(nxt_parts)
        cand, first = np.unique(cand_all, return_index=True)
        nxt = nxt_all[first]
        if int((nxt - cand).sum()) < MIN_COVER * span:
            return None
        return cand, nxt

    def _tail(
        self, buf: bytes, starts: list[int], stops: list[int], t3: int, t2: int
    ) -> tuple[I64, I64]:
        """The last few lanes, record by record: cheaper than numpy steps over a handful."""
        end = len(buf)
        head = struct.Struct(self.order + "IIII").unpack_from
        top, second, limit, max_wire = self.top, self.second, self.cap_limit, self.max_wire
        cand: list[int] = []
        nxt: list[int] = []
        for pos, stop in zip(starts, stops, strict=True):
            steps = 0
            while pos + 16 <= end and steps < MAX_STEPS:
                steps += 1
                _sec, _frac, caplen, wirelen = head(buf, pos)
                after = pos + 16 + caplen
                if not (
                    0 < caplen <= limit and after <= end and caplen <= wirelen <= max_wire
                    and buf[pos + top] == t3 and buf[pos + second] == t2
                ):
                    break
                cand.append(pos)
                nxt.append(after)
                if after >= stop:
                    break
                pos = after
        return np.array(cand, np.int64), np.array(nxt, np.int64)

    def _syncs(
        self, arr: npt.NDArray[np.uint8], start: int, end: int, t3: int, t2: int
    ) -> I64:
        """One plausible record start per lane where its window has one (``start`` first)."""
        lanes = (end - start - WINDOW - 32) // LANE_BYTES
        base = start + LANE_BYTES * np.arange(1, max(lanes, 1), dtype=np.int64)
        base = base[base + WINDOW + 16 <= end]
        if not base.size:
            return np.array([start], np.int64)
        strided = np.lib.stride_tricks.as_strided
        win3 = strided(arr[int(base[0]) + self.top :], (base.size, WINDOW), (LANE_BYTES, 1))
        # The timestamp's top byte first, into a reused buffer, then its second byte only where
        # the first matched: a quarter of the work of comparing both everywhere.
        if self._hits.shape[0] < base.size:
            self._hits = np.empty((base.size, WINDOW), np.bool_)
        hits = self._hits[: base.size]
        np.equal(win3, t3, out=hits)
        flat = np.flatnonzero(hits)
        lane, col = flat // WINDOW, flat % WINDOW
        pos = base[lane] + col
        keep = arr[pos + self.second] == t2
        lane, pos = lane[keep], pos[keep]
        ok, nxt = self._plausible(arr, pos, end, t3, t2)
        # The successor must be a plausible record too (or the chunk's end).
        inside = ok & (nxt + 16 <= end)
        ok2 = np.zeros(pos.size, np.bool_)
        if inside.any():
            ok2[inside] = self._plausible(arr, nxt[inside], end, t3, t2)[0]
        ok &= ok2 | (nxt == end)
        lane, pos = lane[ok], pos[ok]
        _, first = np.unique(lane, return_index=True)
        out: I64 = np.concatenate([np.array([start], np.int64), pos[first]])
        return out
