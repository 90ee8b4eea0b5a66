"""The classic pcap format for ``capfile``: file header, record walk and batches."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from spyglass.core.frames import F64, U16, FrameBatch
from spyglass.core.lanes import LaneFinder
from spyglass.core.recordwalk import (
    FAULT,
    MAX_WIRE,
    NEED,
    REC,
    SKIP,
    Format,
    Scratch,
    Walk,
    fixed_wire,
    gather_headers,
    header_field,
    hybrid_walk,
)

if TYPE_CHECKING:
    from spyglass.core.capfile import Problems

MAX_CAPLEN: Final = 256 * 1024  # largest frame we believe (tcpdump's default snaplen)

_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class _Pcap(Format):
    def __init__(self, header: bytes, problems: Problems) -> None:
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
        self._scratch = Scratch()
        self._lanes = LaneFinder(order, self._cap_limit, MAX_WIRE)

    def walk(self, buf: bytes, start: int) -> Walk:
        end = len(buf)

        def step(pos: int, _pending: bool) -> tuple[int, int, int]:
            return self._step(buf, pos)

        lanes = self._lanes.find(buf, start)
        if lanes is not None:
            cand, nxt, hdr = lanes
            # The candidates are sorted and each is a sane record: a run ends where a record's
            # successor is not the next candidate.
            brk = np.flatnonzero(nxt[:-1] != cand[1:])
            brk = np.append(brk, cand.size - 1)
            return hybrid_walk(
                cand, nxt, brk, start, step, hdr, lambda pos: gather_headers(buf, pos, 16)
            )
        if end - start >= 32:
            # Every header in a file shares the top byte of its seconds; look for that byte.
            top = 3 if self._order == "<" else 0
            cand = self._scratch.find(buf, start + top, end - 16 + top, buf[start + top]) - top
            hdr = gather_headers(buf, cand, 16)
            u32 = self._order + "u4"
            caplen = header_field(hdr, 16, 8, u32).astype(np.int64)
            wirelen = header_field(hdr, 16, 12, u32)
            nxt = cand + 16 + caplen
            good = (caplen > 0) & (caplen <= self._cap_limit) & (nxt <= end)
            good &= (wirelen >= caplen) & (wirelen <= MAX_WIRE)
            cand, nxt, brk = self._scratch.chain(cand[good], nxt[good], start)
        else:
            cand = nxt = brk = np.zeros(0, np.int64)
        return hybrid_walk(cand, nxt, brk, start, step)

    def _step(self, buf: bytes, pos: int) -> tuple[int, int, int]:
        if pos + 16 > len(buf):
            return NEED, 16, 0
        _sec, _frac, caplen, wirelen = self._hdr(buf, pos)
        at = self.file_base + pos
        if caplen > self._cap_limit:
            self._problems.add(
                "caplen",
                at,
                f"record at byte {at} claims {caplen} captured bytes (snaplen {self.snaplen}): "
                "not a plausible record, the file is corrupt from here",
            )
            return FAULT, 0, 0
        if pos + 16 + caplen > len(buf):
            return NEED, 16 + caplen, 0
        if caplen == 0:
            self._problems.add("zero", at, f"zero-length record at byte {at} skipped")
            return SKIP, pos + 16, 0
        if not caplen <= wirelen <= MAX_WIRE:
            self._problems.add(
                "wirelen",
                at,
                f"record at byte {at} has wire length {wirelen} for {caplen} captured bytes; "
                "wire length taken as the captured length",
            )
        return REC, pos + 16 + caplen, 0

    def batch(self, buf: bytes, walk: Walk) -> FrameBatch | None:
        pos = walk.pos
        if pos.size == 0:
            return None
        hdr = walk.rows if walk.rows is not None else gather_headers(buf, pos, 16)
        u32 = self._order + "u4"
        # Contiguous columns: numpy is several times slower on the headers' strided fields.
        table: npt.NDArray[np.uint32] = np.ndarray((pos.size, 4), np.dtype(u32), hdr)
        sec, frac, cap, wire = table.T.copy()
        caplen = cap.astype(np.int32)
        wirelen = fixed_wire(wire.astype(np.int64), caplen)
        ts: F64 = frac * self._frac
        ts += sec
        if self._zone:
            ts += self._zone
        linktype: U16 = np.full(pos.size, self.linktype, np.uint16)
        return FrameBatch(buf, pos + 16, caplen, wirelen, ts, linktype)
