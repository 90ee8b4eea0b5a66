"""``spyglass simulate`` (a labelled synthetic household capture) and ``spyglass demo`` (one
simulated and analysed with the real engine, no privileges needed)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from spyglass.cli import render
from spyglass.cli.analyze import EXIT_FAILED, analyze_paths
from spyglass.cli.main import Command
from spyglass.store import paths

# -- simulate ------------------------------------------------------------------------------------


def _add_simulate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="write a synthetic household capture with labelled uploads",
        description="Simulate a household's traffic (speakers, phones, a TV) into a pcap file.",
    )
    p.add_argument("out", type=Path, metavar="OUT.pcap")
    _add_sim_options(p)


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=600.0, metavar="S", help="seconds (600)")
    p.add_argument("--seed", type=int, default=1, metavar="N", help="random seed (1)")
    p.add_argument("--packets", type=int, default=None, metavar="N", help="aim for N packets")


def _simulate(out: Path, args: argparse.Namespace, start: float | None = None) -> Any:
    try:
        from spyglass.sim.household import simulate_household
    except ImportError as exc:
        raise _Unavailable(f"the traffic simulator is not available ({exc})") from exc
    if start is None:
        return simulate_household(
            out, labels=None, duration_s=args.duration, seed=args.seed,
            target_packets=args.packets,
        )
    return simulate_household(
        out, labels=None, duration_s=args.duration, seed=args.seed, target_packets=args.packets,
        start=start,
    )


class _Unavailable(Exception):
    pass


def _planted(summary: Any) -> int:
    uploads = getattr(summary, "uploads", 0)
    return len(uploads) if hasattr(uploads, "__len__") else int(uploads)


def _run_simulate(args: argparse.Namespace) -> int:
    try:
        summary = _simulate(args.out, args)
    except _Unavailable as exc:
        print(f"spyglass simulate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"spyglass simulate: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    labels = getattr(summary, "labels", None)
    print(
        f"Wrote {getattr(summary, 'pcap', args.out)}: "
        f"{render.count(int(getattr(summary, 'packets', 0)), 'packet')}, "
        f"{render.count(_planted(summary), 'audio upload')} planted"
        + (f"; labels in {labels}" if labels else "")
    )
    return 0


SIMULATE = Command(add_parser=_add_simulate, run=_run_simulate)


# -- demo ----------------------------------------------------------------------------------------


def _add_demo(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate a household and analyse it (no privileges needed)",
        description=(
            "Simulate a household with smart speakers, analyse it with the real engine into a "
            "separate demo database, and show what Spyglass found."
        ),
    )
    p.add_argument("--db", type=Path, metavar="PATH", help="demo database (default: demo.db)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _add_sim_options(p)


def _run_demo(args: argparse.Namespace) -> int:
    db = args.db if args.db is not None else paths.demo_db_path()
    with tempfile.TemporaryDirectory(prefix="spyglass-demo-") as tmp:
        pcap = Path(tmp) / "household.pcap"
        try:
            # The demo household lived the last few minutes, so its timeline reads as "today".
            summary = _simulate(pcap, args, start=time.time() - args.duration)
        except _Unavailable as exc:
            print(f"spyglass demo: {exc}", file=sys.stderr)
            return EXIT_FAILED
        from spyglass.store.db import Store

        with Store.open(db) as store:
            for old in store.captures():  # each demo shows one household: the latest
                store.forget_capture(old.id)
            report = analyze_paths([pcap], store=store, progress=sys.stderr)
        if not args.json:
            print(
                f"Simulated a household for {render.duration(args.duration)}: "
                f"{render.count(_planted(summary), 'audio upload')} planted.\n"
            )
        status = report.emit(args.json, sys.stdout, sys.stderr)
    if not args.json:
        print(f"\nThe demo database is {db}; try: spyglass uploads --db {db}")
    return status


DEMO = Command(add_parser=_add_demo, run=_run_demo)
