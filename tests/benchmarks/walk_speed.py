"""CPU of the classic pcap record walk and batch alone (``_Pcap.walk`` + ``_Pcap.batch``).

Run: .venv/bin/python tests/benchmarks/walk_speed.py FILE.pcap [--passes N] [--chunk BYTES]

The file is read into memory first, then walked in ``--chunk`` pieces the way the one-process
reader does (a record cut by a piece's end starts the next piece), ``--passes`` times with one
``_Pcap``, so the numbers are the steady state of a long file. Prints the median and best
process time of a pass. Wall-clock timings are noisy on a shared machine; for instruction counts
run it under callgrind with --passes 1 and --passes 3 and halve the difference:
  valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
      tests/benchmarks/walk_speed.py /tmp/big/h20m.pcap --passes 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from spyglass.core.pcapformat import _Pcap
from spyglass.core.readreport import Problems, ReadReport
from spyglass.core.recordwalk import FAULT, FLUSH


def walk_file(fmt: _Pcap, data: bytes, chunk: int) -> int:
    """Walk and batch all of ``data`` (a pcap file) in pieces of ``chunk`` bytes; the packets."""
    base, want, packets = 24, chunk, 0
    while True:
        buf = data[base : base + want]
        at_eof = len(buf) < want
        fmt.file_base = base
        start = 0
        while True:
            walk = fmt.walk(buf, start)
            batch = fmt.batch(buf, walk)
            if batch is not None:
                packets += len(batch)
            if walk.reason != FLUSH:
                break
            start = walk.stop
        if walk.reason == FAULT or at_eof:
            return packets
        base += walk.stop
        want = max(walk.need, chunk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=16 << 20)
    args = ap.parse_args()
    data = args.path.read_bytes()
    fmt = _Pcap(data[:24], Problems(ReadReport(args.path, "pcap", file_size=len(data))))
    times: list[float] = []
    packets = 0
    for _ in range(args.passes):
        t0 = time.process_time()
        packets = walk_file(fmt, data, args.chunk)
        times.append(time.process_time() - t0)
    if times:
        times.sort()
        median, best = times[len(times) // 2], times[0]
        print(f"{packets} packets: median {median * 1e3:.1f} ms, best {best * 1e3:.1f} ms a pass "
              f"({packets / median / 1e6:.2f} M packets/s)")


if __name__ == "__main__":
    main()
