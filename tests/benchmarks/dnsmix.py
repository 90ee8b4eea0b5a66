"""A DNS-heavy variant of a capture, for the issue's "a capture with 5 % DNS" speed target.

    .venv/bin/python tests/benchmarks/dnsmix.py IN.pcap OUT.pcap [--share 0.05] [--seed 1]

Copies IN (a classic little-endian µs pcap, as the simulator writes) and interleaves lookups so
that ``share`` of OUT's packets are DNS: query and answer pairs from the devices that already
use DNS in IN to the router that answers them, each pair at the time of the record it follows.
The names come from a pool of a few hundred (trackers, CDNs, vendor clouds) with CNAME chains
of 0 to 2 and 1 to 4 addresses; transaction ids, source ports and TTLs vary as real resolvers'
do, so no two answers are byte-identical.
"""

from __future__ import annotations

import argparse
import mmap
import random
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spyglass.sim import craft  # noqa: E402
from spyglass.sim.flows import UdpFlow  # noqa: E402

_REC = struct.Struct("<IIII")
_WORDS = ("api", "cdn", "edge", "img", "static", "events", "metrics", "log", "push", "auth",
          "config", "update", "time", "media", "video", "ads", "track", "sync", "gw", "ws")
_DOMAINS = ("example-cloud.com", "amazonaws.com", "googleapis.com", "akamaiedge.net",
            "cloudfront.net", "fastly.net", "apple.com", "icloud.com", "amazon.com",
            "sonos.com", "spotify.com", "netflix.com", "doubleclick.net", "facebook.com",
            "microsoft.com", "azureedge.net", "samsungcloud.com", "lgtvsdp.com")  # fmt: skip


@dataclass(frozen=True)
class Host:
    mac: bytes
    ip: bytes


def dns_users(data: mmap.mmap) -> tuple[list[Host], Host]:
    """The devices that send DNS queries in ``data`` (a pcap), and the resolver they ask."""
    users: dict[bytes, Host] = {}
    resolver: Host | None = None
    off = 24
    while off + 16 <= len(data):
        _s, _us, caplen, _wire = _REC.unpack_from(data, off)
        frame = data[off + 16 : off + 16 + caplen]
        off += 16 + caplen
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        dport = struct.unpack_from("!H", frame, 14 + ihl + 2)[0]
        if dport == 53:
            users.setdefault(frame[6:12], Host(frame[6:12], frame[26:30]))
            resolver = resolver or Host(frame[0:6], frame[30:34])
    if resolver is None:
        raise SystemExit("no DNS queries in the input: nothing to model the lookups on")
    return list(users.values()), resolver


def name_pool(rng: random.Random, size: int = 300) -> list[tuple[str, list[str], list[str]]]:
    pool = []
    for i in range(size):
        name = f"{rng.choice(_WORDS)}{i % 7 or ''}.{rng.choice(_DOMAINS)}"
        cnames = [f"{name.split('.')[0]}-{k}.{rng.choice(_DOMAINS)}"
                  for k in range(rng.choice((0, 0, 1, 2)))]  # fmt: skip
        addrs = [f"{rng.randrange(3, 223)}.{rng.randrange(256)}.{rng.randrange(256)}."
                 f"{rng.randrange(1, 255)}" for _ in range(rng.randint(1, 4))]  # fmt: skip
        pool.append((name, cnames, addrs))
    return pool


def lookup(
    rng: random.Random, host: Host, resolver: Host, entry: tuple[str, list[str], list[str]]
) -> tuple[bytes, bytes]:
    """A query from ``host`` and the resolver's answer, as Ethernet frames."""
    name, cnames, addrs = entry
    port, ident, txid = rng.randrange(32768, 61000), rng.randrange(65536), rng.randrange(65536)
    flow = UdpFlow(host.mac, resolver.mac, host.ip, resolver.ip, port, 53, ident=ident)
    answer = craft.dns_response(txid, name, cnames=cnames, addrs=addrs, ttl=rng.randrange(5, 3600))
    return flow.frame(True, craft.dns_query(txid, name)), flow.frame(False, answer)


def mix(src: Path, dst: Path, share: float, seed: int = 1) -> tuple[int, int]:
    """Write ``dst``; returns (packets in all, DNS packets added)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    with open(src, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        # Mapped, not read: a 1 GB input would otherwise stay in this process's peak RSS,
        # which a benchmark's children inherit until they exec.
        return _mix(data, src, dst, share, seed)


def _mix(data: mmap.mmap, src: Path, dst: Path, share: float, seed: int) -> tuple[int, int]:
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise SystemExit(f"{src}: not a little-endian µs pcap")
    users, resolver = dns_users(data)
    rng = random.Random(seed)
    pool = name_pool(rng)
    records = 0
    off = 24
    while off + 16 <= len(data):
        records += 1
        off += 16 + _REC.unpack_from(data, off)[2]
    pairs = int(records * share / (2 * (1 - share)))
    every = records / max(pairs, 1)
    added = 0
    with open(dst, "wb") as out:
        out.write(data[:24])
        off, i, due = 24, 0, every
        while off + 16 <= len(data):
            sec, usec, caplen, _ = _REC.unpack_from(data, off)
            out.write(data[off : off + 16 + caplen])
            off += 16 + caplen
            i += 1
            while i >= due and added < 2 * pairs:
                due += every
                for frame in lookup(rng, rng.choice(users), resolver, rng.choice(pool)):
                    out.write(_REC.pack(sec, usec, len(frame), len(frame)) + frame)
                added += 2
    return records + added, added


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--share", type=float, default=0.05, help="DNS share of all packets")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    total, added = mix(args.src, args.dst, args.share, args.seed)
    print(f"{args.dst}: {total:,} packets, {added:,} of them added DNS ({added / total:.1%})")


if __name__ == "__main__":
    main()
