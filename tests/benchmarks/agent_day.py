"""The agent's memory after a day with 50 devices, at high speed.

    .venv/bin/python tests/benchmarks/agent_day.py [--hours 24] [--speakers 30] [--others 20]
        [--segment-s 1800] [--write-every-s 10] [--tmp /dev/shm]

A live day would take a day, so this drives the agent's own parts in one process, in simulated
time: `simulate_household` renders the day segment by segment (a helper process renders the
next segment while this one is read), and each segment's frames go through the agent's
Pipeline, its store writes (Agent._write: devices that changed, flows, names, series, uploads
into an on-disk Store) and Pipeline.compact(), as the capture loop does, with a store write
every ``--write-every-s`` simulated seconds (the live agent writes every wall second; the
store's memory does not depend on how often). Printed: RSS of this process (VmRSS) and its
peak (VmHWM) every few simulated hours, with devices, flows and uploads so far.

Not in the figure: the live agent's capture ring (32 MiB of mmap, counted in its RSS as the
kernel touches it) and its API server thread; both are fixed-size. The simulator repeats each
device's behaviour with the same seed in every segment, so remote endpoints recur: flows and
names stop growing after the first segment, where a real day would keep adding some.

Target in the issue: RSS <= 150 MB after a day with 50 devices.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spyglass.adapters.oui import vendor_for_mac  # noqa: E402
from spyglass.agent.runner import Agent, AgentConfig, _Pending  # noqa: E402
from spyglass.core.capfile import open_capture  # noqa: E402
from spyglass.core.pipeline import Pipeline  # noqa: E402
from spyglass.sim.household import simulate_household  # noqa: E402
from spyglass.store.db import Store  # noqa: E402

START = 1_764_000_000.0
LAN = None  # the default private ranges hold the simulator's home network


def render(path: Path, index: int, args: argparse.Namespace) -> None:
    """One segment of the day (same devices every segment: same seed, later start)."""
    simulate_household(
        path, duration_s=args.segment_s, start=START + index * args.segment_s, seed=args.seed,
        speakers=args.speakers, others=args.others,
    )  # fmt: skip


def mem_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    got = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(rest.split()[0]) / 1024
    return got["VmRSS"], got["VmHWM"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--speakers", type=int, default=30)
    ap.add_argument("--others", type=int, default=20)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--segment-s", type=float, default=1800.0)
    ap.add_argument("--write-every-s", type=float, default=10.0)
    ap.add_argument("--tmp", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir()
                    else None, help="where segments are rendered (a pcap is ~1 kB a packet)")
    args = ap.parse_args()
    segments = max(1, round(args.hours * 3600 / args.segment_s))
    rss0, _ = mem_mib()
    ctx = mp.get_context("spawn")  # the helper does not inherit this process's memory
    with tempfile.TemporaryDirectory(prefix="sg-day-", dir=args.tmp) as tmp:
        agent = Agent(AgentConfig(interface="sim0", db_path=Path(tmp) / "agent.db"))
        store = Store.open(Path(tmp) / "agent.db")
        cid = store.live_capture("sim0")
        pipe = Pipeline(lan=LAN, vendor_lookup=vendor_for_mac)
        pending = _Pending()
        print(f"{args.speakers + args.others} devices ({args.speakers} speakers), "
              f"{args.hours:g} simulated hours in {segments} segments of {args.segment_s:g} s; "
              f"RSS at start {rss0:.1f} MiB (numpy, sqlite, spyglass imported)")  # fmt: skip
        print(f"{'sim h':>5} {'packets':>11} {'devices':>7} {'flows':>6} {'uploads':>7} "
              f"{'RSS MiB':>7} {'peak MiB':>8} {'wall s':>7}")  # fmt: skip
        wall0 = time.monotonic()
        paths = [Path(tmp) / f"seg{i % 2}.pcap" for i in range(segments)]
        helper = ctx.Process(target=render, args=(paths[0], 0, args))
        helper.start()
        next_write = START + args.write_every_s
        report_every = max(1, segments // 12)
        for i in range(segments):
            helper.join()
            if helper.exitcode:
                raise SystemExit(f"rendering segment {i} failed ({helper.exitcode})")
            if i + 1 < segments:
                helper = ctx.Process(target=render, args=(paths[i + 1], i + 1, args))
                helper.start()
            for batch in open_capture(paths[i]):
                pending.uploads.extend(pipe.feed(batch))
                last = pipe.stats.last_ts or START
                if last >= next_write:
                    next_write = last + args.write_every_s
                    pending.add_series(pipe.drain_series())
                    if not agent._write(store, cid, pipe, pending):
                        raise SystemExit(f"store write failed: {agent.status()['problems']}")
                    pipe.compact()
            paths[i].unlink()
            if (i + 1) % report_every == 0 or i + 1 == segments:
                rss, peak = mem_mib()
                print(f"{(i + 1) * args.segment_s / 3600:>5.1f} {pipe.stats.packets:>11,} "
                      f"{len(pipe.inventory):>7} {len(pipe.flows()):>6} "
                      f"{len(pipe.uploads()):>7} {rss:>7.1f} {peak:>8.1f} "
                      f"{time.monotonic() - wall0:>7.0f}", flush=True)  # fmt: skip
        pending.uploads.extend(pipe.flush())
        pending.add_series(pipe.drain_series(final=True))
        agent._write(store, cid, pipe, pending)
        rss, peak = mem_mib()
        db_mib = sum(p.stat().st_size for p in Path(tmp).glob("agent.db*")) / 2**20
        store.close()
    verdict = "met" if peak <= 150 else "NOT met"
    print(f"after the day: RSS {rss:.1f} MiB, peak {peak:.1f} MiB (target <= 150 MB: {verdict}); "
          f"store {db_mib:.0f} MiB on disk; {pipe.stats.packets:,} packets, "
          f"{len(pipe.uploads())} uploads")  # fmt: skip


if __name__ == "__main__":
    main()
