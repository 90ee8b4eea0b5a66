"""Streaming reader of pcap and pcapng files, in constant memory, batch by batch.

The file is read in chunks of a few MiB; every chunk becomes one or more ``FrameBatch`` whose
``buf`` is the chunk itself, so frames are never copied one by one. A record cut by the chunk end
is carried into the next chunk.

Walking the records is the hot loop. A Python loop costs ~0.5 µs per record on a small machine,
too slow, so the walk is speculative: numpy finds every byte position that looks like a record
header (a byte every header shares, then vectorized plausibility checks), keeps the candidates
that another candidate's length points at, and accepts runs of candidates whose lengths chain
exactly from one to the next. Anything the speculation cannot vouch for (the first record, rare
block types, faults) is walked by a plain, careful Python step, so the result is always exactly
what a record-by-record walk gives.

Bad input never raises past the constructor: problems become ``ReadProblem`` entries in
``report``, everything read before a fault is kept, and only a file with nothing usable at all
(wrong magic, empty, unreadable header) raises ``CaptureFormatError``.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final, Literal, cast

import numpy as np
import numpy.typing as npt

from spyglass.core.frames import F64, I32, I64, U8, U16, FrameBatch
from spyglass.core.lanes import LaneFinder

__all__ = [
    "MAX_CAPLEN",
    "CaptureFormatError",
    "CaptureReader",
    "ReadProblem",
    "ReadReport",
    "detect_format",
    "open_capture",
]

MAX_CAPLEN: Final = 256 * 1024  # largest frame we believe (tcpdump's default snaplen)
_MAX_BLOCK: Final = 64 << 20  # pcapng blocks beyond this are garbage, not data
_MAX_WIRE: Final = 1 << 24  # wire lengths beyond this (jumbo, offload: <= 256 KiB) are junk
_MAX_PROBLEMS: Final = 50  # distinct problems listed; repeats of one kind are counted instead

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_SHB: Final = 0x0A0D0D0A
_BOM: Final = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_KIND_EPB, _KIND_SPB, _KIND_PB = 0, 1, 2


class CaptureFormatError(Exception):
    """The file is not a capture at all, or nothing in it is usable from byte ``offset`` on."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: byte {offset}: {reason}")


@dataclass
class ReadProblem:
    """A fault found while reading: recoverable (skipped) or final (reading stopped there)."""

    offset: int
    message: str


@dataclass
class ReadReport:
    path: str
    format: str  # "pcap" or "pcapng"
    packets: int = 0
    bytes_read: int = 0
    file_size: int = 0
    problems: list[ReadProblem] = field(default_factory=list)
    cut_short: bool = False  # the file ended in the middle of a record (capture killed)
    stopped_early: bool = False  # a fault made the reader stop before the end of the file


def detect_format(first_bytes: bytes) -> Literal["pcap", "pcapng"] | None:
    """The format named by the first 4 bytes of a file ("pcap", "pcapng"), or None."""
    head = bytes(first_bytes[:4])
    if head in _PCAP_MAGICS:
        return "pcap"
    if len(head) == 4 and int.from_bytes(head, "little") == _SHB:
        return "pcapng"
    return None


def open_capture(
    path: str | os.PathLike[str], *, chunk_bytes: int = 4 << 20, map_file: bool = False
) -> CaptureReader:
    """A reader for ``path``; raises CaptureFormatError if it is not a readable capture. See
    :class:`CaptureReader` for ``map_file``."""
    return CaptureReader(path, chunk_bytes=chunk_bytes, map_file=map_file)


class _Problems:
    """Collects problems into the report, one entry per kind with a repeat count."""

    def __init__(self, report: ReadReport) -> None:
        self._report = report
        self._seen: dict[str, tuple[ReadProblem, str, int]] = {}

    def add(self, kind: str, offset: int, message: str) -> None:
        seen = self._seen.get(kind)
        if seen is not None:
            problem, first, count = seen
            count += 1
            self._seen[kind] = (problem, first, count)
            problem.message = f"{first} ({count} times, first at byte {problem.offset})"
            return
        if len(self._seen) >= _MAX_PROBLEMS:
            if "more" not in self._seen:
                extra = ReadProblem(offset, f"more kinds of problems from byte {offset} not listed")
                self._seen["more"] = (extra, extra.message, 1)
                self._report.problems.append(extra)
            return
        problem = ReadProblem(offset, message)
        self._seen[kind] = (problem, message, 1)
        self._report.problems.append(problem)


# Outcome of a careful single-record step.
_NEED, _FAULT, _FLUSH, _SKIP, _REC = range(5)


@dataclass(slots=True)
class _Walk:
    """Records found in one buffer, and why the walk stopped."""

    pos: I64
    kind: U8
    stop: int
    reason: int  # _NEED (stop starts an incomplete record), _FAULT, _FLUSH
    need: int = 0  # bytes the incomplete record needs, from ``stop``


def _u32_view(buf: bytes, order: str) -> np.ndarray:
    """A uint32 at every byte position of ``buf`` (unaligned strided view, no copy)."""
    n = max(len(buf) - 3, 0)
    return np.ndarray((n,), dtype=np.dtype(order + "u4"), buffer=buf, strides=(1,))


def _headers(buf: bytes, pos: I64, width: int) -> npt.NDArray[np.void]:
    """``width`` bytes at every position (all inside ``buf``), one gather into a compact copy."""
    view: npt.NDArray[np.void] = np.ndarray(
        (len(buf) - width + 1,), np.dtype(f"V{width}"), buf, 0, (1,)
    )
    return view[pos]


def _field(hdr: npt.NDArray[np.void], width: int, at: int, dtype: str) -> npt.NDArray[Any]:
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


class _Scratch:
    """Reusable per-byte work arrays: fresh 4 MiB arrays per chunk cost page faults."""

    def __init__(self) -> None:
        self._mask = np.zeros(0, np.bool_)
        self._mark = np.zeros(0, np.bool_)

    def find(self, buf: bytes, lo: int, hi: int, value: int) -> I64:
        """Every position p in [lo, hi) where buf[p] == value."""
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

    def chain(self, cand: I64, nxt: I64, start: int) -> tuple[I64, I64, I64]:
        """Keep the candidates some other candidate points at (or ``start``); find breaks.

        A true record's successor pointer only ever lands on the true next record, so
        dropping candidates nobody points at removes the false ones apart from false
        chains, which the break list then cuts out.
        """
        if cand.size == 0:
            return cand, nxt, np.zeros(0, np.int64)
        span = int(nxt.max()) - start + 1
        if self._mark.size < span:
            self._mark = np.zeros(span + (1 << 16), np.bool_)
        mark = self._mark
        rel = nxt - start
        mark[rel] = True
        inside = cand - start
        keep = mark[inside]
        mark[rel] = False  # leave it clean for the next chunk
        keep[0] |= inside[0] == 0
        cand = cand[keep]
        nxt = nxt[keep]
        brk = np.flatnonzero(nxt[:-1] != cand[1:]).astype(np.int64)
        return cand, nxt, np.append(brk, cand.size - 1)


