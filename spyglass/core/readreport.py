"""What a capture reader found: counts, faults and where the file ended (kept apart from the
readers so every reader of a file, in this process or another, reports the same way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["Problems", "ReadProblem", "ReadReport"]

_MAX_PROBLEMS: Final = 50  # distinct problems listed; repeats of one kind are counted instead


@dataclass
class ReadProblem:
    """A fault found while reading: recoverable (skipped) or final (reading stopped there)."""

    offset: int
    message: str


@dataclass
class ReadReport:
    path: str
    format: str  # "pcap" or "pcapng"
    packets: int = 0
    bytes_read: int = 0
    file_size: int = 0
    problems: list[ReadProblem] = field(default_factory=list)
    cut_short: bool = False  # the file ended in the middle of a record (capture killed)
    stopped_early: bool = False  # a fault made the reader stop before the end of the file


class Problems:
    """Collects problems into the report, one entry per kind with a repeat count."""

    def __init__(self, report: ReadReport) -> None:
        self._report = report
        self._seen: dict[str, tuple[ReadProblem, str, int]] = {}

    def add(self, kind: str, offset: int, message: str) -> None:
        seen = self._seen.get(kind)
        if seen is not None:
            problem, first, count = seen
            count += 1
            self._seen[kind] = (problem, first, count)
            problem.message = f"{first} ({count} times, first at byte {problem.offset})"
            return
        if len(self._seen) >= _MAX_PROBLEMS:
            if "more" not in self._seen:
                extra = ReadProblem(offset, f"more kinds of problems from byte {offset} not listed")
                self._seen["more"] = (extra, extra.message, 1)
                self._report.problems.append(extra)
            return
        problem = ReadProblem(offset, message)
        self._seen[kind] = (problem, message, 1)
        self._report.problems.append(problem)

    def replay(self, events: list[tuple[str, int, str]]) -> None:
        """Add problems another reader logged (:class:`ProblemLog`), in their order."""
        for kind, offset, message in events:
            self.add(kind, offset, message)


class ProblemLog(Problems):
    """Problems kept as they come, to be replayed in file order into a reader's report (by a
    reader that puts together pieces of a file walked apart, perhaps in another process)."""

    def __init__(self) -> None:  # no report: nothing is merged here
        self.events: list[tuple[str, int, str]] = []

    def add(self, kind: str, offset: int, message: str) -> None:
        self.events.append((kind, offset, message))

    def take(self) -> list[tuple[str, int, str]]:
        """The problems logged since the last call."""
        events, self.events = self.events, []
        return events
