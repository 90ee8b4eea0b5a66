"""Streaming reader of pcap and pcapng files, in constant memory, batch by batch.

The file is read in chunks of a few MiB; every chunk becomes one or more ``FrameBatch`` whose
``buf`` is the chunk itself, so frames are never copied one by one. A pcap file is cut at fixed
offsets (:mod:`spyglass.core.pcapsegments`: a chunk holds the records that start in it, read a
little past its end for the last one), so that two processes can share it; in a pcapng file a
record cut by the chunk end is carried into the next chunk.

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
from collections.abc import Iterator
from functools import partial
from typing import BinaryIO, Literal, cast

from spyglass.core.frames import FrameBatch
from spyglass.core.pcapformat import _PCAP_MAGICS, MAX_CAPLEN
from spyglass.core.pcapngformat import _BOM, _SHB, _PcapNg
from spyglass.core.pcapsegments import HEADER, PcapSegments
from spyglass.core.readreport import Problems, ReadProblem, ReadReport
from spyglass.core.recordwalk import FAULT, FLUSH, Format

__all__ = [
    "MAX_CAPLEN",
    "CaptureFormatError",
    "CaptureReader",
    "Problems",
    "ReadProblem",
    "ReadReport",
    "detect_format",
    "open_capture",
]


class CaptureFormatError(Exception):
    """The file is not a capture at all, or nothing in it is usable from byte ``offset`` on."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: byte {offset}: {reason}")


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


def read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
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


def map_at(fh: BinaryIO, offset: int, size: int) -> bytes:
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
        problems = Problems(report)
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

    def _read(self, fh: BinaryIO, report: ReadReport, problems: Problems) -> Iterator[FrameBatch]:
        if self._fmt_name == "pcap":
            yield from self._read_pcap(fh, report, problems)
            return
        fmt: Format = _PcapNg(problems)
        base = 0
        report.bytes_read = base
        want = self._chunk
        while True:
            try:
                buf = map_at(fh, base, want) if self._map else read_at(fh, base, want)
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
                if walk.reason != FLUSH:
                    break
                start = walk.stop
            if walk.reason == FAULT:
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

    def _read_pcap(
        self, fh: BinaryIO, report: ReadReport, problems: Problems
    ) -> Iterator[FrameBatch]:
        """Segment after segment, each walked from where the one before ended (see
        :mod:`spyglass.core.pcapsegments`: the batches are those a two-process reader gives)."""
        header = fh.read(HEADER)
        segments = PcapSegments(header, os.fstat(fh.fileno()).st_size, self._chunk)
        report.bytes_read = HEADER
        read = partial(map_at if self._map else read_at, fh)
        pos = HEADER
        for k in range(segments.count):
            try:
                seg, batch = segments.walk(k, read, pos)
            except OSError as exc:
                problems.add("io", pos, f"read error at byte {pos}: {exc.strerror or exc}")
                report.stopped_early = True
                return
            ended = seg.report_to(report, problems)
            if batch is not None:
                self.buf_base, self.buf_len = seg.start, len(batch.buf)
                yield batch
            if ended:
                return
            pos = seg.stop