def _hybrid_walk(
    cand: I64,
    nxt: I64,
    brk: I64,
    start: int,
    step: Callable[[int, bool], tuple[int, int, int]],
) -> _Walk:
    """Walk from ``start``: verified candidate runs in bulk, anything else with ``step``.

    ``step(pos, pending)`` returns (outcome, next_pos_or_need, kind); ``pending`` says whether
    this walk already holds records (a new interface table must not apply to them).
    """
    pieces: list[I64] = []
    kinds: list[U8] = []
    slow_pos: list[int] = []
    slow_kind: list[int] = []
    nc = int(cand.size)
    pos = start
    i = int(np.searchsorted(cand, pos))
    next_cand = int(cand[i]) if i < nc else -1

    def flush_slow() -> None:
        if slow_pos:
            pieces.append(np.array(slow_pos, np.int64))
            kinds.append(np.array(slow_kind, np.uint8))
            slow_pos.clear()
            slow_kind.clear()

    while True:
        if pos == next_cand:
            j = int(brk[np.searchsorted(brk, i)])
            flush_slow()
            pieces.append(cand[i : j + 1])
            kinds.append(np.zeros(j + 1 - i, np.uint8))
            pos = int(nxt[j])
            i = int(np.searchsorted(cand, pos, "left"))
            next_cand = int(cand[i]) if i < nc else -1
            continue
        if next_cand != -1 and pos > next_cand:
            i = int(np.searchsorted(cand, pos, "left"))
            next_cand = int(cand[i]) if i < nc else -1
            continue
        outcome, value, kind = step(pos, bool(pieces or slow_pos))
        if outcome == _REC:
            slow_pos.append(pos)
            slow_kind.append(kind)
            pos = value
        elif outcome == _SKIP:
            pos = value
        else:
            flush_slow()
            stop = value if outcome == _FLUSH else pos
            if pieces:
                allpos = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
                allkind = np.concatenate(kinds) if len(kinds) > 1 else kinds[0]
            else:
                allpos, allkind = np.zeros(0, np.int64), np.zeros(0, np.uint8)
            return _Walk(allpos, allkind, stop, outcome, value if outcome == _NEED else 0)


@dataclass(slots=True)
class _Iface:
    linktype: int
    snaplen: int
    units: int  # timestamp ticks per second
    tsoffset: int  # seconds added to every timestamp


def _wire(wirelen: I64, caplen: npt.NDArray[np.integer[Any]]) -> I32:
    """Wire lengths, with implausible ones (below caplen, absurdly large) replaced by caplen."""
    bad = (wirelen < caplen) | (wirelen > _MAX_WIRE)
    fixed: I32 = np.where(bad, caplen, wirelen).astype(np.int32)
    return fixed


class _Format:
    """What a file format must provide to the chunk loop."""

    file_base = 0  # file offset of the current buffer's first byte, for messages

    def walk(self, buf: bytes, start: int) -> _Walk:
        raise NotImplementedError

    def batch(self, buf: bytes, walk: _Walk) -> FrameBatch | None:
        raise NotImplementedError


