"""Run the pipeline over one capture file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from spyglass.core.capfile import CaptureReader, ReadReport, detect_format, open_capture
from spyglass.core.detect import DetectorConfig
from spyglass.core.fingerprint import Fingerprinting
from spyglass.core.frames import FrameBatch
from spyglass.core.inventory import VendorLookup
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.core.parallel import PreparedReader, WorkerFailed
from spyglass.core.parallelpcap import SegmentedReader
from spyglass.core.pipeline import Pipeline, PipelineStats
from spyglass.core.prepare import Prepared

ProgressFn = Callable[[int, int], None]  # (bytes read, file size)
SeriesSink = Callable[[list[SeriesPoint]], None]

# Fewer, larger batches: less overhead per packet. 1M-packet household capture, two
# processes, median of 4: 8 MB 0.83 s, 16 MB 0.63-0.66 s, 32 MB 0.55 s, 48 MB 0.59 s (and
# with 5 % DNS 1.5 s: too few segments to share evenly).
CHUNK_BYTES = 32 << 20
# Below this a second process costs more (fork, pipe) than it saves.
PARALLEL_MIN_BYTES = 32 << 20


@dataclass(slots=True)
class AnalysisResult:
    path: str
    devices: list[Device]
    endpoint_names: list[EndpointName]
    flows: list[Flow]
    uploads: list[Upload]
    stats: PipelineStats
    read_report: ReadReport
    series: list[SeriesPoint] = field(default_factory=list)  # empty when a sink took them
    # With fingerprint: the file's identity and size (core.fingerprint), or why it has none.
    fingerprint: tuple[str, int] | str | None = None
    # The pipeline that made it, with all its state (e.g. the names of every address each
    # device resolved, not only of those it contacted: pipeline.names.entries()). Dropping it
    # frees that state object by object (30 ms after a DNS-heavy 1 GB file): a caller about
    # to exit may keep it instead.
    pipeline: Pipeline | None = field(default=None, repr=False, compare=False)

    @property
    def problems(self) -> list[str]:
        out = [f"byte {p.offset}: {p.message}" for p in self.read_report.problems]
        return out + self.stats.problems


def analyze_file(
    path: str | os.PathLike[str],
    *,
    lan: list[str] | None = None,
    vendor_lookup: VendorLookup | None = None,
    progress: ProgressFn | None = None,
    series_sink: SeriesSink | None = None,
    detector_config: DetectorConfig | None = None,
    workers: int | None = None,
    fingerprint: bool = False,
    on_start: Callable[[], None] | None = None,
) -> AnalysisResult:
    """Analyse a pcap/pcapng file.

    Raises :class:`spyglass.core.capfile.CaptureFormatError` when the file is not a capture at
    all; any later fault is in ``read_report`` (what was read before it is analysed). With a
    ``series_sink`` the per-second series are handed over as they settle, so memory stays flat
    however long the capture is. ``workers=2`` reads and decodes in a second process, ``1`` does
    everything here; by default a large file uses two processes when the machine has two cores.
    Both give the same result. ``fingerprint`` also gives the file's identity for the store
    (:func:`spyglass.core.fingerprint.capture_fingerprint`, taken while it is read). ``on_start`` is
    called once reading has begun (in two processes: once the second exists), perhaps twice
    when a failed worker makes the reading start again here.
    """
    if workers is None:
        workers = 2 if _cores() >= 2 and _size(path) >= PARALLEL_MIN_BYTES else 1
    if workers >= 2:
        handed: list[int] = []
        sink = series_sink
        if series_sink is not None:
            def sink(points: list[SeriesPoint], outer: SeriesSink = series_sink) -> None:
                handed.append(len(points))
                outer(points)
        try:
            return _analyze(
                path, lan, vendor_lookup, progress, sink, detector_config, True, fingerprint,
                on_start,
            )
        except WorkerFailed:
            if handed:
                raise  # the sink holds part of the series: a second run would double them
            # Otherwise start again in this process.
    return _analyze(
        path, lan, vendor_lookup, progress, series_sink, detector_config, False, fingerprint,
        on_start,
    )


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _format(path: str | os.PathLike[str]) -> str | None:
    try:
        with open(path, "rb") as fh:
            return detect_format(fh.read(4))
    except OSError:
        return None  # the reader says why


def _size(path: str | os.PathLike[str]) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _analyze(
    path: str | os.PathLike[str],
    lan: list[str] | None,
    vendor_lookup: VendorLookup | None,
    progress: ProgressFn | None,
    series_sink: SeriesSink | None,
    detector_config: DetectorConfig | None,
    parallel: bool,
    fingerprint: bool,
    on_start: Callable[[], None] | None,
) -> AnalysisResult:
    pipe = Pipeline(lan=lan, vendor_lookup=vendor_lookup, detector_config=detector_config)
    hashing = Fingerprinting(path) if fingerprint else None
    if hashing is not None:
        on_start = _both(hashing.start, on_start)
    reader: SegmentedReader | PreparedReader | CaptureReader
    if parallel:
        two = SegmentedReader if _format(path) == "pcap" else PreparedReader
        reader = two(path, pipe.prep_settings, chunk_bytes=CHUNK_BYTES, on_start=on_start)
        step: Callable[[Any], object] = partial(_step, pipe)
    else:
        reader = open_capture(path, chunk_bytes=CHUNK_BYTES)
        if on_start is not None:
            on_start()
        step = pipe.feed
    kept = _run(pipe, reader, step, progress, series_sink)
    if isinstance(reader, SegmentedReader) and reader.worker_failed:
        pipe.stats.problems.append(
            f"the second reader process failed ({reader.worker_failed}); "
            "the rest of the file was read in one process"
        )
    identity = hashing.result() if hashing is not None else None
    return AnalysisResult(
        path=os.fspath(path),
        devices=pipe.devices(),
        endpoint_names=pipe.endpoint_names(),
        flows=pipe.flows(),
        uploads=pipe.uploads(),
        stats=pipe.stats,
        read_report=reader.report,
        series=kept,
        fingerprint=identity,
        pipeline=pipe,
    )


def _both(first: Callable[[], None], then: Callable[[], None] | None) -> Callable[[], None]:
    def run() -> None:
        first()
        if then is not None:
            then()

    return run


def _step(pipe: Pipeline, item: Prepared | FrameBatch) -> None:
    if isinstance(item, FrameBatch):
        pipe.feed(item)
    else:
        pipe.apply(item)


def _run(
    pipe: Pipeline,
    reader: SegmentedReader | PreparedReader | CaptureReader,
    step: Callable[[Any], object],
    progress: ProgressFn | None,
    series_sink: SeriesSink | None,
) -> list[SeriesPoint]:
    kept: list[SeriesPoint] = []
    for item in reader:
        step(item)
        settled = pipe.drain_series()
        if series_sink is not None:
            if settled:
                series_sink(settled)
        else:
            kept.extend(settled)
        if progress is not None:
            progress(reader.bytes_read, reader.file_size)
    pipe.flush()
    rest = pipe.drain_series(final=True)
    if series_sink is not None:
        if rest:
            series_sink(rest)
    else:
        kept.extend(rest)
    pipe.stats.problems.extend(pipe.slow.stats.samples)
    return kept
