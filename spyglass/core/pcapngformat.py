"""The pcapng format for ``capfile``: block walk, section and interface tables, batches."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from spyglass.core.frames import F64, I32, I64, U16, FrameBatch
from spyglass.core.recordwalk import (
    FAULT,
    FLUSH,
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
    u32_view,
)

if TYPE_CHECKING:
    from spyglass.core.capfile import Problems

_MAX_BLOCK: Final = 64 << 20  # pcapng blocks beyond this are garbage, not data

_SHB: Final = 0x0A0D0D0A
_BOM: Final = 0x1A2B3C4D
_IDB, _PB, _SPB, _EPB = 1, 2, 3, 6
_KIND_EPB, _KIND_SPB, _KIND_PB = 0, 1, 2


@dataclass(slots=True)
class _Iface:
    linktype: int
    snaplen: int
    units: int  # timestamp ticks per second
    tsoffset: int  # seconds added to every timestamp


class _PcapNg(Format):
    def __init__(self, problems: Problems) -> None:
        self._problems = problems
        self._scratch = Scratch()
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

    def walk(self, buf: bytes, start: int) -> Walk:
        end = len(buf)
        n_if = len(self._ifaces)
        if end - start >= 64 and n_if:
            at, value = self._anchor(buf, start)
            cand = self._scratch.find(buf, start + at, end - 32 + at, value) - at
            hdr = gather_headers(buf, cand, 28)
            u32 = self._order + "u4"
            blen = header_field(hdr, 28, 4, u32).astype(np.int64)
            caplen = header_field(hdr, 28, 20, u32).astype(np.int64)
            wirelen = header_field(hdr, 28, 24, u32)
            nxt = cand + blen
            fits = (header_field(hdr, 28, 0, u32) == _EPB) & (blen >= 32) & ((blen & 3) == 0)
            fits &= (nxt <= end) & (header_field(hdr, 28, 8, u32) < n_if) & (caplen > 0)
            fits &= (caplen + 32 <= blen) & (wirelen >= caplen) & (wirelen <= MAX_WIRE)
            cand, blen, nxt = cand[fits], blen[fits], nxt[fits]
            good = u32_view(buf, self._order)[nxt - 4] == blen
            cand, nxt, brk = self._scratch.chain(cand[good], nxt[good], start)
        else:
            cand = nxt = brk = np.zeros(0, np.int64)
        return hybrid_walk(cand, nxt, brk, start, lambda p, pend: self._step(buf, p, pend))

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
            return NEED, 12, 0
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
            return FAULT, 0, 0
        if blen > _MAX_BLOCK:
            self._problems.add(
                "huge", at, f"block at byte {at} claims {blen} bytes: the file is corrupt from here"
            )
            return FAULT, 0, 0
        if pos + blen > end:
            return NEED, blen, 0
        (trail,) = self._u32(buf, pos + blen - 4)
        if trail != blen:
            self._problems.add(
                "trail",
                at,
                f"block at byte {at} has length {blen} but its trailing length says {trail}: "
                "the file is corrupt from here",
            )
            return FAULT, 0, 0
        if btype in (_EPB, _PB):
            return self._packet(buf, pos, btype, blen, at)
        if btype == _SPB:
            if not self._ifaces:
                self._problems.add(
                    "iface", at, f"packet at byte {at} names interface 0, which is not defined"
                )
                return SKIP, pos + blen, 0
            if blen < 20 or self._u32(buf, pos + 8)[0] == 0:
                self._problems.add("zero", at, f"zero-length packet at byte {at} skipped")
                return SKIP, pos + blen, 0
            return REC, pos + blen, _KIND_SPB
        if btype == _IDB:
            if pending:
                return FLUSH, pos, 0  # packets so far belong to the old interface table
            self._interface(buf, pos, blen, at)
            return FLUSH, pos + blen, 0  # walk again: the candidate filter knows the interfaces
        return SKIP, pos + blen, 0

    def _packet(self, buf: bytes, pos: int, btype: int, blen: int, at: int) -> tuple[int, int, int]:
        iface, _hi, _lo, caplen, wirelen = self._epb(buf, pos + 8)
        if btype == _PB:
            (iface,) = self._u16(buf, pos + 8)
        if iface >= len(self._ifaces):
            self._problems.add(
                "iface", at, f"packet at byte {at} names interface {iface}, which is not defined"
            )
            return SKIP, pos + blen, 0
        if caplen + 32 > blen:
            self._problems.add(
                "epbcap",
                at,
                f"packet at byte {at} claims {caplen} captured bytes in a {blen}-byte block; "
                "skipped",
            )
            return SKIP, pos + blen, 0
        if caplen == 0:
            self._problems.add("zero", at, f"zero-length packet at byte {at} skipped")
            return SKIP, pos + blen, 0
        if not caplen <= wirelen <= MAX_WIRE:
            self._problems.add(
                "wirelen",
                at,
                f"packet at byte {at} has wire length {wirelen} for {caplen} captured bytes; "
                "wire length taken as the captured length",
            )
        return REC, pos + blen, _KIND_EPB if btype == _EPB else _KIND_PB

    def _section(self, buf: bytes, pos: int, pending: bool) -> tuple[int, int, int]:
        at = self.file_base + pos
        if pos + 28 > len(buf):
            return NEED, 28, 0
        bom = buf[pos + 8 : pos + 12]
        if int.from_bytes(bom, "little") == _BOM:
            order = "<"
        elif int.from_bytes(bom, "big") == _BOM:
            order = ">"
        else:
            self._problems.add(
                "bom", at, f"section header at byte {at} has no byte-order magic: corrupt from here"
            )
            return FAULT, 0, 0
        (blen,) = struct.unpack_from(order + "I", buf, pos + 4)
        if blen < 28 or blen & 3 or blen > _MAX_BLOCK:
            self._problems.add(
                "blen", at, f"section header at byte {at} has bad length {blen}: corrupt from here"
            )
            return FAULT, 0, 0
        if pos + blen > len(buf):
            return NEED, blen, 0
        if struct.unpack_from(order + "I", buf, pos + blen - 4)[0] != blen:
            self._problems.add(
                "trail",
                at,
                f"section header at byte {at} has a trailing length that does not match: "
                "corrupt from here",
            )
            return FAULT, 0, 0
        if pending:
            return FLUSH, pos, 0  # the new section has its own interfaces
        self._set_order(order)
        self._ifaces = []
        self._last_ts = 0.0
        return FLUSH, pos + blen, 0

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

    def batch(self, buf: bytes, walk: Walk) -> FrameBatch | None:
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
        hdr = gather_headers(src, np.minimum(pos, len(src) - 28), 28)
        u32 = self._order + "u4"
        raw = header_field(hdr, 28, 8, u32)
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

        ticks = (header_field(hdr, 28, 12, u32).astype(np.uint64) << np.uint64(32)) | header_field(
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

        caplen: I64 = header_field(hdr, 28, 20, u32).astype(np.int64)
        wirelen: I64 = header_field(hdr, 28, 24, u32).astype(np.int64)
        data: I64 = pos + 28
        if any_spb:
            v = u32_view(buf, self._order)
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
        wirelen32 = fixed_wire(wirelen, caplen)
        return FrameBatch(buf, data, caplen32, wirelen32, ts, linktype)