class _Pcap(_Format):
    def __init__(self, header: bytes, problems: _Problems) -> None:
        order, self._frac = _PCAP_MAGICS[header[:4]]
        self._order = order
        _maj, _min, zone, _sig, snaplen, network = struct.unpack_from(order + "HHiIII", header, 4)
        self._zone = float(zone)
        self.snaplen = snaplen
        self.linktype = network & 0xFFFF  # upper bits carry FCS flags
        # A record larger than twice the announced snaplen means we lost the framing.
        self._cap_limit = min(MAX_CAPLEN, 2 * snaplen) if snaplen > 0 else MAX_CAPLEN
        self._cap_limit = max(self._cap_limit, 64)
        self._hdr = struct.Struct(order + "IIII").unpack_from
        self._problems = problems
        self._scratch = _Scratch()
        self._lanes = LaneFinder(order, self._cap_limit, _MAX_WIRE)

    def walk(self, buf: bytes, start: int) -> _Walk:
        end = len(buf)
        cand = np.zeros(0, np.int64)
        nxt = cand
        lanes = self._lanes.find(buf, start)
        if lanes is not None:
            cand, nxt, brk = self._scratch.chain(lanes[0], lanes[1], start)
        elif end - start >= 32:
            # Every header in a file shares the top byte of its seconds; look for that byte.
            top = 3 if self._order == "<" else 0
            cand = self._scratch.find(buf, start + top, end - 16 + top, buf[start + top]) - top
            hdr = _headers(buf, cand, 16)
            u32 = self._order + "u4"
            caplen = _field(hdr, 16, 8, u32).astype(np.int64)
            wirelen = _field(hdr, 16, 12, u32)
            nxt = cand + 16 + caplen
            good = (caplen > 0) & (caplen <= self._cap_limit) & (nxt <= end)
            good &= (wirelen >= caplen) & (wirelen <= _MAX_WIRE)
            cand, nxt, brk = self._scratch.chain(cand[good], nxt[good], start)
        else:
            brk = np.zeros(0, np.int64)
        return _hybrid_walk(cand, nxt, brk, start, lambda pos, _pending: self._step(buf, pos))

    def _step(self, buf: bytes, pos: int) -> tuple[int, int, int]:
        if pos + 16 > len(buf):
            return _NEED, 16, 0
        _sec, _frac, caplen, wirelen = self._hdr(buf, pos)
        at = self.file_base + pos
        if caplen > self._cap_limit:
            self._problems.add(
                "caplen",
                at,
                f"record at byte {at} claims {caplen} captured bytes (snaplen {self.snaplen}): "
                "not a plausible record, the file is corrupt from here",
            )
            return _FAULT, 0, 0
        if pos + 16 + caplen > len(buf):
            return _NEED, 16 + caplen, 0
        if caplen == 0:
            self._problems.add("zero", at, f"zero-length record at byte {at} skipped")
            return _SKIP, pos + 16, 0
        if not caplen <= wirelen <= _MAX_WIRE:
            self._problems.add(
                "wirelen",
                at,
                f"record at byte {at} has wire length {wirelen} for {caplen} captured bytes; "
                "wire length taken as the captured length",
            )
        return _REC, pos + 16 + caplen, 0

    def batch(self, buf: bytes, walk: _Walk) -> FrameBatch | None:
        pos = walk.pos
        if pos.size == 0:
            return None
        hdr = _headers(buf, pos, 16)
        u32 = self._order + "u4"
        sec = _field(hdr, 16, 0, u32)
        frac = _field(hdr, 16, 4, u32)
        caplen = _field(hdr, 16, 8, u32).astype(np.int32)
        wirelen = _wire(_field(hdr, 16, 12, u32).astype(np.int64), caplen)
        ts: F64 = sec + frac * self._frac
        if self._zone:
            ts += self._zone
        linktype: U16 = np.full(pos.size, self.linktype, np.uint16)
        return FrameBatch(buf, pos + 16, caplen, wirelen, ts, linktype)


