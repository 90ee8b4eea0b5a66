"""Open the store on a thread while the first capture is being read.

Importing sqlite-utils and opening (migrating) the database take about 0.2 s, a fifth of
analysing a 1M-packet file; the reading runs in another process, so this thread hides them. The
thread starts only once that process exists: forking while a thread is importing could leave the
child waiting forever on an import lock the thread held.

Closing goes on a thread too (:meth:`StoreOpener.close_soon`), and :class:`SeriesToStore`
hands the series to the store, once it is open, as they settle.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from spyglass.store.records import StoreError

if TYPE_CHECKING:
    from spyglass.core.models import SeriesPoint
    from spyglass.store.db import Store


class StoreOpener:
    """The store for ``analyze``: :meth:`start` it, :meth:`check` it while reading (a store that
    cannot be opened stops the reading at once), :meth:`get` it to write.

    ``keep=False`` (``--no-store``) only imports the store's modules: the summary still uses an
    in-memory store.
    """

    def __init__(self, path: Path | None, *, keep: bool = True) -> None:
        self.path = path
        self.keep = keep
        self._started = False
        self._thread: threading.Thread | None = None  # the opening, once started
        self._store: Store | None = None
        self._error: BaseException | None = None
        self._owned = True  # close() closes the store
        self._closing: threading.Thread | None = None
        self._close_error: BaseException | None = None

    @classmethod
    def ready(cls, store: Store | None) -> StoreOpener:
        """An opener holding a store the caller already opened (or none: nothing is kept)."""
        opener = cls(store.path if store is not None else None, keep=store is not None)
        opener._store, opener._owned, opener._started = store, False, True
        return opener

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread = threading.Thread(target=self._open, name="store-open", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        try:
            from spyglass.store.db import Store

            if self.keep:
                # Used from the main thread once opened; never from two at a time.
                self._store = Store.open(self.path, any_thread=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by get()/check()
            self._error = exc

    def opened(self) -> bool:
        """Whether the opening is over (done or failed): :meth:`get` would not wait."""
        return self._started and (self._thread is None or not self._thread.is_alive())

    def check(self) -> None:
        """Raise the opening's error if it has already failed."""
        opening = self._thread is not None and self._thread.is_alive()
        if not opening and self._error is not None:
            raise self._error

    def get(self) -> Store | None:
        """The open store (None with ``keep=False``); waits for the opening; raises its error."""
        self.start()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._store

    def close_soon(self) -> None:
        """Start closing on a thread; :meth:`close` waits for it. Closing checkpoints the
        write-ahead log into the database file (tens of ms of writes, the GIL released): the
        caller prints its summary meanwhile."""
        if self._closing is None:
            self._closing = threading.Thread(target=self._close, name="store-close")
            self._closing.start()

    def close(self) -> None:
        """Close the store (if this opener opened it); raises what closing raised."""
        if self._closing is None:
            self._close()
        else:
            self._closing.join()
        if self._close_error is not None:
            error, self._close_error = self._close_error, None
            raise error

    def _close(self) -> None:
        try:
            if self._thread is not None:
                self._thread.join()
            if self._store is not None and self._owned:
                self._store.close()
            self._store = None
        except BaseException as exc:  # noqa: BLE001 - raised by close(), in the caller's thread
            self._close_error = exc


class SeriesToStore:
    """The ``series_sink`` of one file's analysis: the seconds that settle go to the store's
    stage as they come (store.staging), so a long capture's series never pile up in memory.
    Until the store is open (on its thread) they wait here; without a store they are dropped
    (the summary does not show them).

    A store that cannot be opened stops the analysis with its error, as :meth:`StoreOpener.get`
    raises it. One that fails while staging (a full disk) does not: the rest is dropped, and
    ``error`` says why the file cannot be stored.
    """

    def __init__(self, opener: StoreOpener) -> None:
        self._opener = opener
        self._waiting: list[SeriesPoint] = []
        self.error: StoreError | None = None

    def __call__(self, points: list[SeriesPoint]) -> None:
        if self.error is None:
            self._waiting.extend(points)
            if self._opener.opened():
                self.flush()

    def flush(self) -> None:
        """Stage what waits (waiting for the store to be open)."""
        waiting, self._waiting = self._waiting, []
        store = self._opener.get()
        if store is None or not waiting or self.error is not None:
            return
        try:
            store.stage_series(waiting)
        except StoreError as exc:
            self.error = exc
            self.drop()

    def drop(self) -> None:
        """Forget what was staged: the file is not stored after all."""
        self._waiting = []
        store = self._opener.get()
        if store is not None:
            try:
                store.drop_staged()
            except StoreError as exc:
                self.error = self.error or exc
