"""Issue 3's bar: precision and recall >= 0.95 on the real labelled captures."""

from __future__ import annotations

from pathlib import Path

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core.analyze import analyze_file
from spyglass.core.evaluate import Score, evaluate


def test_precision_and_recall_on_real_captures(captures: Path) -> None:
    results = evaluate(
        captures / "labels.csv", lambda p: analyze_file(p, vendor_lookup=vendor_for_mac).uploads
    )
    assert len(results) >= 88
    assert not [r.error for r in results if r.error]
    total = Score()
    for r in results:
        total.add(r.score)
    missed = [r.row.file for r in results if r.score.fn]
    extra = [r.row.file for r in results if r.score.fp]
    assert total.precision >= 0.95, f"false positives in {extra}"
    assert total.recall >= 0.95, f"misses in {missed}"