class _PcapNg(_Format):
    def __init__(self, problems: _Problems) -> None:
        self._problems = problems
        self._scratch = _Scratch()
        self._order = "<"
        self._ifaces: list[_Iface] = []
        self._last_ts = 0.0  # for SPBs, which carry no timestamp
        self._set_order("<")

    def _set_order(self, order: str) -> None:
        self._order = order
        self._hdr = struct.Struct(order + "II").unpack_from
        self._u32 = struct.Struct(order + "I").unpack_from
        self._epb = struct.Struct(order + "IIIII").unpack_from
        self._u16 = struct.Struct(order + "H").unpack_from

    def walk(self, buf: bytes, start: int) -> _Walk:
        end = len(buf)
        n_if = len(self._ifaces)
        if end - start >= 64 and n_if:
            at, value = self._anchor(buf, start)
            cand = self._scratch.find(buf, start + at, end - 32 + at, value) - at
            hdr = _headers(buf, cand, 28)
            u32 = self._order + "u4"
            blen = _field(hdr, 28, 4, u32).astype(np.int64)
            caplen = _field(hdr, 28, 20, u32).astype(np.int64)
            wirelen = _field(hdr, 28, 24, u32)
            nxt = cand + blen
            fits = (_field(hdr, 28, 0, u32) == _EPB) & (blen >= 32) & ((blen & 3) == 0)
            fits &= (nxt <= end) & (_field(hdr, 28, 8, u32) < n_if) & (caplen > 0)
            fits &= (caplen + 32 <= blen) & (wirelen >= caplen) & (wirelen <= _MAX_WIRE)
            cand, blen, nxt = cand[fits], blen[fits], nxt[fits]
            good = _u32_view(buf, self._order)[nxt - 4] == blen
            cand, nxt, brk = self._scratch.chain(cand[good], nxt[good], start)
        else:
            cand = nxt = brk = np.zeros(0, np.int64)
        return _hybrid_walk(cand, nxt, brk, start, lambda p, pend: self._step(buf, p, pend))

    def _anchor(self, buf: bytes, start: int) -> tuple[int, int]:
        """A byte every EPB header of this stretch shares, and where it sits in the header.

        The type's byte 6 is also the IP protocol number of TCP, so most TCP frames would be
        false candidates. A byte of the timestamp's high word that changes every few days is
        much rarer; when it does change mid-chunk the careful walk takes over until the
        next chunk picks the new value.
        """
        fallback = (0 if self._order == "<" else 3, _EPB)
        if start + 32 > len(buf) or self._hdr(buf, start)[0] != _EPB:
            return fallback
        high = self._u32(buf, start + 12)[0].to_bytes(4, "big")
        nonzero = [k for k in range(4) if high[k]]
        if len(nonzero) < 2:
            return fallback
        k = nonzero[1]
        return (12 + (3 - k) if self._order == "<" else 12 + k), high[k]

    def _step(self, buf: bytes, pos: int, pending: bool) -> tuple[int, int, int]:
        end = len(buf)
        at = self.file_base + pos
        if pos + 12 > end:
            return _NEED, 12, 0
        btype = int.from_bytes(buf[pos : pos + 4], "little")
        if btype == _SHB:
            return self._section(buf, pos, pending)
        btype, blen = self._hdr(buf, pos)
        if blen < 12 or blen & 3:
            self._problems.add(
                "blen",
                at,
                f"block at byte {at} has length {blen}, "
                + ("not a multiple of 4" if blen >= 12 else "shorter than a block header")
                + ": the file is corrupt from here",
            )
            return _FAULT, 0, 0
        if blen > _MAX_BLOCK:
            self._problems.add(
                "huge", at, f"block at byte {at} claims {blen} bytes: the file is corrupt from here"
            )
            return _FAULT, 0, 0
        if pos + blen > end:
            return _NEED, blen, 0
        (trail,) = self._u32(buf, pos + blen - 4)
        if trail != blen:
            self._problems.add(
                "trail",
                at,
                f"block at byte {at} has length {blen} but its trailing length says {trail}: "
                "the file is corrupt from here",
            )
            return _FAULT, 0, 0
        if btype in (_EPB, _PB):
            return self._packet(buf, pos, btype, blen, at)
        if btype == _SPB:
            if not self._ifaces:
                self._problems.add(
                    "iface", at, f"packet at byte {at} names interface 0, which is not defined"
                )
                return _SKIP, pos + blen, 0
            if blen < 20 or self._u32(buf, pos + 8)[0] == 0:
                self._problems.add("zero", at, f"zero-length packet at byte {at} skipped")
                return _SKIP, pos + blen, 0
            return _REC, pos + blen, _KIND_SPB
        if btype == _IDB:
            if pending:
                return _FLUSH, pos, 0  # packets so far belong to the old interface table
            self._interface(buf, pos, blen, at)
            return _FLUSH, pos + blen, 0  # walk again: the candidate filter knows the interfaces
        return _SKIP, pos + blen, 0

    def _packet(self, buf: bytes, pos: int, btype: int, blen: int, at: int) -> tuple[int, int, int]:
        iface, _hi, _lo, caplen, wirelen = self._epb(buf, pos + 8)
        if btype == _PB:
            (iface,) = self._u16(buf, pos + 8)
        if iface >= len(self._ifaces):
            self._problems.add(
                "iface", at, f"packet at byte {at} names interface {iface}, which is not defined"
            )
            return _SKIP, pos + blen, 0
        if caplen + 32 > blen:
            self._problems.add(
                "epbcap",
                at,
                f"packet at byte {at} claims {caplen} captured bytes in a {blen}-byte block; "
                "skipped",
            )
            return _SKIP, pos + blen, 0
        if caplen == 0:
            self._problems.add("zero", at, f"zero-length packet at byte {at} skipped")
            return _SKIP, pos + blen, 0
        if not caplen <= wirelen <= _MAX_WIRE:
            self._problems.add(
                "wirelen",
                at,
                f"packet at byte {at} has wire length {wirelen} for {caplen} captured bytes; "
                "wire length taken as the captured length",
            )
        return _REC, pos + blen, _KIND_EPB if btype == _EPB else _KIND_PB

    def _section(self, buf: bytes, pos: int, pending: bool) -> tuple[int, int, int]:
        at = self.file_base + pos
        if pos + 28 > len(buf):
            return _NEED, 28, 0
        bom = buf[pos + 8 : pos + 12]
        if int.from_bytes(bom, "little") == _BOM:
            order = "<"
        elif int.from_bytes(bom, "big") == _BOM:
            order = ">"
        else:
            self._problems.add(
                "bom", at, f"section header at byte {at} has no byte-order magic: corrupt from here"
            )
            return _FAULT, 0, 0
        (blen,) = struct.unpack_from(order + "I", buf, pos + 4)
        if blen < 28 or blen & 3 or blen > _MAX_BLOCK:
            self._problems.add(
                "blen", at, f"section header at byte {at} has bad length {blen}: corrupt from here"
            )
            return _FAULT, 0, 0
        if pos + blen > len(buf):
            return _NEED, blen, 0
        if struct.unpack_from(order + "I", buf, pos + blen - 4)[0] != blen:
            self._problems.add(
                "trail",
                at,
                f"section header at byte {at} has a trailing length that does not match: "
                "corrupt from here",
            )
            return _FAULT, 0, 0
        if pending:
            return _FLUSH, pos, 0  # the new section has its own interfaces
        self._set_order(order)
        self._ifaces = []
        self._last_ts = 0.0
        return _FLUSH, pos + blen, 0

    def _interface(self, buf: bytes, pos: int, blen: int, at: int) -> None:
        if blen < 20:
            self._problems.add("idb", at, f"interface block at byte {at} too short; ignored")
            self._ifaces.append(_Iface(-1, 0, 10**6, 0))
            return
        linktype, _res, snaplen = struct.unpack_from(self._order + "HHI", buf, pos + 8)
        units, tsoffset = 10**6, 0
        opt = pos + 16
        stop = pos + blen - 4
        while opt + 4 <= stop:
            code, length = struct.unpack_from(self._order + "HH", buf, opt)
            value = buf[opt + 4 : opt + 4 + length]
            if code == 0 or opt + 4 + length > stop:
                break
            if code == 9 and length >= 1:
                r = value[0]
                exp = r & 0x7F
                if exp > (63 if r & 0x80 else 19):  # the tick rate must fit 64 bits
                    self._problems.add(
                        "tsresol", at, f"interface at byte {at}: absurd if_tsresol {r}; using µs"
                    )
                else:
                    units = 2**exp if r & 0x80 else 10**exp
            elif code == 14 and length >= 8:
                (tsoffset,) = struct.unpack_from(self._order + "q", value)
            opt += 4 + ((length + 3) & ~3)
        self._ifaces.append(_Iface(linktype, snaplen, units, tsoffset))

    def batch(self, buf: bytes, walk: _Walk) -> FrameBatch | None:
        pos = walk.pos
        n = int(pos.size)
        if n == 0:
            return None
        kind = walk.kind
        spb = kind == _KIND_SPB
        any_spb = bool(spb.any())
        any_pb = bool((kind == _KIND_PB).any())
        ifaces = self._ifaces
        # One gather of the fixed EPB fields; an SPB near the buffer end reads padding here
        # and takes its own fields below.
        src = buf if len(buf) >= 28 else bytes(buf) + bytes(28)
        hdr = _headers(src, np.minimum(pos, len(src) - 28), 28)
        u32 = self._order + "u4"
        raw = _field(hdr, 28, 8, u32)
        if any_pb:
            # The old Packet Block has a 16-bit interface id where EPB has 32 bits.
            short = raw >> 16 if self._order == ">" else raw & 0xFFFF
            iface = np.where(kind == _KIND_PB, short, raw)
        else:
            iface = raw
        if any_spb:
            iface = np.where(spb, 0, iface)
        iface = iface.astype(np.intp)
        if len(ifaces) == 1:
            linktype: U16 = np.full(n, ifaces[0].linktype, np.uint16)
        else:
            link_tab = np.array([f.linktype for f in ifaces], np.int64)
            linktype = link_tab[iface].astype(np.uint16)

        ticks = (_field(hdr, 28, 12, u32).astype(np.uint64) << np.uint64(32)) | _field(
            hdr, 28, 16, u32
        )
        units_set = {f.units for f in ifaces}
        if len(units_set) == 1:
            units = np.uint64(units_set.pop())
            whole = ticks // units
            part = ticks - whole * units
            ts: F64 = whole.astype(np.float64) + part.astype(np.float64) / float(units)
        else:
            units_arr = np.array([f.units for f in ifaces], np.uint64)[iface]
            whole = ticks // units_arr
            part = ticks - whole * units_arr
            ts = whole.astype(np.float64) + part.astype(np.float64) / units_arr.astype(np.float64)
        if any(f.tsoffset for f in ifaces):
            ts = ts + np.array([f.tsoffset for f in ifaces], np.float64)[iface]

        caplen: I64 = _field(hdr, 28, 20, u32).astype(np.int64)
        wirelen: I64 = _field(hdr, 28, 24, u32).astype(np.int64)
        data: I64 = pos + 28
        if any_spb:
            v = _u32_view(buf, self._order)
            orig = v[np.where(spb, pos + 8, 0)].astype(np.int64)
            room = v[np.where(spb, pos + 4, 0)].astype(np.int64) - 16
            snap = ifaces[0].snaplen
            spb_cap = np.minimum(orig, room)
            if snap > 0:
                spb_cap = np.minimum(spb_cap, snap)
            caplen = np.where(spb, spb_cap, caplen)
            wirelen = np.where(spb, orig, wirelen)
            data = np.where(spb, pos + 12, data)
            # An SPB takes the time of the last timestamped packet before it.
            idx = np.where(spb, -1, np.arange(n))
            np.maximum.accumulate(idx, out=idx)
            ts = np.where(idx >= 0, ts[np.maximum(idx, 0)], self._last_ts)
        self._last_ts = float(ts[-1])
        caplen32: I32 = caplen.astype(np.int32)
        wirelen32 = _wire(wirelen, caplen)
        return FrameBatch(buf, data, caplen32, wirelen32, ts, linktype)


