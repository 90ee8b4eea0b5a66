"""analyze_file in two processes gives what it gives in one: on real and simulated captures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core import analyze, parallel
from spyglass.core.analyze import AnalysisResult, analyze_file
from spyglass.core.capfile import CaptureFormatError
from spyglass.core.fingerprint import capture_fingerprint
from spyglass.sim.household import simulate_household


def outcome(r: AnalysisResult) -> dict[str, Any]:
    st = r.stats
    return {
        "uploads": r.uploads,
        "flows": r.flows,
        "series": r.series,
        "devices": r.devices,
        "names": r.endpoint_names,
        "stats": (st.packets, st.bytes, st.malformed, st.non_ip, st.local_only, st.first_ts,
                  st.last_ts, st.problems),
        "report": r.read_report,
    }


def both_ways(path: Path, **kw: Any) -> tuple[AnalysisResult, AnalysisResult]:
    one = analyze_file(path, vendor_lookup=vendor_for_mac, workers=1, **kw)
    two = analyze_file(path, vendor_lookup=vendor_for_mac, workers=2, **kw)
    assert outcome(one) == outcome(two)
    return one, two


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many batches per file, so state carried from batch to batch is exercised.
    monkeypatch.setattr(analyze, "CHUNK_BYTES", 128 << 10)


@pytest.fixture(scope="module")
def household(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "household.pcap"
    simulate_household(path, duration_s=600, seed=5, target_packets=20_000)
    return path


def test_simulated_household(household: Path, small_chunks: None) -> None:
    one, _ = both_ways(household)
    assert one.stats.packets >= 20_000
    assert one.uploads and one.flows and one.series and one.devices


def test_real_captures(captures: Path, small_chunks: None) -> None:
    paths = sorted(captures.glob("*.pcap*"))
    assert paths
    for path in paths:
        both_ways(path)


def test_series_sink_gets_the_same_points(household: Path, small_chunks: None) -> None:
    got: dict[int, list[Any]] = {1: [], 2: []}
    for w in (1, 2):
        r = analyze_file(household, workers=w, series_sink=got[w].extend)
        assert r.series == []
    assert got[1] == got[2] and got[1]


def test_fingerprint_both_ways(household: Path, small_chunks: None) -> None:
    one, two = both_ways(household, fingerprint=True)
    assert one.fingerprint == two.fingerprint == capture_fingerprint(household)


def test_fingerprint_of_a_file_the_reader_stopped_in(tmp_path: Path, household: Path) -> None:
    data = household.read_bytes()
    cut = data[: len(data) // 2] + b"\xff" * 4096 + data[len(data) // 2 :]  # corrupt middle
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(cut)
    one, two = both_ways(path, fingerprint=True)
    assert one.read_report.stopped_early
    assert one.fingerprint == two.fingerprint == capture_fingerprint(path)
    assert isinstance(one.fingerprint, tuple) and one.fingerprint[1] == len(cut)


def test_not_a_capture_raises_in_parallel_mode(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, not a capture" * 100)
    with pytest.raises(CaptureFormatError):
        analyze_file(path, workers=2)


def test_dead_worker_falls_back_to_one_process(
    household: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(*_args: object) -> None:
        os._exit(3)

    monkeypatch.setattr(parallel, "_work", die)
    r = analyze_file(household, vendor_lookup=vendor_for_mac, workers=2)
    ref = analyze_file(household, vendor_lookup=vendor_for_mac, workers=1)
    assert outcome(r) == outcome(ref)


def test_dead_worker_after_series_were_handed_over_is_an_error(
    household: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = parallel.PreparedReader._receive

    def cut_short(self: parallel.PreparedReader, *args: Any) -> Any:
        for i, item in enumerate(real(self, *args)):
            if i == 30:
                raise parallel.WorkerFailed("simulated death")
            yield item

    monkeypatch.setattr(parallel.PreparedReader, "_receive", cut_short)
    points: list[Any] = []
    with pytest.raises(parallel.WorkerFailed):
        analyze_file(household, workers=2, series_sink=points.extend)
    assert points
