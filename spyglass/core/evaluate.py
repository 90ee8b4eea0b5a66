"""Score detected uploads against a labels file (the format of shared/data/captures/labels.csv).

Rules, as that folder's README states them: only detections for the labelled device count; where
``event_windows`` are given, a detection matches a window when it overlaps the window widened by
``tolerance_s`` on both sides, several detections in one window count once, and a detection that
matches no window is a false positive; where only ``expected_uploads`` is given, counts are
compared.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spyglass.core.models import Upload

LABEL_COLUMNS = (
    "file", "device_mac", "device_model", "assistant", "expected_uploads", "event_windows",
    "tolerance_s", "source", "license",
)


class LabelsError(ValueError):
    """The labels file is unreadable or a row is malformed (the message names the line)."""


@dataclass(frozen=True, slots=True)
class LabelRow:
    file: str
    device_mac: str
    device_model: str
    assistant: str
    expected: int
    windows: tuple[tuple[float, float], ...]
    tolerance_s: float
    source: str

    @property
    def source_name(self) -> str:
        """The study a row comes from: ``owner/repo`` of its source, or the source as given."""
        return self.source.split("@", 1)[0]


@dataclass(slots=True)
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    found: int = 0
    expected: int = 0

    def add(self, other: Score) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.found += other.found
        self.expected += other.expected

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "found": self.found, "expected": self.expected, "tp": self.tp, "fp": self.fp,
            "fn": self.fn, "precision": round(self.precision, 4), "recall": round(self.recall, 4),
        }


@dataclass(slots=True)
class FileResult:
    row: LabelRow
    score: Score
    detections: list[Upload] = field(default_factory=list)
    error: str | None = None


def load_labels(path: str | os.PathLike[str]) -> list[LabelRow]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in LABEL_COLUMNS[:7] if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelsError(f"{path}: missing columns {', '.join(missing)}")
            return [_row(path, reader.line_num, r) for r in reader]
    except OSError as e:
        raise LabelsError(f"{path}: {e.strerror or e}") from None


def _row(path: str | os.PathLike[str], line: int, r: dict[str, str]) -> LabelRow:
    try:
        windows = []
        for w in (r.get("event_windows") or "").split(";"):
            if w.strip():
                start, end = w.split("-")
                windows.append((float(start), float(end)))
        return LabelRow(
            file=r["file"],
            device_mac=r["device_mac"].lower(),
            device_model=r.get("device_model", ""),
            assistant=r.get("assistant", ""),
            expected=int(r["expected_uploads"]),
            windows=tuple(windows),
            tolerance_s=float(r.get("tolerance_s") or 0),
            source=r.get("source", ""),
        )
    except (ValueError, KeyError) as e:
        raise LabelsError(f"{path}: line {line}: bad row ({e})") from None


def score(row: LabelRow, uploads: Iterable[Upload]) -> Score:
    mine = [u for u in uploads if u.device_mac.lower() == row.device_mac]
    s = Score(found=len(mine), expected=row.expected)
    if row.windows:
        tol = row.tolerance_s
        hit = [False] * len(row.windows)
        for u in mine:
            matched = False
            for k, (a, b) in enumerate(row.windows):
                if u.start <= b + tol and u.end >= a - tol:
                    hit[k] = matched = True
            if not matched:
                s.fp += 1
        s.tp = sum(hit)
        s.fn = len(hit) - s.tp
    else:
        s.tp = min(len(mine), row.expected)
        s.fp = max(0, len(mine) - row.expected)
        s.fn = max(0, row.expected - len(mine))
    return s


Detect = Callable[[Path], list[Upload]]


def evaluate(labels_path: str | os.PathLike[str], detect: Detect) -> list[FileResult]:
    """Run ``detect`` on every labelled file (paths relative to the labels file's folder)."""
    base = Path(labels_path).parent
    results = []
    for row in load_labels(labels_path):
        try:
            uploads = detect(base / row.file)
        except Exception as e:  # one unreadable file is a miss, not the end of the evaluation
            results.append(FileResult(row, score(row, []), error=f"{type(e).__name__}: {e}"))
            continue
        mine = [u for u in uploads if u.device_mac.lower() == row.device_mac]
        results.append(FileResult(row, score(row, mine), mine))
    return results


def totals(results: Iterable[FileResult], by: Callable[[LabelRow], str]) -> dict[str, Score]:
    out: dict[str, Score] = {}
    for r in results:
        out.setdefault(by(r.row), Score()).add(r.score)
    return dict(sorted(out.items()))