def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` (fewer only at the end of the file)."""
    fh.seek(offset)
    data = fh.read(size)
    if data is None or len(data) == size or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < size:
        more = fh.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _map_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` (fewer at the end), mapped rather than copied.

    The mapping lives as long as some view of it (a batch, a queued hash chunk) does, so only
    the chunks in use count towards the process's memory.
    """
    size = min(size, os.fstat(fh.fileno()).st_size - offset)
    if size <= 0:
        return b""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    mm = mmap.mmap(fh.fileno(), offset - start + size, access=mmap.ACCESS_READ, offset=start)
    view = memoryview(mm)[offset - start :]
    return cast(bytes, view)  # read like bytes (slices, struct, numpy); never compared as bytes


class CaptureReader:
    """Iterate over a capture file as ``FrameBatch`` objects; see ``report`` for what happened.

    With ``map_file`` a batch's ``buf`` is a memoryview of the mapped file instead of bytes:
    no copy, for a consumer that only reads it with numpy, struct and slicing (and copies
    what it keeps). A file truncated while mapped kills the process with SIGBUS.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, chunk_bytes: int = 4 << 20, map_file: bool = False
    ) -> None:
        self.path = os.fspath(path)
        self._chunk = max(int(chunk_bytes), 256)
        self._map = map_file
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                head = fh.read(64)
        except OSError as exc:
            raise CaptureFormatError(self.path, 0, f"cannot read: {exc.strerror or exc}") from exc
        fmt = detect_format(head)
        if not head:
            raise CaptureFormatError(self.path, 0, "empty file")
        if fmt is None:
            raise CaptureFormatError(
                self.path, 0, f"not a pcap or pcapng file (starts with {head[:4].hex()})"
            )
        if fmt == "pcap" and len(head) < 24:
            raise CaptureFormatError(
                self.path, 0, f"pcap file header cut short ({len(head)} of 24 bytes)"
            )
        if fmt == "pcapng":
            bom = head[8:12]
            known = _BOM in (int.from_bytes(bom, "little"), int.from_bytes(bom, "big"))
            if len(head) < 28 or not known:
                raise CaptureFormatError(
                    self.path, 0, "pcapng section header cut short or without byte-order magic"
                )
        self._fmt_name: str = fmt
        self._head = head
        # Where the current batch's buffer lies in the file (batch offsets are relative to it).
        self.buf_base = 0
        self.buf_len = 0
        self.report = ReadReport(self.path, fmt, file_size=size)

    @property
    def bytes_read(self) -> int:
        return self.report.bytes_read

    @property
    def file_size(self) -> int:
        return self.report.file_size

    def __iter__(self) -> Iterator[FrameBatch]:
        report = ReadReport(self.path, self._fmt_name, file_size=self.report.file_size)
        self.report = report
        problems = _Problems(report)
        try:
            # Unbuffered: each chunk is read straight into its own bytes object.
            fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in finally below
        except OSError as exc:
            problems.add("io", 0, f"cannot read: {exc.strerror or exc}")
            report.stopped_early = True
            return
        try:
            yield from self._read(fh, report, problems)
        finally:
            fh.close()

    def _read(self, fh: BinaryIO, report: ReadReport, problems: _Problems) -> Iterator[FrameBatch]:
        fmt: _Format
        if self._fmt_name == "pcap":
            header = fh.read(24)
            fmt = _Pcap(header, problems)
            base = 24
        else:
            fmt = _PcapNg(problems)
            base = 0
        report.bytes_read = base
        want = self._chunk
        while True:
            try:
                buf = _map_at(fh, base, want) if self._map else _read_at(fh, base, want)
            except OSError as exc:
                problems.add("io", base, f"read error at byte {base}: {exc.strerror or exc}")
                report.stopped_early = True
                return
            at_eof = len(buf) < want
            fmt.file_base = base
            self.buf_base, self.buf_len = base, len(buf)
            start = 0
            while True:
                walk = fmt.walk(buf, start)
                batch = fmt.batch(buf, walk)
                report.bytes_read = base + walk.stop
                if batch is not None:
                    report.packets += len(batch)
                    yield batch
                if walk.reason != _FLUSH:
                    break
                start = walk.stop
            if walk.reason == _FAULT:
                report.stopped_early = True
                return
            # Otherwise the record at walk.stop is incomplete.
            left = len(buf) - walk.stop
            if at_eof:
                if left:
                    report.cut_short = True
                    at = base + walk.stop
                    problems.add(
                        "cut",
                        at,
                        f"file ends inside the record at byte {at} ({left} of at least "
                        f"{max(walk.need, left + 1)} bytes present); everything before it was kept",
                    )
                return
            # The incomplete record is read again at the start of the next chunk.
            base += walk.stop
            want = max(walk.need, self._chunk)
            del buf, batch
