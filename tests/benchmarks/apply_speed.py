"""Apply-stage benchmark: Pipeline.apply alone, over batches prepared beforehand.

    .venv/bin/python tests/benchmarks/apply_speed.py FILE [--runs 7] [--max-batches N]

Reads and prepares every batch of FILE once (as the reader process would), then feeds the same
prepared batches to fresh Pipelines ``--runs`` times and prints the median CPU time of this
process (time.process_time: other work on the machine does not count, but a shared machine
still adds noise) for the whole apply stage and for its slow path alone. For figures that do
not move with the load, run it under ``valgrind --tool=callgrind`` with ``--runs 1`` and
subtract a run with ``--runs 0``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spyglass.core.analyze import CHUNK_BYTES  # noqa: E402
from spyglass.core.capfile import open_capture  # noqa: E402
from spyglass.core.pipeline import Pipeline  # noqa: E402
from spyglass.core.prepare import Prepared, Preparer  # noqa: E402


def apply_all(items: list[Prepared]) -> float:
    pipe = Pipeline()
    t0 = time.process_time()
    for p in items:
        pipe.apply(p)
        pipe.drain_series()
    pipe.flush()
    pipe.drain_series(final=True)
    return time.process_time() - t0


def slow_only(items: list[Prepared]) -> float:
    pipe = Pipeline()
    t0 = time.process_time()
    for p in items:
        pipe.slow.handle(p.slow_d, p.slow_batch, p.slow_at, p.dns)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--max-batches", type=int, default=0)
    args = ap.parse_args()
    prep = Preparer(Pipeline().prep_settings)
    items = [prep(b) for b in open_capture(args.file, chunk_bytes=CHUNK_BYTES) if len(b)]
    if args.max_batches:
        items = items[: args.max_batches]
    packets = sum(p.packets for p in items)
    slow_rows = sum(len(p.slow_d) + len(p.dns.macs) for p in items)
    gc.freeze()  # as the CLI does: what exists now is never collected
    gc.set_threshold(10_000, 20, 100)
    if args.runs <= 0:
        return
    whole = statistics.median(apply_all(items) for _ in range(args.runs))
    slow = statistics.median(slow_only(items) for _ in range(args.runs))
    print(f"{args.file}: {len(items)} batches, {packets} packets, {slow_rows} slow-path rows"
          " (DNS: groups of answers)")
    print(f"apply     {whole * 1e3:8.1f} ms CPU (median of {args.runs})"
          f"  {whole / packets * 1e9:6.0f} ns/packet")
    print(f"slow path {slow * 1e3:8.1f} ms CPU  {slow / max(slow_rows, 1) * 1e6:6.1f} us/row")


if __name__ == "__main__":
    main()
