"""Write classic little-endian pcap files (stdlib only, buffered for millions of frames).

The simulator and the test-suite write captures with this; readers elsewhere in the project
(and Wireshark) read them back. Only the classic format is written: it is what every tool reads.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_FLUSH_BYTES = 1 << 20  # one write() per MiB keeps syscalls off the per-frame path
_MAX_U32 = 0xFFFFFFFF
_TS_MAX = 4294967296.0


class PcapWriter:
    """Context manager writing frames to a pcap file (or an already open binary file).

    ``write(ts, frame, wirelen)``: ``ts`` is UNIX epoch seconds; frames longer than ``snaplen``
    are cut to it and keep their original length as ``wirelen``.
    """

    def __init__(
        self,
        path_or_binary_file: str | Path | BinaryIO,
        *,
        linktype: int = 1,
        nanosecond: bool = False,
        snaplen: int = 262144,
    ) -> None:
        if not 0 <= linktype <= 0xFFFF:
            raise ValueError(f"pcap linktype must be 0..65535, got {linktype}")
        if not 1 <= snaplen <= _MAX_U32:
            raise ValueError(f"pcap snaplen must be 1..{_MAX_U32}, got {snaplen}")
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.count = 0
        self._scale = 1_000_000_000 if nanosecond else 1_000_000
        self._chunks: list[bytes] = []
        self._pending = 0
        self._owns = isinstance(path_or_binary_file, str | Path)
        if isinstance(path_or_binary_file, str | Path):
            self._fh: BinaryIO = open(path_or_binary_file, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._fh = path_or_binary_file
        magic = MAGIC_NSEC if nanosecond else MAGIC_USEC
        self._fh.write(_GLOBAL.pack(magic, 2, 4, 0, 0, snaplen, linktype))
        self._closed = False

    def write(self, ts: float, frame: bytes, wirelen: int | None = None) -> None:
        """Append one frame captured at ``ts`` (seconds since the epoch)."""
        n = len(frame)
        if wirelen is None and n <= self.snaplen and 0.0 <= ts < _TS_MAX and not self._closed:
            # Fast path (almost every frame): one pack, one concatenation, one append.
            sec = int(ts)
            frac = int((ts - sec) * self._scale + 0.5)
            if frac >= self._scale:  # rounding carried into the next second
                sec += 1
                frac -= self._scale
            self._chunks.append(_RECORD.pack(sec, frac, n, n) + frame)
            self.count += 1
            self._pending += n
            if self._pending >= _FLUSH_BYTES:
                self.flush()
            return
        self._write_checked(ts, frame, wirelen)

    def write_many(self, frames: Iterable[tuple[float, bytes]]) -> int:
        """Append ``(ts, frame)`` pairs in order; returns how many were written."""
        items = frames if isinstance(frames, list) else list(frames)
        if not items:
            return 0
        pack = _RECORD.pack
        scale = self._scale
        fscale = float(scale)
        recs: list[bytes] = []
        if not (
            self._closed
            or self.nanosecond
            or max(map(len, map(itemgetter(1), items))) > self.snaplen
        ):
            try:
                # Integer microseconds in one multiplication: exact for epoch times (< 2**53);
                # divmod splits seconds and fraction with no carry to fix up.
                recs = [
                    pack(*divmod(int(ts * fscale + 0.5), scale), len(f), len(f)) for ts, f in items
                ]
            except (struct.error, ValueError, OverflowError):
                recs = []  # a timestamp out of range: the checked path says which
        if not recs:
            for ts, f in items:
                self._write_checked(ts, f, None)
            return len(items)
        # Headers and frames interleaved: the one join in flush() is the only copy of a frame.
        frames_ = [f for _, f in items]
        parts: list[bytes] = [b""] * (2 * len(recs))
        parts[0::2] = recs
        parts[1::2] = frames_
        self._chunks += parts
        self.count += len(recs)
        self._pending += 16 * len(recs) + sum(map(len, frames_))
        if self._pending >= _FLUSH_BYTES:
            self.flush()
        return len(recs)

    def _write_checked(self, ts: float, frame: bytes, wirelen: int | None) -> None:
        if self._closed:
            raise ValueError("PcapWriter is closed")
        if not 0 <= ts < _TS_MAX:
            raise ValueError(f"pcap timestamp must be 0 <= ts < 2**32 seconds, got {ts!r}")
        sec = int(ts)
        frac = round((ts - sec) * self._scale)
        if frac >= self._scale:
            sec += 1
            frac -= self._scale
        caplen = len(frame)
        if wirelen is None:
            wirelen = caplen
        elif wirelen < caplen or wirelen > _MAX_U32:
            raise ValueError(f"wirelen {wirelen} must be >= the frame's {caplen} bytes and < 2**32")
        if caplen > self.snaplen:
            frame = frame[: self.snaplen]
            caplen = self.snaplen
        self._chunks.append(_RECORD.pack(sec, frac, caplen, wirelen) + frame)
        self.count += 1
        self._pending += caplen
        if self._pending >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._chunks:
            self._fh.write(b"".join(self._chunks))
            self._chunks.clear()
            self._pending = 0
        self._fh.flush()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._owns:
                self._fh.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
