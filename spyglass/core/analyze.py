"""Run the pipeline over one capture file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from spyglass.core.capfile import ReadReport, open_capture
from spyglass.core.detect import DetectorConfig
from spyglass.core.inventory import VendorLookup
from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload
from spyglass.core.pipeline import Pipeline, PipelineStats

ProgressFn = Callable[[int, int], None]  # (bytes read, file size)
SeriesSink = Callable[[list[SeriesPoint]], None]


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
) -> AnalysisResult:
    """Analyse a pcap/pcapng file.

    Raises :class:`spyglass.core.capfile.CaptureFormatError` when the file is not a capture at
    all; any later fault is in ``read_report`` (what was read before it is analysed). With a
    ``series_sink`` the per-second series are handed over as they settle, so memory stays flat
    however long the capture is.
    """
    reader = open_capture(path, chunk_bytes=16 << 20)  # fewer, larger batches: less overhead
    pipe = Pipeline(lan=lan, vendor_lookup=vendor_lookup, detector_config=detector_config)
    kept: list[SeriesPoint] = []
    for batch in reader:
        pipe.feed(batch)
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
    return AnalysisResult(
        path=os.fspath(path),
        devices=pipe.devices(),
        endpoint_names=pipe.endpoint_names(),
        flows=pipe.flows(),
        uploads=pipe.uploads(),
        stats=pipe.stats,
        read_report=reader.report,
        series=kept,
    )
