"""A pcap file read by two processes that share the whole work, segment by segment.

Both processes take segments (:mod:`spyglass.core.pcapsegments`) in file order from one shared
counter, walk and prepare them (:func:`spyglass.core.prepare.prepare`); the worker sends what it
prepared through a pipe, and the calling process, which alone holds the state, applies every
segment in file order. The caller takes a segment itself only when the next one to apply is not
there yet, so the split follows the load wherever it is (a DNS-heavy capture loads the stateful
side). A segment the worker walked from a start it found is applied only if the segment before
ended exactly there; any other is walked again here from the known start. If the worker dies,
the caller goes on alone: nothing is lost either way.

The worker maps the file; the caller reads into one reused buffer instead, because a file cut
short while mapped would kill the process holding the map (SIGBUS), and that must not be the one
that reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Callable, Iterator
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from spyglass.core.capfile import CaptureFormatError, ReadReport, map_at
from spyglass.core.parallel import FORK, TwoProcessReader, running
from spyglass.core.pcapsegments import FAILED, HEADER, NOT_FOUND, PcapSegments, Segment
from spyglass.core.prepare import Prepared, Preparer, PrepSettings
from spyglass.core.readreport import Problems

__all__ = ["SegmentedReader"]

AHEAD = 4  # segments the caller may hold ready beyond the next one to apply
_PIPE_BYTES = 1 << 20  # lets the worker run a few prepared segments ahead without blocking

Result = tuple[Segment, Prepared | None]


def _claim(counter: Any) -> int:
    with counter.get_lock():
        k = int(counter.value)
        counter.value = k + 1
    return k


def _work(
    conn: Connection, path: str, header: bytes, size: int, chunk: int, settings: PrepSettings,
    counter: Any,
) -> None:
    # Ctrl-C reaches the whole process group: the parent decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        segments = PcapSegments(header, size, chunk)
        prep = Preparer(settings)
        with open(path, "rb", buffering=0) as fh:
            read = partial(map_at, fh)
            while (k := _claim(counter)) < segments.count:
                seg, batch = segments.walk(k, read, HEADER if k == 0 else None)
                conn.send((seg, prep(batch) if batch is not None else None))
        conn.send((None, None))  # done
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped listening (it is done, failed, or was interrupted)
    except BaseException as exc:  # noqa: BLE001 - the parent goes on alone, and says why
        with contextlib.suppress(OSError):
            conn.send((None, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class _Buffer:
    """Reads into one buffer, reused: each read's bytes are valid until the next read."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def read(self, offset: int, size: int) -> bytes:
        if len(self._buf) < size:
            self._buf = bytearray(size)
        view = memoryview(self._buf)[:size]
        got = 0
        while got < size:
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n <= 0:
                break
            got += n
        return view[:got]  # type: ignore[return-value]  # read like bytes


class SegmentedReader(TwoProcessReader):
    """Iterate over a pcap file's segments as :class:`Prepared`, in file order, prepared by
    either process. ``report`` ends the same as the one-process reader's, and
    ``worker_failed`` says why the worker stopped early, if it did (the rest was read here)."""

    def __init__(
        self, path: str | os.PathLike[str], settings: PrepSettings, *, chunk_bytes: int,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(path, settings, chunk_bytes=chunk_bytes, on_start=on_start)
        self.worker_failed: str | None = None

    def __iter__(self) -> Iterator[Prepared]:
        try:
            fh = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in finally below
        except OSError as exc:
            raise CaptureFormatError(self.path, 0, f"cannot read: {exc.strerror or exc}") from exc
        try:
            header = fh.read(HEADER)
            size = os.fstat(fh.fileno()).st_size
            yield from self._share(fh.fileno(), header, size)
        finally:
            fh.close()

    def _share(self, fd: int, header: bytes, size: int) -> Iterator[Prepared]:
        segments = PcapSegments(header, size, self._chunk)
        report = ReadReport(self.path, "pcap", file_size=size, bytes_read=HEADER)
        self.report = report
        problems = Problems(report)
        recv, send = FORK.Pipe(duplex=False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(send.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        counter = FORK.Value("q", 0)
        args = (self.path, header, size, self._chunk, self._settings, counter)
        with running(_work, send, recv, args, self._on_start):
            here = _Local(segments, _Buffer(fd).read, Preparer(self._settings))
            yield from self._apply_in_order(segments, recv, counter, here, report, problems)

    def _apply_in_order(
        self, segments: PcapSegments, recv: Connection, counter: Any, here: _Local,
        report: ReadReport, problems: Problems,
    ) -> Iterator[Prepared]:
        ready: dict[int, Result] = {}
        worker = True  # still sending
        expect = HEADER  # where the next segment's first record starts
        k = 0
        while k < segments.count:
            if k not in ready:
                if worker and recv.poll():
                    worker = self._receive(recv, ready)
                elif len(ready) < AHEAD and (j := _claim(counter)) < segments.count:
                    ready[j] = here.walk(j, expect if j == k else None)
                elif worker:
                    worker = self._receive(recv, ready)
                else:
                    ready[k] = here.walk(k, expect)
                continue
            seg, prepared = ready.pop(k)
            if seg.end == NOT_FOUND or seg.start != expect:
                seg, prepared = here.walk(k, expect)  # a wrong guess: walk it from the truth
            ended = seg.report_to(report, problems)
            self.bytes_read = report.bytes_read
            if prepared is not None:
                yield prepared
            if ended:
                return
            expect = seg.stop
            k += 1

    def _receive(self, recv: Connection, ready: dict[int, Result]) -> bool:
        """Take one message from the worker; False when it has stopped (done or failed)."""
        try:
            seg, prepared = recv.recv()
        except (EOFError, OSError):
            self.worker_failed = "it stopped unexpectedly"  # killed, out of memory, ...
            return False
        if seg is None:
            if prepared is not None:
                self.worker_failed = str(prepared)
            return False
        ready[seg.index] = (seg, prepared)
        return True


class _Local:
    """Walk and prepare a segment in this process; a read error ends the file there."""

    def __init__(
        self, segments: PcapSegments, read: Callable[[int, int], bytes], prep: Preparer
    ) -> None:
        self._segments = segments
        self._read = read
        self._prep = prep

    def walk(self, k: int, start: int | None) -> Result:
        try:
            seg, batch = self._segments.walk(k, self._read, start)
        except OSError as exc:
            at = self._segments.bounds(k)[0] if start is None else start
            why = f"read error at byte {at}: {exc.strerror or exc}"
            return Segment(k, at, at, FAILED, problems=[("io", at, why)]), None
        return seg, (self._prep(batch) if batch is not None else None)
