"""CPU cost of the stateless per-batch stage (core/prepare.py) and its parts, per packet.

Run: .venv/bin/python tests/benchmarks/prepare_speed.py [FILE] [--mb 50] [--reps 15]

The first ``--mb`` MB of the capture (default: the simulated household capture the speed
target is measured on) are read into batches once; then decode, is_local (both addresses)
and the whole prepare (decode included) each run over all of them ``--reps`` times. Printed:
the median CPU time (user + system, time.process_time) per packet, its system share and the
page faults per batch. On a shared machine the medians still move by ~20 %; for steadier
figures count instructions instead, e.g. ``valgrind --tool=callgrind
--callgrind-out-file=/dev/null`` of ``--only prepare --reps N`` minus the same with
``--reps 0`` (which reads the batches and does nothing else).

The system share is mostly page faults: when the C library hands the freed memory of one
batch back to the kernel, the next batch's arrays fault it in again. MALLOC_TOP_PAD_=16777216
in the environment (glibc) keeps it and shows the figures without that cost.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from spyglass.core.capfile import open_capture
from spyglass.core.decode import decode
from spyglass.core.frames import FrameBatch
from spyglass.core.lan import LanClassifier
from spyglass.core.prepare import PrepSettings, prepare

DEFAULT = Path("/tmp/big/household.pcap")
CHUNK = 16 << 20  # as analyze.CHUNK_BYTES: ~17k packets per batch of the household capture


def load(path: Path, mb: int) -> list[FrameBatch]:
    batches: list[FrameBatch] = []
    total = 0
    for batch in open_capture(path, chunk_bytes=CHUNK):
        if len(batch):
            batches.append(batch)
            total += len(batch.buf)
        if total >= mb << 20:
            break
    return batches


def stages(batches: list[FrameBatch]) -> dict[str, Callable[[], object]]:
    lan = LanClassifier()
    settings = PrepSettings(None, 100, 10)  # the detector's defaults: 100-byte media, 100 ms
    decoded = [decode(b) for b in batches]

    def run_decode() -> None:
        for b in batches:
            decode(b)

    def run_is_local() -> None:
        for d in decoded:
            lan.is_local(d.src_hi, d.src_lo)
            lan.is_local(d.dst_hi, d.dst_lo)

    def run_prepare() -> None:
        for b in batches:
            prepare(b, lan, settings)

    return {"decode": run_decode, "is_local": run_is_local, "prepare": run_prepare}


def measure(fn: Callable[[], object], reps: int) -> tuple[float, float, float]:
    """Median CPU seconds, median system seconds, and page faults, per run."""
    fn()  # warm up: caches, allocator
    cpu, sys_, faults = [], [], []
    for _ in range(reps):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.process_time()
        fn()
        cpu.append(time.process_time() - t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        sys_.append(r1.ru_stime - r0.ru_stime)
        faults.append(r1.ru_minflt - r0.ru_minflt)
    return statistics.median(cpu), statistics.median(sys_), statistics.median(faults)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--mb", type=int, default=50, help="read this many MB of the file")
    ap.add_argument("--reps", type=int, default=15, help="median of this many runs")
    ap.add_argument("--only", choices=("decode", "is_local", "prepare"))
    args = ap.parse_args(argv)
    batches = load(args.file, args.mb)
    packets = sum(len(b) for b in batches)
    todo = stages(batches)
    if args.only:
        for _ in range(args.reps):  # for an instruction counter: no timing, no output
            todo[args.only]()
        return 0
    print(f"{args.file}: {packets} packets in {len(batches)} batches; median of {args.reps}")
    for name, fn in todo.items():
        cpu, sys_, faults = measure(fn, args.reps)
        print(
            f"  {name:9s} {cpu / packets * 1e9:7.0f} ns/packet CPU"
            f" ({sys_ / max(cpu, 1e-9):4.0%} system, {faults / len(batches):6.0f} page faults"
            f" per batch)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
