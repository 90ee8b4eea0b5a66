"""Lane-found record candidates: the reader gives exactly what the full byte scan gives."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from spyglass.core import lanes
from spyglass.core.capfile import ReadReport, open_capture
from spyglass.core.lanes import LaneFinder
from tests.core.test_capfile import pcap_bytes

Frames = tuple[list[bytes], np.ndarray, np.ndarray, ReadReport]


def read(path: Path, chunk: int, *, use_lanes: bool, monkeypatch: pytest.MonkeyPatch) -> Frames:
    with monkeypatch.context() as m:
        if not use_lanes:
            m.setattr(LaneFinder, "find", lambda self, buf, start: None)
        reader = open_capture(path, chunk_bytes=chunk)
        frames: list[bytes] = []
        ts: list[np.ndarray] = []
        wire: list[np.ndarray] = []
        for b in reader:
            for o, c in zip(b.offset.tolist(), b.caplen.tolist(), strict=True):
                frames.append(bytes(b.buf[o : o + c]))
            ts.append(b.ts)
            wire.append(b.wirelen)
        cat = np.concatenate
        return frames, cat(ts) if ts else np.zeros(0), cat(wire) if wire else np.zeros(0), \
            reader.report


def recording_find(used: list[bool]) -> Callable[[LaneFinder, bytes, int], Any]:
    """LaneFinder.find that also notes in ``used`` whether the lanes found records."""
    real = LaneFinder.find

    def spy(self: LaneFinder, buf: bytes, start: int) -> tuple[np.ndarray, ...] | None:
        out = real(self, buf, start)
        used.append(out is not None)
        return out

    return spy


def same_either_way(
    path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch, *, lanes_used: bool = False
) -> Frames:
    used: list[bool] = []
    spy = recording_find(used)
    with monkeypatch.context() as m:
        m.setattr(LaneFinder, "find", spy)
        a = read(path, chunk, use_lanes=True, monkeypatch=monkeypatch)
    if lanes_used:
        assert any(used)
    b = read(path, chunk, use_lanes=False, monkeypatch=monkeypatch)
    assert a[0] == b[0]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[3] == b[3]
    return a


def fake_header_payload(rng: random.Random, ts: int, n: int) -> bytes:
    """A payload full of byte strings that look like record headers of the same second."""
    out = bytearray(rng.randbytes(n))
    for at in range(0, max(n - 16, 0), rng.randint(20, 90)):
        out[at : at + 16] = struct.pack("<IIII", ts, 0, rng.randint(1, 1500), 1500)
    return bytes(out)


def packets(rng: random.Random, count: int, t0: float, *, fakes: bool = False,
            big_every: int = 0) -> list[tuple[float, bytes]]:
    out = []
    t = t0
    for i in range(count):
        t += rng.random() * 0.01
        size = rng.choice([60, 66, 120, 400, 1514]) if not big_every or i % big_every else 60000
        frame = fake_header_payload(rng, int(t), size) if fakes else rng.randbytes(size)
        out.append((t, frame))
    return out


@pytest.mark.parametrize("chunk", [64 << 10, 1 << 20])
def test_plain_capture(tmp_path: Path, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.pcap"
    p.write_bytes(pcap_bytes(packets(random.Random(1), 3000, 1_700_000_000.0)))
    frames = same_either_way(p, chunk, monkeypatch, lanes_used=True)[0]
    assert len(frames) == 3000


def test_payloads_that_look_like_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "fakes.pcap"
    p.write_bytes(pcap_bytes(packets(random.Random(2), 2000, 1_700_000_000.0, fakes=True)))
    assert len(same_either_way(p, 1 << 20, monkeypatch)[0]) == 2000


def test_second_byte_changes_mid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 65536-s boundary: the timestamp's second-highest byte changes.
    t0 = float((1_700_000_000 // 65536 + 1) * 65536) - 5
    p = tmp_path / "roll.pcap"
    p.write_bytes(pcap_bytes(packets(random.Random(3), 3000, t0)))
    assert len(same_either_way(p, 1 << 20, monkeypatch)[0]) == 3000


def test_records_larger_than_lanes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.pcap"
    p.write_bytes(pcap_bytes(packets(random.Random(4), 600, 1_700_000_000.0, big_every=3)))
    assert len(same_either_way(p, 1 << 20, monkeypatch)[0]) == 600


@pytest.mark.parametrize("at", [0.3, 0.5, 0.9])
def test_corrupt_middle(tmp_path: Path, at: float, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(pcap_bytes(packets(random.Random(5), 3000, 1_700_000_000.0)))
    cut = int(len(data) * at)
    data[cut : cut + 64] = b"\xff" * 64
    p = tmp_path / "bad.pcap"
    p.write_bytes(bytes(data))
    same_either_way(p, 1 << 20, monkeypatch)


def test_lanes_are_used_on_a_large_chunk() -> None:
    rng = random.Random(6)
    data = pcap_bytes(packets(rng, 2000, 1_700_000_000.0))[24:]
    found = LaneFinder("<", 262144, 1 << 24).find(data, 0)
    assert found is not None
    cand, nxt, hdr = found
    assert hdr.size == cand.size and np.array_equal(nxt[:-1], cand[1:])
    assert cand[0] == 0 and int((nxt - cand).sum()) >= lanes.MIN_COVER * len(data)


def test_real_captures(captures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in sorted(captures.glob("*.pcap*"))[:30]:
        same_either_way(path, 256 << 10, monkeypatch)


def test_bad_records_inside_lanes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Zero-length records and wire lengths below caplen sit inside lanes: the lanes step over
    # them, the bulk check drops them and the careful step reports each one, as without lanes.
    pk = packets(random.Random(7), 3000, 1_700_000_000.0)
    wires = [len(f) for _, f in pk]
    for i in range(50, 3000, 97):
        pk[i] = (pk[i][0], b"")
        wires[i] = 0
    for i in range(70, 3000, 131):
        wires[i] = 10
    p = tmp_path / "bad.pcap"
    p.write_bytes(pcap_bytes(pk, wirelens=wires))
    frames, _, wire, report = same_either_way(p, 1 << 20, monkeypatch, lanes_used=True)
    assert len(frames) == 3000 - len(range(50, 3000, 97))
    kinds = {problem.message.split(" at byte")[0] for problem in report.problems}
    assert kinds == {"zero-length record", "record"}


def test_zeroed_stretch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stretch of zeros reads as zero-length records: it ends the lane (not 16 bytes a step).
    data = bytearray(pcap_bytes(packets(random.Random(8), 3000, 1_700_000_000.0)))
    cut = len(data) // 2
    data[cut : cut + 100_000] = bytes(100_000)
    p = tmp_path / "zeros.pcap"
    p.write_bytes(bytes(data))
    same_either_way(p, 1 << 20, monkeypatch)


def test_walk_from_the_middle_of_a_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    # The walk from any start (a record start or not) is the scan's, headers included.
    from spyglass.core.capfile import Problems
    from spyglass.core.pcapformat import _Pcap
    from spyglass.core.recordwalk import gather_headers

    pk = packets(random.Random(9), 3000, 1_700_000_000.0)
    data = pcap_bytes(pk)
    buf = data[24:]
    records = np.cumsum([0] + [16 + len(f) for _, f in pk]).tolist()
    rng = random.Random(10)
    starts = [0, 1, 17, records[1000], records[2000] + 3, records[2900]]
    starts += [rng.randrange(len(buf)) for _ in range(4)] + rng.sample(records[:-1], 4)

    used: list[bool] = []
    spy = recording_find(used)

    def walks(use_lanes: bool) -> list[tuple[object, ...]]:
        fmt = _Pcap(data[:24], Problems(ReadReport(Path("x"), "pcap", file_size=len(data))))
        out: list[tuple[object, ...]] = []
        with monkeypatch.context() as m:
            m.setattr(LaneFinder, "find", spy if use_lanes else lambda self, buf, start: None)
            for start in starts:
                w = fmt.walk(buf, start)
                rows = gather_headers(buf, w.pos, 16)
                assert w.rows is None or w.rows.tobytes() == rows.tobytes()
                b = fmt.batch(buf, w)
                ts = b.ts.tolist() if b is not None else []
                out.append((w.pos.tolist(), w.kind.tolist(), w.stop, w.reason, w.need, ts))
        return out

    assert walks(True) == walks(False)
    assert sum(used) >= 5  # the lanes took every record start far enough from the end


def test_full_scan_in_windows_finds_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full scan goes through a chunk a window at a time (so its work array stays small
    whatever the chunk): the same positions as comparing every byte at once."""
    from spyglass.core import recordwalk

    monkeypatch.setattr(recordwalk, "SCAN_WINDOW", 1000)
    rng = np.random.default_rng(7)
    buf = rng.integers(0, 8, 25_000, dtype=np.uint8).tobytes()
    arr = np.frombuffer(buf, np.uint8)
    scratch = recordwalk.Scratch()
    for lo, hi in [(0, 25_000), (3, 24_997), (999, 1001), (10, 10), (4_321, 20_000)]:
        for value in (0, 5):
            want = np.flatnonzero(arr[lo:hi] == value) + lo
            assert np.array_equal(scratch.find(buf, lo, hi, value), want)
    assert scratch._mask.size <= 1000 + (1 << 16)


def test_chain_keeps_what_some_candidate_points_at() -> None:
    from spyglass.core.recordwalk import Scratch

    rng = np.random.default_rng(8)
    for _ in range(50):
        start = int(rng.integers(0, 100))
        cand = np.unique(rng.integers(start, start + 5_000, 400)).astype(np.int64)
        nxt = cand + rng.integers(16, 200, cand.size)
        # What a mark per byte says: kept if some successor lands on it, or it is the start.
        marked = set(nxt.tolist())
        keep = np.array([c in marked for c in cand.tolist()])
        keep[0] |= cand[0] == start
        got_cand, got_nxt, brk = Scratch.chain(cand, nxt, start)
        assert np.array_equal(got_cand, cand[keep]) and np.array_equal(got_nxt, nxt[keep])
        assert np.array_equal(brk, np.append(np.flatnonzero(nxt[keep][:-1] != cand[keep][1:]),
                                             keep.sum() - 1))
