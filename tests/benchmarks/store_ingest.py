"""Store write speed, alone and as part of a whole file ingest. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/store_ingest.py [--packets 1000000] [--keep DIR]

1. 100,000 series rows (10 devices x 7 remotes) written by record_analysis into a fresh file,
   then again (a re-import replacing them).
2. A simulated household of ~N packets: analyse (reader + pipeline), then store; packets/s of
   the whole ingest, store included.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from spyglass.core.models import SeriesPoint
from spyglass.store.db import CaptureSource, Store
from tests.store.helpers import result


def best_of(n: int, fn: object) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def series_rows(tmp: Path) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="directory to keep (and reuse) the pcap in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = args.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        series_rows(Path(t))
        whole_ingest(tmp, args.packets)


if __name__ == "__main__":
    main()
