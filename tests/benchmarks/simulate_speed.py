"""Simulator and pcap-writer speed (a plain script, not collected by pytest).

    .venv/bin/python tests/benchmarks/simulate_speed.py [--packets 1000000] [--out DIR]

Prints packets per second for: PcapWriter.write and .write_many of 1M small frames, and
simulate_household(target_packets=N) end to end (to DIR, default a temporary directory;
pass --out /dev/shm to take the disk out of the figure).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from spyglass.core.pcapwrite import PcapWriter
from spyglass.sim.household import simulate_household


def _writer(path: Path, n: int) -> None:
    frame = bytes(100)
    t = time.perf_counter()
    with PcapWriter(path) as w:
        for i in range(n):
            w.write(1764000000.0 + i * 0.001, frame)
    dt = time.perf_counter() - t
    print(f"PcapWriter.write       {n:>9} frames  {dt:6.2f} s  {n / dt:>9.0f} frames/s")
    frames = [(1764000000.0 + i * 0.001, frame) for i in range(n)]
    t = time.perf_counter()
    with PcapWriter(path) as w:
        w.write_many(frames)
    dt = time.perf_counter() - t
    print(f"PcapWriter.write_many  {n:>9} frames  {dt:6.2f} s  {n / dt:>9.0f} frames/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        out = Path(tmp) / "bench.pcap"
        _writer(out, 1_000_000)
        t = time.perf_counter()
        s = simulate_household(out, seed=args.seed, target_packets=args.packets)
        dt = time.perf_counter() - t
        size = out.stat().st_size / 1e6
        rate = s.packets / dt
        off = s.packets / args.packets - 1
        print(f"simulate_household     {s.packets:>9} packets {dt:6.2f} s  {rate:>9.0f} packets/s")
        print(
            f"  {size:.0f} MB, {len(s.devices)} devices, {s.duration_s:.0f} s simulated, "
            f"{s.uploads} uploads; target {args.packets}, off by {off:+.2%}"
        )


if __name__ == "__main__":
    main()
