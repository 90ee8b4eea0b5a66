"""How fast the API answers a series over a month of per-second data (prints figures).

    .venv/bin/python tests/benchmarks/api_series.py [DAYS] [DEVICES]

Fills a real store (through Store.write_live, as the agent does) with DEVICES devices sending
one row per second for DAYS days, then asks the running API server for series over the socket.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from spyglass.agent.server import AgentServer, StoreBackend
from spyglass.api.client import AgentClient
from spyglass.core.models import Device, SeriesPoint
from spyglass.store.db import Store

T0 = 1_700_000_000
DAY = 86_400


def fill(path: Path, days: int, devices: int) -> None:
    macs = [f"68:db:f5:00:00:{n:02x}" for n in range(devices)]
    with Store.open(path) as store:
        cid = store.live_capture("eth0")
        store.write_live(cid, devices=[Device(m) for m in macs])
        for day in range(days):
            for mac in macs:
                base = T0 + day * DAY
                rows = [SeriesPoint(mac, "52.1.2.3", base + s, 200 + s % 50, 400, 2, 2)
                        for s in range(DAY)]
                store.write_live(cid, series=rows)


def timed(fn: object, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    days = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    db = tmp / "s.db"
    t = time.perf_counter()
    fill(db, days, devices)
    rows = days * DAY * devices
    print(f"filled {rows:,} series rows in {time.perf_counter() - t:.1f} s "
          f"({db.stat().st_size / 1e6:.0f} MB)")
    mac = "68:db:f5:00:00:00"
    with (
        StoreBackend(db, dict) as backend,
        AgentServer(tmp / "a.sock", backend),
        AgentClient(tmp / "a.sock", timeout=120) as client,
    ):
        client.hello()
        for label, span in (("hour", 3600), ("day", DAY), ("week", 7 * DAY),
                            (f"{days} days", days * DAY)):
            for who in (mac, None):
                result = client.series(who, T0, T0 + span, 1)
                ms = timed(lambda w=who, s=span: client.series(w, T0, T0 + s, 1))
                print(f"series {label:>8} {'one device' if who else 'all devices':>11}: "
                      f"{ms:8.1f} ms, {len(result['points'])} points at "
                      f"{result['resolution_s']} s")
        ms = timed(lambda: client.hello(), 50)
        print(f"hello round trip: {ms:.2f} ms")


if __name__ == "__main__":
    main()
