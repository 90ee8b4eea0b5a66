"""A pcap file read by worker processes that share the work, segment by segment.

The workers (as many as the machine has cores, up to MAX_READERS) take segments
(:mod:`spyglass.core.pcapsegments`) in file order from one shared counter, walk and prepare them
(:func:`spyglass.core.prepare.prepare`), and send what they prepared through a pipe each; the
calling process, which alone holds the state, applies every segment in file order. A segment a
worker walked from a start it found is applied only if the segment before ended exactly there;
any other is walked again here from the known start. If a worker dies, the segments it did not
send are walked here: nothing is lost either way.

The workers map the file, and the caller only applies: a file cut short while mapped kills the
process holding the map (SIGBUS), and that must not be the one that reports. The caller reads
(into one reused buffer) only what it must walk itself. On this project's 2-core machine,
copying a GB out of the page cache costs 0.74 s of CPU, mapping it 0.2 s: the caller used to
walk a third of the segments itself and so paid for that copy on the critical path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Callable, Iterator
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any

from spyglass.core.capfile import CaptureFormatError, ReadReport, map_at
from spyglass.core.parallel import FORK, TwoProcessReader, running
from spyglass.core.pcapsegments import FAILED, HEADER, NOT_FOUND, PcapSegments, Segment
from spyglass.core.prepare import Prepared, Preparer, PrepSettings
from spyglass.core.readreport import Problems

__all__ = ["SegmentedReader"]

AHEAD = 4  # segments held ready beyond the next one, past which only its reader is heard
MAX_READERS = 4  # worker processes at most (the stateful side is one process)
_PIPE_BYTES = 1 << 20  # lets a worker run a few prepared segments ahead without blocking

Result = tuple[Segment, Prepared | None]


def _claim(counter: Any, owner: Any, me: int) -> int:
    """The next segment, marked as ``me``'s (``owner[k]``; -1 while nobody has it)."""
    with counter.get_lock():
        k = int(counter.value)
        counter.value = k + 1
        if k < len(owner):
            owner[k] = me
    return k


def _work(
    conn: Connection, me: int, path: str, header: bytes, size: int, chunk: int,
    settings: PrepSettings, counter: Any, owner: Any,
) -> None:
    # Ctrl-C reaches the whole process group: the parent decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        segments = PcapSegments(header, size, chunk)
        prep = Preparer(settings)
        with open(path, "rb", buffering=0) as fh:
            read = partial(map_at, fh)
            while (k := _claim(counter, owner, me)) < segments.count:
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
    ``readers`` worker processes. ``report`` ends the same as the one-process reader's, and
    ``worker_failed`` says why a worker stopped early, if one did (what it did not send was
    read here)."""

    def __init__(
        self, path: str | os.PathLike[str], settings: PrepSettings, *, chunk_bytes: int,
        on_start: Callable[[], None] | None = None, readers: int = 2,
    ) -> None:
        super().__init__(path, settings, chunk_bytes=chunk_bytes, on_start=on_start)
        self.worker_failed: str | None = None
        self._readers = max(1, min(readers, MAX_READERS))

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
        counter = FORK.Value("q", 0)
        owner = FORK.RawArray("b", [-1] * segments.count)
        workers = []
        for me in range(self._readers):
            recv, send = FORK.Pipe(duplex=False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(send.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            args = (me, self.path, header, size, self._chunk, self._settings, counter, owner)
            workers.append((send, recv, args))
        with running(_work, workers, self._on_start):
            here = _Local(segments, _Buffer(fd).read, Preparer(self._settings))
            live = {me: recv for me, (_, recv, _) in enumerate(workers)}
            yield from self._apply_in_order(segments, live, owner, here, report, problems)

    def _apply_in_order(
        self, segments: PcapSegments, live: dict[int, Connection], owner: Any, here: _Local,
        report: ReadReport, problems: Problems,
    ) -> Iterator[Prepared]:
        ready: dict[int, Result] = {}
        expect = HEADER  # where the next segment's first record starts
        k = 0
        while k < segments.count:
            if k not in ready:
                who = owner[k]
                if not live or (who >= 0 and who not in live):
                    ready[k] = here.walk(k, expect)  # nobody left to send it: walk it here
                elif len(ready) >= AHEAD and who >= 0:
                    self._receive(who, live, ready)  # only k's reader: the others may wait
                else:
                    for conn in wait(list(live.values())):
                        self._receive(_key_of(live, conn), live, ready)
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

    def _receive(self, me: int, live: dict[int, Connection], ready: dict[int, Result]) -> None:
        """Take one message from worker ``me``; forget the worker once it has stopped (done
        or failed)."""
        try:
            seg, prepared = live[me].recv()
        except (EOFError, OSError):
            self.worker_failed = "it stopped unexpectedly"  # killed, out of memory, ...
            del live[me]
            return
        if seg is None:
            if prepared is not None:
                self.worker_failed = str(prepared)
            del live[me]
            return
        ready[seg.index] = (seg, prepared)


def _key_of(live: dict[int, Connection], conn: object) -> int:
    return next(me for me, c in live.items() if c is conn)


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
