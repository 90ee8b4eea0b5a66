"""Store write speed, alone and as part of a whole file ingest. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/store_ingest.py [--packets 1000000] [--keep DIR]
    PYTHONPATH=. .venv/bin/python tests/benchmarks/store_ingest.py --phases FILE [FILE ...]
        [--runs 9] [--cache DIR] [--only PHASE]

1. 100,000 series rows (10 devices x 7 remotes) written by record_analysis into a fresh file,
   then again (a re-import replacing them).
2. A simulated household of ~N packets: analyse (reader + pipeline), then store; packets/s of
   the whole ingest, store included.

With ``--phases``: each FILE is analysed once (as `spyglass analyze` does), then the store's
part of `spyglass analyze FILE --db NEW --json` is timed phase by phase, ``--runs`` times with a
fresh database each: importing the store (sqlite-utils and what it pulls in; in a child process,
after the modules the CLI has imported by then), opening (creating the file, migrations),
record_analysis with the time of each statement in it, a re-import, closing (the WAL
checkpoint), the in-memory summary store and the JSON read from it. Figures are medians of the
CPU time of this process (time.process_time, which counts the system calls, e.g. WAL writes, but
not other processes); a shared machine still moves them by tens of percent. For figures that do
not move, count instructions: ``--only PHASE --runs 1`` runs the phases up to PHASE once (PHASE
one of none, import, open, record, close, summary, json) and prints nothing, so (after one run
with ``--cache DIR`` to keep the analysis: analysing in two processes is not repeatable)

    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python tests/benchmarks/store_ingest.py --phases FILE --cache DIR --runs 1 \\
        --only record

minus the same with the previous phase (``--only open``) gives the instructions of
record_analysis.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from spyglass.core.models import SeriesPoint  # noqa: E402
from spyglass.store.records import CaptureSource  # noqa: E402

if TYPE_CHECKING:
    from spyglass.core.analyze import AnalysisResult
    from spyglass.store.db import Store

PHASES = ("none", "import", "open", "record", "close", "summary", "json")
# What the CLI has imported when its store thread imports the store (spyglass.cli.storeopen).
IMPORT_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import spyglass.cli.analyze, spyglass.core.analyze, spyglass.adapters.oui
t = time.process_time()
import spyglass.store.db
print(time.process_time() - t)
"""


def best_of(n: int, fn: object) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def series_rows(tmp: Path) -> None:
    from spyglass.store.db import Store
    from tests.store.helpers import result

    r = result()
    r.series = [
        SeriesPoint(f"aa:bb:cc:00:00:{i % 10:02x}", f"10.0.0.{i % 7}", 1_700_000_000 + i // 70,
                    1200, 300, 2, 1)
        for i in range(100_000)
    ]
    src = CaptureSource("/bench.pcap", "b" * 64, 1)
    runs = []
    for k in range(3):
        with Store.open(tmp / f"series{k}.db") as store:
            t = time.perf_counter()
            store.record_analysis(src, r)
            first = time.perf_counter() - t
            t = time.perf_counter()
            store.record_analysis(src, r)
            runs.append((first, time.perf_counter() - t))
    first, again = min(x for x, _ in runs), min(y for _, y in runs)
    print(f"100,000 series rows: first import {first:.3f} s ({100_000 / first:,.0f} rows/s), "
          f"re-import {again:.3f} s (best of 3)")


def whole_ingest(tmp: Path, packets: int) -> None:
    from spyglass.cli.analyze import analyze_paths
    from spyglass.core.analyze import analyze_file
    from spyglass.sim.household import simulate_household
    from spyglass.store.db import Store

    pcap = tmp / "household.pcap"
    if not pcap.exists():
        simulate_household(pcap, duration_s=3600, seed=1, target_packets=packets)
    mb = pcap.stat().st_size / 1e6
    t = time.perf_counter()
    res = analyze_file(pcap)
    t_analyze = time.perf_counter() - t
    t = time.perf_counter()
    src = CaptureSource.from_file(pcap)
    t_print = time.perf_counter() - t
    with Store.open(tmp / "ingest.db") as store:
        t = time.perf_counter()
        store.record_analysis(src, res)
        t_store = time.perf_counter() - t
    n = res.stats.packets
    print(
        f"{n:,} packets ({mb:.0f} MB), one step at a time: analyse {t_analyze:.2f} s, "
        f"fingerprint {t_print:.3f} s, store {t_store:.3f} s ({len(res.series):,} series rows, "
        f"{len(res.flows):,} flows, {len(res.uploads)} uploads)"
    )
    # What `spyglass analyze` does: analyse, fingerprint, store.
    with Store.open(tmp / "cli.db") as store:
        t = time.perf_counter()
        report = analyze_paths([pcap], store=store)
        wall = time.perf_counter() - t
    assert report.outcomes[0].capture_id is not None
    print(f"analyze_paths (as the CLI): {wall:.2f} s wall, {n / wall:,.0f} packets/s, with store")


# -- phases --------------------------------------------------------------------------------------


class _TimedConn:
    """The store's connection, timing each execute/executemany by its statement's start.

    The bulk writes build their rows as they are bound, so a statement's time includes them.
    """

    def __init__(self, conn: Any, spent: dict[str, float]) -> None:
        self._conn, self._spent = conn, spent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def _timed(self, fn: Callable[..., Any], sql: str, *args: Any) -> Any:
        t = time.process_time()
        out = fn(sql, *args)
        rows = sql.count("),(") + 1 if "VALUES" in sql else 0
        key = " ".join(sql.split()[:4]) + (f" [{rows} rows each]" if rows > 1 else "")
        self._spent[key] += time.process_time() - t
        return out

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(self._conn.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed(self._conn.executemany, sql, *args)


@contextmanager
def _timing_statements(store: Store, spent: dict[str, float]) -> Iterator[None]:
    real = store.db.conn
    store.db.conn = _TimedConn(real, spent)  # type: ignore[assignment]
    try:
        yield
    finally:
        store.db.conn = real


def _import_cpu(runs: int) -> list[float]:
    root = str(Path(__file__).resolve().parents[2])
    return [
        float(subprocess.run([sys.executable, "-c", IMPORT_CHILD, root], check=True,
                             capture_output=True, text=True).stdout)
        for _ in range(runs)
    ]


def _analyse(path: Path, cache: Path | None) -> AnalysisResult:
    """The analysis `spyglass analyze` stores; with ``cache``, pickled there and reused (reading
    a pickle costs the same instructions every time, analysing in two processes does not)."""
    from spyglass.adapters.oui import vendor_for_mac
    from spyglass.core.analyze import analyze_file

    kept = cache / f"{path.name}.result.pickle" if cache else None
    if kept is not None and kept.exists() and kept.stat().st_mtime > path.stat().st_mtime:
        with kept.open("rb") as fh:
            res: AnalysisResult = pickle.load(fh)
        return res
    res = analyze_file(path, vendor_lookup=vendor_for_mac, fingerprint=True)
    res.pipeline = None  # its state is not stored
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        with kept.open("wb") as fh:
            pickle.dump(res, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return res


def phases(files: list[Path], runs: int, only: str | None, cache: Path | None) -> None:
    from spyglass.cli.analyze import AnalysisReport, FileOutcome

    upto = PHASES.index(only) if only else len(PHASES) - 1
    for path in files:
        res = _analyse(path, cache)
        assert isinstance(res.fingerprint, tuple)
        src = CaptureSource(str(path.resolve()), *res.fingerprint)
        # As spyglass.cli.main: no collector passes over what is alive now, fewer passes after.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 20, 100)
        if upto < PHASES.index("import"):
            continue
        from spyglass.store.db import Store

        cpu: dict[str, list[float]] = defaultdict(list)
        statements: dict[str, float] = defaultdict(float)
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(runs):
                if upto < PHASES.index("open"):
                    break
                db = Path(tmp) / f"run{run}.db"
                t = time.process_time()
                store = Store.open(db)
                cpu["open (new file, migrations)"].append(time.process_time() - t)
                if upto >= PHASES.index("record"):
                    t = time.process_time()
                    with _timing_statements(store, statements) if only is None else _nothing():
                        cid = store.record_analysis(src, res)
                    cpu["record_analysis"].append(time.process_time() - t)
                if only is None:
                    t = time.process_time()
                    store.record_analysis(src, res)
                    cpu["re-import (record_analysis again)"].append(time.process_time() - t)
                if upto < PHASES.index("close"):
                    continue
                t = time.process_time()
                store.close()
                cpu["close (WAL checkpoint)"].append(time.process_time() - t)
                report = AnalysisReport([FileOutcome(path, result=res, capture_id=cid)], db)
                if upto < PHASES.index("summary"):
                    continue
                t = time.process_time()
                mem = report.summary_store()
                cpu["summary store (in memory)"].append(time.process_time() - t)
                if upto >= PHASES.index("json"):
                    t = time.process_time()
                    report.as_json(mem)
                    cpu["JSON from the summary store"].append(time.process_time() - t)
                mem.close()
        if only is not None:
            continue
        cpu = {"import spyglass.store.db (child process)": _import_cpu(runs), **cpu}
        print(f"{path.name}: {len(res.endpoint_names):,} names, {len(res.series):,} series rows, "
              f"{len(res.flows):,} flows, {len(res.devices)} devices, {len(res.uploads)} uploads; "
              f"CPU ms, median of {runs}:")
        for what, spent in cpu.items():
            print(f"  {statistics.median(spent) * 1e3:7.1f}  {what}")
        print("  of which, in record_analysis (per run):")
        for what, total in sorted(statements.items(), key=lambda kv: -kv[1]):
            if total / runs >= 0.0001:
                print(f"  {total / runs * 1e3:9.1f}  {what}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="directory to keep (and reuse) the pcap in")
    ap.add_argument("--phases", type=Path, nargs="+", metavar="FILE",
                    help="time the store phases of `spyglass analyze` on these captures")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--only", choices=PHASES, help="with --phases: run up to this phase, quietly")
    ap.add_argument("--cache", type=Path, help="with --phases: keep the analyses here (pickles)")
    args = ap.parse_args()
    if args.phases:
        phases(args.phases, args.runs, args.only, args.cache)
        return
    with tempfile.TemporaryDirectory() as t:
        tmp = args.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        series_rows(Path(t))
        whole_ingest(tmp, args.packets)


if __name__ == "__main__":
    main()
