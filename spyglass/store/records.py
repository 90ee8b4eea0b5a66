"""What the store takes in and gives back: its error, capture sources, stored rows, and the
structural types of an analysis (so the store does not depend on the pipeline module).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from spyglass.core.fingerprint import capture_fingerprint
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload

DEFAULT_RETENTION_DAYS = 365
VERDICTS = ("me", "nobody")

KEPT_CAPTURE = "the capture's rows were not written, earlier data is intact"
KEPT_BATCH = "this batch was not written, earlier data is intact"
KEPT_NOTHING_CHANGED = "nothing was changed"


class StoreError(Exception):
    """A storage failure, with a one-line message saying what happened and what was kept."""


# What the store reads from an analysis: structural types, so the store does not depend on the
# pipeline module (it only needs these attributes).
class ProblemLike(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def message(self) -> str: ...


class ReadReportLike(Protocol):
    @property
    def problems(self) -> Sequence[ProblemLike]: ...


class StatsLike(Protocol):
    @property
    def packets(self) -> int: ...
    @property
    def problems(self) -> Sequence[str]: ...


class AnalysisLike(Protocol):
    @property
    def devices(self) -> Sequence[Device]: ...
    @property
    def endpoint_names(self) -> Sequence[EndpointName]: ...
    @property
    def flows(self) -> Sequence[Flow]: ...
    @property
    def series(self) -> Sequence[SeriesPoint]: ...
    @property
    def uploads(self) -> Sequence[Upload]: ...
    @property
    def stats(self) -> StatsLike: ...
    @property
    def read_report(self) -> ReadReportLike | None: ...


@dataclass(slots=True, frozen=True)
class CaptureSource:
    """Where an analysis came from: a file (identified by its content's fingerprint, see
    :mod:`spyglass.core.fingerprint`) or a live interface."""

    path: str
    fingerprint: str | None = None
    size: int | None = None
    kind: str = "file"  # "file" or "live"

    @classmethod
    def from_file(cls, path: str | Path) -> CaptureSource:
        identity, size = capture_fingerprint(path)
        return cls(path=str(Path(path).resolve()), fingerprint=identity, size=size)

    @classmethod
    def live(cls, name: str) -> CaptureSource:
        return cls(path=name, kind="live")


@dataclass(slots=True)
class StoredUpload(Upload):
    """An upload as stored: with its row id (for verdicts), the verdict and its capture."""

    id: int = 0
    verdict: str | None = None
    capture_id: int | None = None


@dataclass(slots=True)
class StoredCapture:
    id: int
    kind: str
    path: str
    fingerprint: str | None
    size: int | None
    packets: int
    first_ts: float | None
    last_ts: float | None
    imported_at: float
    problems: list[str]


def error_kind(exc: sqlite3.Error) -> str:
    """What went wrong, in a few words for a StoreError message."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary == sqlite3.SQLITE_FULL or "database or disk is full" in text:
        return "disk full"
    if primary == sqlite3.SQLITE_READONLY or "readonly" in text:
        return "read-only file"
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in text:
        return "database locked by another process"
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return f"not a Spyglass database or damaged ({text})"
    if primary == sqlite3.SQLITE_CANTOPEN:
        return "cannot open the file"
    if primary == sqlite3.SQLITE_IOERR:
        return f"I/O error ({text})"
    return text


def json_list(text: str | None) -> list[str]:
    """A JSON list column as strings; empty for NULL or anything not a list."""
    if not text:
        return []
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []
