"""Read and prepare a pcapng file in a second process, so a file uses two cores.

(Classic pcap files, the common large ones, are shared more evenly by
:mod:`spyglass.core.parallelpcap`, where both processes walk the file. A pcapng file's meaning
depends on blocks seen earlier, its interface table, so here one process walks it all.)

The worker does everything that depends on one batch alone — reading, record walking, decode,
:func:`spyglass.core.prepare.prepare` — and sends each batch's compact aggregates through a pipe
(a few hundred KB at most); the calling process keeps the state (flows, devices, names, the
detector). The pipe's own buffer bounds how far the worker runs ahead, so memory stays flat.
Results are the same as feeding the batches in one process: both run the same two halves.

Which half is heavier depends on the capture (a DNS-heavy one loads the stateful half), so the
work is shared by demand: whenever the caller has had to wait for the worker since the worker's
last batch, the worker hands it the next batch unprepared — that batch's record table (where
each frame is), whose bytes the caller reads itself — and otherwise prepares it. A counter in
shared memory (how often the caller found nothing to do) carries the signal.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import warnings
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from spyglass.core.capfile import CaptureFormatError, ReadReport, open_capture
from spyglass.core.frames import FrameBatch
from spyglass.core.prepare import Prepared, Preparer, PrepSettings

__all__ = ["FORK", "PreparedReader", "TwoProcessReader", "WorkerFailed", "running"]

FORK = multiprocessing.get_context("fork")  # no re-import: a worker starts at once


class WorkerFailed(Exception):
    """The reader process stopped without finishing (killed, out of memory, a bug)."""


def _work(
    conn: Connection, path: str, chunk_bytes: int, settings: PrepSettings, waits: Any
) -> None:
    # Ctrl-C reaches the whole process group: the parent decides, and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        reader = open_capture(path, chunk_bytes=chunk_bytes, map_file=True)
        prep = Preparer(settings)
        seen = 0
        for batch in reader:
            if waits.value != seen:  # the caller ran out of work lately: give it this batch
                seen = waits.value
                table = (reader.buf_base, reader.buf_len, batch.offset, batch.caplen,
                         batch.wirelen, batch.ts, batch.linktype)
                conn.send(("frames", table, reader.bytes_read))
            else:
                conn.send(("batch", prep(batch), reader.bytes_read))
        conn.send(("end", reader.report, reader.bytes_read))
    except CaptureFormatError as exc:
        _tell(conn, ("format", (exc.path, exc.offset, exc.reason), 0))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped listening (it failed, or was interrupted)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        _tell(conn, ("error", f"{type(exc).__name__}: {exc}", 0))
    finally:
        conn.close()


@contextlib.contextmanager
def running(
    target: Callable[..., None], send: Connection, recv: Connection, args: tuple[Any, ...],
    on_start: Callable[[], None] | None,
) -> Iterator[None]:
    """``target(send, *args)`` in a forked worker while the block runs (``on_start`` first);
    afterwards ``recv`` is closed and the worker ended and reaped, however the block ends."""
    proc = FORK.Process(target=target, args=(send, *args), daemon=True)
    with warnings.catch_warnings():
        # A caller's other threads, if any, hold nothing the child touches: it
        # only reads the file and runs numpy on its own arrays.
        warnings.simplefilter("ignore", DeprecationWarning)
        proc.start()
    send.close()
    try:
        if on_start is not None:
            on_start()
        yield
    finally:
        recv.close()
        if proc.is_alive():
            proc.terminate()
        proc.join()


def _tell(conn: Connection, message: tuple[str, Any, int]) -> None:
    with contextlib.suppress(OSError):  # the parent is gone: nothing to tell
        conn.send(message)


class TwoProcessReader:
    """What both two-process readers take and show: ``report`` (the file's
    :class:`ReadReport`, final after the iteration), ``bytes_read`` and ``file_size`` for
    progress. Raises :class:`CaptureFormatError` as :func:`open_capture` does, before forking;
    ``on_start`` is called once the worker exists (threads the caller starts then cannot hold
    a lock the forked worker would need)."""

    def __init__(
        self, path: str | os.PathLike[str], settings: PrepSettings, *, chunk_bytes: int,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        probe = open_capture(self.path, chunk_bytes=chunk_bytes)  # format errors here, at once
        self.report: ReadReport = probe.report
        self.bytes_read = 0
        self.file_size = probe.file_size
        self._settings = settings
        self._chunk = chunk_bytes
        self._on_start = on_start



class PreparedReader(TwoProcessReader):
    """Iterate over a file's batches, read by a worker process: each either :class:`Prepared`
    there, or a :class:`FrameBatch` (read here) for the caller to prepare. Raises
    :class:`WorkerFailed` when the worker dies, before any batch or mid-file.
    """

    def __iter__(self) -> Iterator[Prepared | FrameBatch]:
        recv, send = FORK.Pipe(duplex=False)
        waits = FORK.RawValue("L", 0)  # how often this process found no message waiting
        args = (self.path, self._chunk, self._settings, waits)
        with running(_work, send, recv, args, self._on_start), \
                open(self.path, "rb", buffering=0) as fh:
            yield from self._receive(recv, fh.fileno(), waits)

    def _receive(
        self, recv: Connection, fd: int, waits: Any
    ) -> Iterator[Prepared | FrameBatch]:
        buf_at: tuple[int, int] | None = None
        buf = b""
        while True:
            try:
                if not recv.poll():
                    waits.value += 1  # only this process writes it
                kind, value, bytes_read = recv.recv()
            except (EOFError, OSError) as exc:
                raise WorkerFailed(f"{self.path}: the reader process stopped ({exc!r})") from exc
            if kind == "batch":
                self.bytes_read = bytes_read
                yield value
            elif kind == "frames":
                base, length, offset, caplen, wirelen, ts, linktype = value
                if buf_at != (base, length):
                    buf = b""  # one chunk in memory at a time
                    buf = os.pread(fd, length, base)
                    buf_at = (base, length)
                    if len(buf) != length:
                        raise WorkerFailed(f"{self.path}: the file changed while being read")
                self.bytes_read = bytes_read
                yield FrameBatch(buf, offset, caplen, wirelen, ts, linktype)
            elif kind == "end":
                self.report = value
                self.bytes_read = bytes_read
                return
            elif kind == "format":
                raise CaptureFormatError(*_format_args(value))
            else:
                raise WorkerFailed(f"{self.path}: the reader process failed: {value}")


def _format_args(value: Any) -> tuple[str, int, str]:
    path, offset, reason = value
    return str(path), int(offset), str(reason)
