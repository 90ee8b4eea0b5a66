"""Reader and decoder throughput on a synthetic ~1M-packet Ethernet/IPv4 TCP+UDP capture.

Run: .venv/bin/python tests/benchmarks/decode_speed.py [--packets N] [--format pcap|pcapng]

Prints packets/s for read-only and read+decode (best of a few passes, file in the page cache)
and the process's peak RSS, which must not grow with the file size.
"""

from __future__ import annotations

import argparse
import random
import resource
import struct
import sys
import tempfile
import time
from pathlib import Path

from spyglass.core.capfile import open_capture
from spyglass.core.decode import decode


def _frame(rng: random.Random, size: int, udp: bool) -> bytes:
    """An Ethernet/IPv4 frame of ``size`` bytes with a TCP or UDP header and zero payload."""
    l4 = 8 if udp else 20 + 4 * rng.choice((0, 0, 3))  # some TCP with timestamp options
    payload = max(size - 14 - 20 - l4, 0)
    total = 20 + l4 + payload
    eth = bytes.fromhex("68dbf5c1c001") + bytes.fromhex("001122334455") + b"\x08\x00"
    src = bytes((192, 168, 1, rng.randrange(2, 250)))
    dst = bytes((52, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)))
    proto = 17 if udp else 6
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, proto, 0, src, dst)
    sport, dport = rng.randrange(1024, 65535), rng.choice((443, 80, 53, 123, 8009))
    if udp:
        l4h = struct.pack("!HHHH", sport, dport, 8 + payload, 0)
    else:
        doff = (l4 // 4) << 4
        l4h = struct.pack("!HHIIBBHHH", sport, dport, 1, 2, doff, 0x18, 502, 0, 0)
        l4h += b"\x01\x01\x08\x0a" + bytes(8) if l4 > 20 else b""
    return eth + ip + l4h + bytes(payload)


def write_capture(path: Path, packets: int, fmt: str, seed: int = 1) -> int:
    """Write a mixed capture; sizes follow a home LAN: many ACKs, some full frames."""
    rng = random.Random(seed)
    templates: list[bytes] = []
    for _ in range(512):
        r = rng.random()
        if r < 0.45:
            size, udp = 66, False
        elif r < 0.65:
            size, udp = rng.randrange(60, 220), True
        elif r < 0.88:
            size, udp = rng.randrange(120, 700), rng.random() < 0.3
        else:
            size, udp = 1514, rng.random() < 0.2
        templates.append(_frame(rng, size, udp))
    rec = struct.Struct("<IIII")
    epb = struct.Struct("<IIIIIII")
    t0 = 1_700_000_000 * 1_000_000
    with open(path, "wb") as fh:
        if fmt == "pcap":
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        else:
            fh.write(struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28))
            fh.write(struct.pack("<IIHHII", 1, 20, 1, 0, 262144, 20))
        done = 0
        while done < packets:
            parts: list[bytes] = []
            for k in range(done, min(done + 20_000, packets)):
                frame = templates[rng.randrange(512)]
                n = len(frame)
                us = t0 + k * 997
                if fmt == "pcap":
                    parts.append(rec.pack(us // 1_000_000, us % 1_000_000, n, n))
                    parts.append(frame)
                else:
                    pad = -n & 3
                    blen = 32 + n + pad
                    parts.append(epb.pack(6, blen, 0, us >> 32, us & 0xFFFFFFFF, n, n))
                    parts.append(frame + bytes(pad) + struct.pack("<I", blen))
                done = k + 1
            fh.write(b"".join(parts))
    return path.stat().st_size


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, with_decode: bool, passes: int = 3) -> tuple[int, float, float]:
    """Packets, and packets/s by wall clock and by CPU time (best pass of each).

    CPU time is the steadier figure on a machine shared with other work.
    """
    best_wall = best_cpu = float("inf")
    count = 0
    for _ in range(passes):
        reader = open_capture(path)
        wall, cpu = time.perf_counter(), time.process_time()
        count = 0
        for batch in reader:
            if with_decode:
                decode(batch)
            count += len(batch)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        assert not reader.report.problems, reader.report.problems
    return count, count / best_wall, count / best_cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    ap.add_argument("--passes", type=int, default=3, help="best of this many passes")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench.{args.format}"
        t = time.perf_counter()
        size = write_capture(path, args.packets, args.format)
        print(
            f"wrote {args.packets} packets, {size / 2**20:.0f} MiB ({args.format}), "
            f"{size / args.packets:.0f} bytes/packet on average "
            f"in {time.perf_counter() - t:.1f} s; peak RSS after writing {_rss_mib():.0f} MiB"
        )
        for label, with_decode in (("read only    ", False), ("read + decode", True)):
            n, wall, cpu = measure(path, with_decode, args.passes)
            print(
                f"{label}: {n} packets, {wall / 1e6:.2f} M packets/s wall clock, "
                f"{cpu / 1e6:.2f} M packets/s of CPU time"
            )
        print(f"peak RSS       : {_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
