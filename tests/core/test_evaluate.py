"""Scoring rules of the labels format."""

from __future__ import annotations

from pathlib import Path

import pytest

from spyglass.core.evaluate import LabelRow, LabelsError, load_labels, score
from spyglass.core.models import Upload

MAC = "68:db:f5:00:00:01"


def up(start: float, end: float, mac: str = MAC) -> Upload:
    return Upload(mac, start, end, 1000, 500, "x", "1.2.3.4", "tcp", 443, "alexa", 0.9)


def row(expected: int, windows: tuple[tuple[float, float], ...] = ()) -> LabelRow:
    return LabelRow("f.pcap", MAC, "Echo", "alexa", expected, windows, 10.0, "a/b@c:d")


def test_windows_with_tolerance_and_one_count_per_window() -> None:
    r = row(2, ((100.0, 110.0), (200.0, 205.0)))
    s = score(r, [up(112.0, 115.0), up(119.0, 121.0), up(150.0, 152.0), up(100, 101, "aa:aa")])
    # two detections in window 1 (one via tolerance) count once; 150 matches nothing.
    assert (s.tp, s.fp, s.fn, s.found) == (1, 1, 1, 3)
    assert s.precision == 0.5 and s.recall == 0.5


def test_counts_only() -> None:
    assert (score(row(5), [up(i, i + 1) for i in range(7)]).fp) == 2
    s = score(row(5), [up(0, 1)])
    assert (s.tp, s.fn) == (1, 4)
    assert score(row(0), []).precision == 1.0


def test_bad_labels_are_refused_with_the_line(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("file,device_mac,device_model,assistant,expected_uploads,event_windows,tolerance_s\n"
                 "a.pcap,aa,Echo,alexa,two,,10\n")
    with pytest.raises(LabelsError, match="line 2"):
        load_labels(p)
    p.write_text("file,device_mac\n")
    with pytest.raises(LabelsError, match="missing columns"):
        load_labels(p)
