"""The sha256 of a capture file (its identity in the store), from the chunks the reader reads.

Hashing a file costs about as much CPU as analysing it; reading it a second time to hash it costs
a copy more. So the reader hands each chunk over as it reads it, and a thread hashes them
(hashlib releases the GIL). Whatever the reader did not read (it stopped at a fault) is read here
at the end.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

_TAIL_CHUNK = 1 << 20


class FileHasher:
    """Feed :meth:`tap` the file's bytes in order (overlaps allowed); :meth:`finish` gives
    (sha256 hex digest, file size)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._digest = hashlib.sha256()
        self._done = 0  # length of the file prefix handed to the thread
        self._broken = False  # a gap in what the reader saw: hash the file afresh at the end
        # One chunk in flight at most: memory stays at one chunk more than the reader's.
        self._queue: queue.Queue[memoryview | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="file-hash", daemon=True)
        self._thread.start()

    def tap(self, offset: int, data: bytes) -> None:
        if self._broken:
            return
        if offset > self._done:
            self._broken = True
            return
        skip = self._done - offset
        if skip >= len(data):
            return
        self._queue.put(memoryview(data)[skip:])
        self._done = offset + len(data)

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def finish(self) -> tuple[str, int]:
        """Raises OSError when the rest of the file cannot be read."""
        self.close()
        if self._broken:
            self._digest, self._done = hashlib.sha256(), 0
        with open(self.path, "rb") as fh:
            fh.seek(self._done)
            while chunk := fh.read(_TAIL_CHUNK):
                self._digest.update(chunk)
                self._done += len(chunk)
        return self._digest.hexdigest(), self._done

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
