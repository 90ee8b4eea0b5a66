"""analyze_file in two processes gives what it gives in one: on real and simulated captures."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import pytest

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core import analyze, parallel, parallelpcap
from spyglass.core.analyze import AnalysisResult, analyze_file
from spyglass.core.capfile import CaptureFormatError, open_capture
from spyglass.core.fingerprint import Fingerprinting, capture_fingerprint
from spyglass.core.pcapsegments import HEADER, PcapSegments
from spyglass.sim.household import simulate_household
from tests.core.test_capfile import ng_epb, ng_idb, ng_shb


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


@pytest.fixture(scope="module")
def household_ng(household: Path) -> Path:
    """The same capture as pcapng (read by the other two-process reader)."""
    parts = [ng_shb(), ng_idb(1, tsresol=6)]
    for batch in open_capture(household):
        view = memoryview(batch.buf)
        for off, cap, ts in zip(batch.offset.tolist(), batch.caplen.tolist(),
                                batch.ts.tolist(), strict=True):
            parts.append(ng_epb(0, round(ts * 1e6), bytes(view[off : off + cap])))
    path = household.with_suffix(".pcapng")
    path.write_bytes(b"".join(parts))
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


def test_fingerprinting_says_why_a_file_has_no_identity(tmp_path: Path) -> None:
    """Taken on a thread beside the reading: a file gone by then has no identity, and says so."""
    hashing = Fingerprinting(tmp_path / "gone.pcap")
    hashing.start()
    why = hashing.result()
    assert isinstance(why, str) and why.startswith("cannot read it: ")


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


def die_at_once(*_args: object) -> None:
    """A worker that dies without a word (as if killed)."""
    os._exit(3)


def test_worker_dying_at_once_loses_nothing(
    household: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallelpcap, "_work", die_at_once)
    r = analyze_file(household, vendor_lookup=vendor_for_mac, workers=2)
    ref = analyze_file(household, vendor_lookup=vendor_for_mac, workers=1)
    assert outcome(r)["flows"] == outcome(ref)["flows"]
    assert outcome(r)["report"] == outcome(ref)["report"]
    assert any("second reader process failed" in p for p in r.stats.problems)


def test_worker_failing_midway_loses_nothing(
    household: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's walk raises on its fifth segment: the caller walks the rest itself.
    real = PcapSegments.walk
    calls = {"n": 0}

    def flaky(self: PcapSegments, *args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if os.getpid() != parent and calls["n"] == 5:
            raise MemoryError("simulated")
        return real(self, *args, **kw)

    parent = os.getpid()
    monkeypatch.setattr(PcapSegments, "walk", flaky)
    r = analyze_file(household, vendor_lookup=vendor_for_mac, workers=2)
    ref = analyze_file(household, vendor_lookup=vendor_for_mac, workers=1)
    problems = r.stats.problems
    note = "the second reader process failed (MemoryError: simulated)"
    assert any(p.startswith(note) for p in problems)
    r.stats.problems = [p for p in problems if not p.startswith(note)]
    assert outcome(r) == outcome(ref)


def test_segments_are_walked_where_they_begin_whoever_walks_them(
    household: Path, tmp_path: Path
) -> None:
    # A segment walked from a start found in it equals one walked from the known start.
    data = household.read_bytes()
    segments = PcapSegments(data[:24], len(data), 64 << 10)
    read = lambda at, n: data[at : at + n]  # noqa: E731
    known = HEADER
    for k in range(segments.count):
        by_truth, batch_t = segments.walk(k, read, known)
        found, batch_f = segments.walk(k, read, None)
        assert found.start == by_truth.start and found.stop == by_truth.stop
        assert found.packets == by_truth.packets > 0
        assert batch_t is not None and batch_f is not None
        assert (batch_t.ts == batch_f.ts).all()
        known = by_truth.stop
    assert known == len(data)


def fake_chain_capture(path: Path, chunk: int) -> int:
    """A pcap whose record crossing the second segment's start carries, from that start on, a
    chain of plausible pcap headers in its payload; returns the chain's offset."""
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    out = bytearray(hdr)
    small = bytes(range(60))
    t = 1_764_000_000
    while len(out) + 16 + 60 < 24 + chunk - 100:
        out += struct.pack("<IIII", t, len(out) % 999_999, 60, 60) + small
    fake = b"".join(struct.pack("<IIII", t, 7, 40, 40) + bytes(40) for _ in range(12))
    lead = 24 + chunk - (len(out) + 16)  # payload bytes before the segment start
    big = bytes(lead) + fake + bytes(100)
    out += struct.pack("<IIII", t, 1, len(big), len(big)) + big
    for i in range(200):
        out += struct.pack("<IIII", t + 1, i, 60, 60) + small
    path.write_bytes(bytes(out))
    return 24 + chunk


def test_a_wrong_guess_is_walked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = 64 << 10
    path = tmp_path / "fake-chain.pcap"
    fake_at = fake_chain_capture(path, chunk)
    data = path.read_bytes()
    segments = PcapSegments(data[:24], len(data), chunk)
    read = lambda at, n: data[at : at + n]  # noqa: E731
    guess, _ = segments.walk(1, read, None)
    truth, _ = segments.walk(0, read, HEADER)
    assert guess.start == fake_at != truth.stop  # the finder is fooled

    # The worker walks every segment (the caller takes none ahead): its guess for segment 1
    # is refused at the seam and the segment walked again here from the known start.
    monkeypatch.setattr(analyze, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(parallelpcap, "AHEAD", 0)
    again: list[int | None] = []
    real = parallelpcap._Local.walk

    def counted(self: Any, k: int, start: int | None) -> Any:
        again.append(start)
        return real(self, k, start)

    monkeypatch.setattr(parallelpcap._Local, "walk", counted)
    one, two = both_ways(path)
    assert again == [truth.stop]
    assert one.stats.packets == two.stats.packets == data.count(bytes(range(60))) + 1


def test_dead_pcapng_worker_falls_back_to_one_process(
    household_ng: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "_work", die_at_once)
    r = analyze_file(household_ng, vendor_lookup=vendor_for_mac, workers=2)
    ref = analyze_file(household_ng, vendor_lookup=vendor_for_mac, workers=1)
    assert outcome(r) == outcome(ref)


def test_dead_pcapng_worker_after_series_were_handed_over_is_an_error(
    household_ng: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
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
        analyze_file(household_ng, workers=2, series_sink=points.extend)
    assert points
