"""``spyglass analyze`` (capture files → store + summary), ``simulate`` and ``demo``."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spyglass.cli import render
from spyglass.cli.main import Command
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.store import paths
from spyglass.store.db import CaptureSource, StatsLike, Store, StoreError

if TYPE_CHECKING:
    from spyglass.core.analyze import AnalysisResult

TOP_PER_DEVICE = 5
MAX_NOTES = 3
EXIT_FAILED = 1


def cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        msg = f"not a network in CIDR form (e.g. 192.168.1.0/24): {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="analyse pcap/pcapng files: devices, destinations, audio uploads",
        description="Analyse capture files, store the results and print a summary.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", type=Path, help="pcap or pcapng file")
    _add_analysis_options(p)
    p.add_argument("--no-store", action="store_true", help="print the summary only, store nothing")


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, metavar="PATH", help="database file (default: user data dir)")
    p.add_argument(
        "--lan",
        action="append",
        type=cidr,
        metavar="CIDR",
        help="the home network (repeatable; default: private address ranges)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    store = None if args.no_store else Store.open(args.db)
    try:
        report = analyze_paths(args.files, store=store, lan=args.lan, progress=sys.stderr)
    finally:
        if store is not None:
            store.close()
    return report.emit(args.json, sys.stdout, sys.stderr)


# -- analysing -----------------------------------------------------------------------------------


@dataclass
class FileOutcome:
    path: Path
    result: AnalysisResult | None = None
    error: str | None = None  # why nothing (or not all) of the file could be used
    warnings: list[str] = field(default_factory=list)
    failed: bool = False  # counts for the exit status
    capture_id: int | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class _Summary:
    """A result without its series: what the summary store needs (series would only cost)."""

    devices: list[Device]
    endpoint_names: list[EndpointName]
    flows: list[Flow]
    uploads: list[Upload]
    stats: StatsLike
    read_report: None = None
    series: list[SeriesPoint] = field(default_factory=list)


def _vendor_lookup() -> Callable[[str], str | None] | None:
    try:
        from spyglass.adapters.oui import vendor_for_mac
    except ImportError:
        return None
    lookup: Callable[[str], str | None] = vendor_for_mac
    return lookup


def analyze_paths(
    files: Sequence[Path],
    *,
    store: Store | None,
    lan: list[str] | None = None,
    progress: Any = None,
) -> AnalysisReport:
    """Analyse each file (one bad file does not stop the others) and store what is usable."""
    lookup = _vendor_lookup()
    outcomes: list[FileOutcome] = []
    for path in files:
        out = FileOutcome(path)
        outcomes.append(out)
        _analyze_one(out, store, lan, lookup, progress)
    return AnalysisReport(outcomes, store.path if store is not None else None)


def _analyze_one(
    out: FileOutcome,
    store: Store | None,
    lan: list[str] | None,
    lookup: Callable[[str], str | None] | None,
    progress: Any,
) -> None:
    from spyglass.core.analyze import analyze_file
    from spyglass.core.capfile import CaptureFormatError

    bar = None
    if progress is not None:
        try:
            bar = render.ProgressBar.for_file(progress, out.name, out.path.stat().st_size)
        except OSError:
            bar = None
    try:
        result = analyze_file(
            out.path, lan=lan, vendor_lookup=lookup, progress=bar.update if bar else None,
            fingerprint=store is not None,
        )
    except CaptureFormatError as exc:
        where = "" if exc.reason.startswith("cannot read") else f" at byte {exc.offset}"
        out.error = f"{out.name}: {exc.reason}{where}; nothing was kept"
        out.failed = True
        return
    finally:
        if bar is not None:
            bar.close()
    out.result = result
    _judge(out)
    if store is None or result.stats.packets == 0:
        return
    if not isinstance(result.fingerprint, tuple):
        why = result.fingerprint or "no fingerprint"
        out.warnings.append(f"{out.name}: not stored: {why}")
        out.failed = True
        return
    identity, size = result.fingerprint
    source = CaptureSource(path=str(out.path.resolve()), fingerprint=identity, size=size)
    try:
        out.capture_id = store.record_analysis(source, result)
    except StoreError as exc:
        out.warnings.append(f"{out.name}: not stored: {exc}")
        out.failed = True


def _judge(out: FileOutcome) -> None:
    """Turn the read report into one-line messages; decide whether the file failed."""
    assert out.result is not None
    report = out.result.read_report
    packets = out.result.stats.packets
    final = report.problems[-1] if report.problems else None
    for p in report.problems:
        if p is final and (report.cut_short or report.stopped_early):
            continue
        out.warnings.append(f"{out.name}: warning: byte {p.offset}: {p.message}")
    # Decoder notes (a malformed DNS answer, ...) can be many and repetitive: a few say enough.
    notes = list(dict.fromkeys(out.result.stats.problems))
    out.warnings.extend(f"{out.name}: note: {_clip(m)}" for m in notes[:MAX_NOTES])
    if len(notes) > MAX_NOTES:
        out.warnings.append(f"{out.name}: note: {len(notes) - MAX_NOTES} more like these")
    if report.cut_short or report.stopped_early:
        what = "cut short" if report.cut_short else "stopped early"
        offset = final.offset if final else report.bytes_read
        detail = f" ({_short(final.message)})" if final else ""
        kept = render.count(packets, "packet")
        out.error = f"{out.name}: {what} at byte {offset}{detail}; kept {kept}"
        out.failed = True
    if packets == 0:
        out.error = out.error or f"{out.name}: no packets in the file; nothing was kept"
        out.failed = True


def _clip(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _short(message: str) -> str:
    # The reader says what was kept; the CLI says it once, with the packet count.
    return message.split("; everything before")[0]


@dataclass
class AnalysisReport:
    outcomes: list[FileOutcome]
    db: Path | None

    @property
    def failed(self) -> bool:
        return any(o.failed for o in self.outcomes)

    def summary_store(self) -> Store:
        """An in-memory store of the usable results: it merges devices and flows across files."""
        mem = Store.memory()
        for i, o in enumerate(self.outcomes):
            r = o.result
            if r is None or r.stats.packets == 0:
                continue
            part = _Summary(r.devices, r.endpoint_names, r.flows, r.uploads, r.stats)
            mem.record_analysis(CaptureSource(path=str(o.path), fingerprint=f"file-{i}"), part)
        return mem

    def emit(self, as_json: bool, out: Any, err: Any) -> int:
        with self.summary_store() as mem:
            if as_json:
                json.dump(self.as_json(mem), out, indent=None)
                out.write("\n")
            else:
                out.write(self.as_text(mem))
        for o in self.outcomes:
            for w in o.warnings:
                print(w, file=err)
            if o.error:
                print(o.error, file=err)
        return EXIT_FAILED if self.failed else 0

    def as_json(self, mem: Store) -> dict[str, Any]:
        devices = mem.devices()
        by_mac = {d.mac: d for d in devices}
        paths_by_capture = {c.id: c.path for c in mem.captures()}
        uploads = []
        for u in mem.uploads():
            item = render.upload_json(u, by_mac)
            item.pop("id", None)
            item.pop("verdict", None)
            item["file"] = paths_by_capture.get(u.capture_id or -1)
            uploads.append(item)
        return {
            "files": [self._file_json(o) for o in self.outcomes],
            "db": str(self.db) if self.db else None,
            "devices": [render.device_json(d) for d in devices],
            "uploads": uploads,
            "top_destinations": [render.flow_json(f) for f in mem.flows(limit=50)],
        }

    @staticmethod
    def _file_json(o: FileOutcome) -> dict[str, Any]:
        r = o.result
        return {
            "path": str(o.path),
            "packets": r.stats.packets if r else 0,
            "bytes": r.stats.bytes if r else 0,
            "first_ts": r.stats.first_ts if r else None,
            "last_ts": r.stats.last_ts if r else None,
            "format": r.read_report.format if r else None,
            "cut_short": bool(r and r.read_report.cut_short),
            "problems": r.problems if r else [],
            "error": o.error,
            "failed": o.failed,
            "capture_id": o.capture_id,
        }

    def as_text(self, mem: Store) -> str:
        lines: list[str] = []
        for o in self.outcomes:
            lines.append(self._file_line(o))
        if self.db is not None:
            lines.append(f"Stored in {self.db}")
        devices = mem.devices()
        by_mac = {d.mac: d for d in devices}
        uploads = mem.uploads()
        per_device: dict[str, int] = {}
        for u in uploads:
            per_device[u.device_mac] = per_device.get(u.device_mac, 0) + 1
        if devices:
            lines += ["", f"Devices ({len(devices)})", render.devices_table(devices, per_device)]
        flows = mem.flows()
        if any(f.bytes_up for f in flows):
            lines += [
                "",
                "Top destinations by upstream bytes",
                render.destinations_table(flows, by_mac, TOP_PER_DEVICE),
            ]
        lines.append("")
        if uploads:
            lines += [f"Audio uploads ({len(uploads)})", render.uploads_table(uploads, by_mac)]
        elif devices:
            lines.append("No audio uploads detected.")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _file_line(o: FileOutcome) -> str:
        r = o.result
        if r is None or r.stats.packets == 0:
            return f"{o.name}: nothing usable"
        st = r.stats
        span = ""
        if st.first_ts is not None and st.last_ts is not None:
            span = (
                f", {render.duration(st.last_ts - st.first_ts)} from "
                f"{render.local_time(st.first_ts)}"
            )
        note = " (cut short)" if r.read_report.cut_short else ""
        packets = render.count(st.packets, "packet")
        return f"{o.name}: {packets}, {render.size(st.bytes)}{span}{note}"


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
