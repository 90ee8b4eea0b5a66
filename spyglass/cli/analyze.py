"""``spyglass analyze``: capture files → store + summary."""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spyglass.cli import render
from spyglass.cli.storeopen import SeriesToStore, StoreOpener
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.store.records import CaptureSource, StatsLike, StoreError

if TYPE_CHECKING:
    from spyglass.core.analyze import AnalysisResult
    from spyglass.store.db import Store

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
    opener = StoreOpener(args.db, keep=not args.no_store)
    try:
        report = analyze_paths(args.files, store=opener, lan=args.lan, progress=sys.stderr)
        opener.close_soon()  # the summary (an in-memory store of its own) is made meanwhile
        return report.emit(args.json, sys.stdout, sys.stderr)
    finally:
        opener.close()


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
    store: Store | StoreOpener | None,
    lan: list[str] | None = None,
    progress: Any = None,
) -> AnalysisReport:
    """Analyse each file (one bad file does not stop the others) and store what is usable.

    ``store``: an open store, one being opened (:class:`StoreOpener`, whose failure to open
    stops everything with its StoreError), or None to keep nothing."""
    opener = store if isinstance(store, StoreOpener) else StoreOpener.ready(store)
    lookup = _vendor_lookup()
    outcomes: list[FileOutcome] = []
    for path in files:
        for earlier in outcomes:
            # Only the last file's pipeline is kept to the end (the process exits without
            # freeing it): the others' state would add up.
            if earlier.result is not None:
                earlier.result.pipeline = None
        out = FileOutcome(path)
        outcomes.append(out)
        _analyze_one(out, opener, lan, lookup, progress)
    store_now = opener.get()  # raises if it could not be opened, even when no file was usable
    return AnalysisReport(outcomes, store_now.path if store_now is not None else None)


def _analyze_one(
    out: FileOutcome,
    opener: StoreOpener,
    lan: list[str] | None,
    lookup: Callable[[str], str | None] | None,
    progress: Any,
) -> None:
    from spyglass.core.analyze import analyze_file
    from spyglass.core.capfile import CaptureFormatError
    from spyglass.core.parallel import WorkerFailed

    bar = None
    if progress is not None:
        try:
            bar = render.ProgressBar.for_file(progress, out.name, out.path.stat().st_size)
        except OSError:
            bar = None

    def advance(done: int, total: int) -> None:
        opener.check()  # a store that cannot be opened: stop reading now, not at the end
        if bar is not None:
            bar.update(done, total)

    def analyse(sink: SeriesToStore, workers: int | None = None) -> AnalysisResult:
        with _collector_paused():
            return analyze_file(
                out.path, lan=lan, vendor_lookup=lookup, progress=advance, series_sink=sink,
                fingerprint=opener.keep, on_start=opener.start, workers=workers,
            )

    sink = SeriesToStore(opener)
    try:
        try:
            result = analyse(sink)
        except WorkerFailed:
            # The second process died after series were staged: start again in this one.
            sink.drop()
            sink = SeriesToStore(opener)
            result = analyse(sink, workers=1)
        sink.flush()
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
    store = opener.get()
    if store is None or result.stats.packets == 0:
        sink.drop()
        return
    if sink.error is not None or not isinstance(result.fingerprint, tuple):
        why = sink.error or result.fingerprint or "no fingerprint"
        sink.drop()
        out.warnings.append(f"{out.name}: not stored: {why}")
        out.failed = True
        return
    identity, size = result.fingerprint
    source = CaptureSource(path=str(out.path.resolve()), fingerprint=identity, size=size)
    try:
        out.capture_id = store.record_analysis(source, result)
    except StoreError as exc:
        sink.drop()
        out.warnings.append(f"{out.name}: not stored: {exc}")
        out.failed = True


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage-collector passes while a file is analysed.

    An analysis makes no reference cycles (tests/core/test_cycles.py), so reference counting
    frees everything it drops; the collector's passes only walked its growing state (names,
    flows): about 95 ms of a 1M-packet DNS-heavy analysis, in the process that is the critical
    path. What is alive afterwards is mostly the result, kept to the end: frozen, so that the
    passes after it (the store write) skip it too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


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
        from spyglass.store.db import Store

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
