"""`spyglass eval LABELS.csv`: precision and recall of the detector on labelled captures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spyglass.core.evaluate import FileResult, LabelRow, LabelsError, Score, evaluate, totals
from spyglass.core.models import Upload


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="score upload detection against a labels file",
        description="Run the pipeline on every file of a labels.csv (format of "
        "shared/data/captures/labels.csv) and print found vs expected, precision and recall "
        "per file, per device model, per source and overall.",
    )
    p.add_argument("labels", type=Path, help="labels.csv; files are relative to its folder")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--details", action="store_true", help="list each detection")


def _detect(path: Path) -> list[Upload]:
    from spyglass.adapters.oui import vendor_for_mac
    from spyglass.core.analyze import analyze_file

    return analyze_file(path, vendor_lookup=vendor_for_mac).uploads


def _model(row: LabelRow) -> str:
    # "Amazon Echo Dot (CICIoT2022 unit echodot1)" and "… 3rd gen (…)" group as one model.
    return row.device_model.split(" (")[0]


def run(args: argparse.Namespace) -> int:
    try:
        results = evaluate(args.labels, _detect)
    except LabelsError as e:
        print(f"spyglass eval: {e}", file=sys.stderr)
        return 2
    overall = Score()
    for r in results:
        overall.add(r.score)
    by_model = totals(results, _model)
    by_source = totals(results, lambda row: row.source_name)
    if args.json:
        print(json.dumps({
            "files": [_file_json(r) for r in results],
            "by_model": {k: v.as_dict() for k, v in by_model.items()},
            "by_source": {k: v.as_dict() for k, v in by_source.items()},
            "overall": overall.as_dict(),
        }, indent=1))
    else:
        _print_table(results, by_model, by_source, overall, args.details)
    return 1 if any(r.error for r in results) else 0


def _file_json(r: FileResult) -> dict[str, object]:
    return {
        "file": r.row.file,
        "device": r.row.device_mac,
        "model": r.row.device_model,
        **r.score.as_dict(),
        "detections": [
            {"start": u.start, "end": u.end, "bytes": u.bytes_up, "destination": u.destination,
             "confidence": u.confidence}
            for u in r.detections
        ],
        "error": r.error,
    }


def _print_table(
    results: list[FileResult], by_model: dict[str, Score], by_source: dict[str, Score],
    overall: Score, details: bool,
) -> None:
    w = max((len(r.row.file) for r in results), default=10)
    print(f"{'file':<{w}}  {'exp':>3} {'found':>5} {'tp':>3} {'fp':>3} {'fn':>3}")
    for r in results:
        s = r.score
        flag = "" if s.fp == 0 and s.fn == 0 else "  <--"
        counts = f"{s.expected:>3} {s.found:>5} {s.tp:>3} {s.fp:>3} {s.fn:>3}"
        print(f"{r.row.file:<{w}}  {counts}{flag}")
        if r.error:
            print(f"    error: {r.error}")
        if details:
            for u in r.detections:
                print(f"    {u.start:.1f}-{u.end:.1f} {u.bytes_up} B to {u.destination} "
                      f"conf {u.confidence}")
    for title, table in (("device model", by_model), ("source", by_source)):
        print(f"\nby {title}:")
        tw = max(len(k) for k in table)
        for k, s in table.items():
            print(f"  {k:<{tw}}  P {s.precision:.3f}  R {s.recall:.3f}  "
                  f"(tp {s.tp}, fp {s.fp}, fn {s.fn})")
    print(f"\noverall: precision {overall.precision:.3f}  recall {overall.recall:.3f}  "
          f"(tp {overall.tp}, fp {overall.fp}, fn {overall.fn}, {len(results)} files)")
