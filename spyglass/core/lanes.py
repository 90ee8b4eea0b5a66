"""Candidate pcap record positions without scanning every byte of a chunk.

The full scan (every byte compared with the timestamp's top byte) reads and writes the whole
chunk several times over. Records are contiguous, so a few known record starts are enough: the
chunk is cut into lanes a few KB apart, each lane looks for a plausible record start in a short
window at its beginning (two timestamp bytes that match the first record's, a sane header, a sane
successor), and then all lanes follow their caplen chains in lock-step, one numpy step per
record, until each reaches the next lane's start. A lane that finds nothing is covered by the
lane before it running on. The steps read only caplen; the headers of everything the lanes
stepped on are gathered once afterwards, checked in bulk, and handed on for the batch.

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
WINDOW_BITS = 8
WINDOW = 1 << WINDOW_BITS  # bytes searched for a record start at each lane start
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

    def find(self, buf: bytes, start: int) -> tuple[I64, I64, npt.NDArray[np.void]] | None:
        """Sorted record candidates, their successors and their 16-byte headers, or None.

        Every candidate is a record the careful step would take without a complaint (sane
        lengths, complete in ``buf``); where a lane left the true chain its positions fail that
        test and are dropped, so the candidates need no further chaining.
        """
        end = len(buf)
        span = end - start
        if span < 8 * LANE_BYTES:
            return None
        arr = np.frombuffer(buf, np.uint8)
        t3, t2 = buf[start + self.top], buf[start + self.second]
        syncs = self._syncs(arr, start, end, t3, t2)
        walked = self._run(buf, arr, syncs)
        if walked is None:
            return None
        cand, hdr = walked
        caplen = _u32(hdr, 8, self.order)
        wirelen = _u32(hdr, 12, self.order)
        nxt = cand + caplen
        nxt += 16
        ok = caplen > 0
        ok &= caplen <= self.cap_limit
        ok &= nxt <= end
        ok &= wirelen >= caplen
        ok &= wirelen <= self.max_wire
        if not ok.all():
            cand, nxt, hdr = cand[ok], nxt[ok], hdr[ok]
        if int((nxt - cand).sum()) < MIN_COVER * span:
            return None
        return cand, nxt, hdr

    def _run(
        self, buf: bytes, arr: npt.NDArray[np.uint8], syncs: I64
    ) -> tuple[I64, npt.NDArray[np.void]] | None:
        """Every position the lanes step on and its header, in file order (None: too many steps).

        Lane k starts at ``syncs[k]`` and follows caplen only (the headers are checked in bulk
        afterwards) until it reaches ``syncs[k + 1]``; a zero caplen ends a lane, so a zeroed
        stretch does not cost a step per 16 bytes.
        """
        end = len(buf)
        nlanes = syncs.size
        # Headers at any byte (p + 16 <= end). Gathering from this unaligned view costs a
        # memcpy per header; reordering the gathered ones later is a cheap aligned gather.
        at: npt.NDArray[np.void] = np.ndarray((end - 15,), np.dtype("V16"), buf, 0, (1,))
        u32 = np.dtype(self.order + "u4")
        pos = syncs
        stop = np.append(syncs[1:], end - 15)
        lane = np.arange(nlanes, dtype=np.int64)
        pos_parts: list[I64] = []
        lane_parts: list[I64] = []
        hdr_parts: list[npt.NDArray[np.void]] = []
        steps = 0
        while pos.size > TAIL_LANES:
            steps += 1
            if steps > MAX_STEPS:
                return None
            hdr = at[pos]
            pos_parts.append(pos)
            lane_parts.append(lane)
            hdr_parts.append(hdr)
            cap = np.ndarray((hdr.size,), u32, hdr, 8, (16,))
            nxt = pos + (cap - 1)  # 0 wraps round: a zero caplen ends the lane
            nxt += 17
            go = nxt < stop
            pos, stop, lane = nxt[go], stop[go], lane[go]
        # Lane k's i-th position goes to (positions of lanes before k) + i: a counting sort.
        rank = np.repeat(np.arange(steps, dtype=np.int64), [p.size for p in pos_parts])
        if pos.size:
            tail = self._tail(buf, pos.tolist(), stop.tolist(), lane.tolist(), steps)
            if tail is None:
                return None
            pos_parts.append(tail[0])
            lane_parts.append(tail[1])
            hdr_parts.append(at[tail[0]])
            rank = np.concatenate([rank, tail[2]])
        all_lane = np.concatenate(lane_parts)
        counts = np.bincount(all_lane, minlength=nlanes)
        first = np.cumsum(counts)
        first -= counts
        dest = first[all_lane]
        dest += rank
        cand = np.empty(all_lane.size, np.int64)
        cand[dest] = np.concatenate(pos_parts)
        # Headers joined as plain words: concatenating V16 arrays copies header by header.
        hdr = np.empty(all_lane.size, np.dtype("V16"))
        hdr[dest] = np.concatenate([h.view(np.uint64) for h in hdr_parts]).view(hdr.dtype)
        return cand, hdr

    def _tail(
        self, buf: bytes, starts: list[int], stops: list[int], lanes: list[int], done: int
    ) -> tuple[I64, I64, I64] | None:
        """The last few lanes, record by record: cheaper than numpy steps over a handful.

        Returns positions, their lanes and their rank within the lane (``done`` steps taken).
        """
        cap_of = struct.Struct(self.order + "I").unpack_from
        pos_out: list[int] = []
        lane_out: list[int] = []
        rank_out: list[int] = []
        for pos, stop, lane in zip(starts, stops, lanes, strict=True):
            rank = done
            while True:
                if rank >= MAX_STEPS:
                    return None
                pos_out.append(pos)
                lane_out.append(lane)
                rank_out.append(rank)
                rank += 1
                (caplen,) = cap_of(buf, pos + 8)
                after = pos + 16 + caplen
                if caplen == 0 or after >= stop:
                    break
                pos = after
        return (
            np.array(pos_out, np.int64), np.array(lane_out, np.int64),
            np.array(rank_out, np.int64),
        )

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
        # Matches are sparse: find the 8-byte words holding one, then the bytes inside them.
        words = hits.reshape(-1).view(np.uint64)
        hit = np.flatnonzero(words != 0)
        inner = np.flatnonzero(words[hit].view(np.bool_))  # (hit word, byte) pairs, in order
        flat = hit[inner >> 3] * 8 + (inner & 7)
        lane = flat >> WINDOW_BITS
        pos = int(base[0]) + lane * LANE_BYTES + (flat & (WINDOW - 1))
        keep = arr[pos + self.second] == t2
        lane, pos = lane[keep], pos[keep]
        # Each lane's first match is nearly always a record start: check only those, and try
        # the next match of the lanes where it was not, a few times.
        found: list[I64] = [np.array([start], np.int64)]
        failed = np.zeros(base.size, np.bool_)
        for _ in range(3):
            if not lane.size:
                break
            first = np.ones(lane.size, np.bool_)
            np.not_equal(lane[1:], lane[:-1], out=first[1:])
            lane1, pos1 = lane[first], pos[first]
            ok, nxt = self._plausible(arr, pos1, end, t3, t2)
            # The successor must be a plausible record too (or the chunk's end).
            inside = ok & (nxt + 16 <= end)
            ok2 = np.zeros(pos1.size, np.bool_)
            if inside.any():
                ok2[inside] = self._plausible(arr, nxt[inside], end, t3, t2)[0]
            ok &= ok2 | (nxt == end)
            found.append(pos1[ok])
            if ok.all():
                break
            failed[:] = False
            failed[lane1[~ok]] = True
            first |= ~failed[lane]
            lane, pos = lane[~first], pos[~first]
        out: I64 = np.concatenate(found)
        if len(found) > 2:
            out.sort()
        return out
