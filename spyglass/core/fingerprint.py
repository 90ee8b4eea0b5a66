"""A capture file's identity in the store: a sha256 over its size and sampled content.

Importing the same capture twice must not double anything, so the store needs an identity for a
file's content. A full sha256 costs about a CPU second per GB here, as much as the whole analysis
of that GB; sampling costs milliseconds. The sample is the first and last 4 MiB and a 64 KiB block
every 4 MiB between, so files up to 8 MiB are hashed whole, and two larger files share an identity
only with the same size and the same bytes at every sampled place (about 1/64 of the file). For
captures that would take an edit in place that keeps the size and leaves both ends alone: packet
records carry timestamps, so two different recordings differ early on.

The value is prefixed with the scheme (``fp1:``), so a later scheme, or the full sha256s of older
versions, never compare equal to it by accident.
"""

from __future__ import annotations

import hashlib
import os
import threading

SCHEME = "fp1"
END_BYTES = 4 << 20  # hashed whole at each end
STRIDE = 4 << 20  # one sampled block this often between the ends
BLOCK = 64 << 10


def sample_spans(size: int) -> list[tuple[int, int]]:
    """(offset, length) of every part of a ``size``-byte file that is hashed, in order."""
    if size <= 2 * END_BYTES:
        return [(0, size)] if size else []
    spans = [(0, END_BYTES)]
    tail = size - END_BYTES
    at = END_BYTES + STRIDE - BLOCK
    while at + BLOCK <= tail:
        spans.append((at, BLOCK))
        at += STRIDE
    spans.append((tail, END_BYTES))
    return spans


def capture_fingerprint(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(``fp1:<hex>``, size) of the file as it is now. Raises OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        digest = hashlib.sha256(f"{SCHEME} {size}\n".encode())
        for offset, length in sample_spans(size):
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise OSError(f"the file shrank while being read (at byte {offset + len(data)})")
            digest.update(data)
    finally:
        os.close(fd)
    return f"{SCHEME}:{digest.hexdigest()}", size


class Fingerprinting:
    """:func:`capture_fingerprint` on a thread, beside the analysis of the same file.

    Reading and hashing release the GIL, so the 20 ms a 1 GB file takes are not added to the
    analysis's. Start it only once any reader process has been forked (a thread running
    during a fork may hold a lock the child would wait on). :meth:`result` waits; it is the
    identity, or why the file has none.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = path
        self._thread: threading.Thread | None = None
        self._result: tuple[str, int] | str = "not fingerprinted"

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fingerprint", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._result = capture_fingerprint(self._path)
        except OSError as exc:
            self._result = f"cannot read it: {exc.strerror or exc}"

    def result(self) -> tuple[str, int] | str:
        self.start()
        assert self._thread is not None
        self._thread.join()
        return self._result
