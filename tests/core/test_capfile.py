"""The pcap/pcapng reader: formats, chunk boundaries, bad input, and the real captures."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from spyglass.core.capfile import (
    CaptureFormatError,
    CaptureReader,
    ReadReport,
    detect_format,
    open_capture,
)
from spyglass.core.frames import LINKTYPE_ETHERNET, LINKTYPE_RAW, FrameBatch

# ---- builders (also used by the decoder and fuzz tests) -------------------------------------

Packet = tuple[float, bytes]  # (timestamp, frame)


def pcap_bytes(
    packets: Sequence[Packet],
    *,
    linktype: int = LINKTYPE_ETHERNET,
    nano: bool = False,
    big: bool = False,
    snaplen: int = 262144,
    wirelens: Sequence[int] | None = None,
) -> bytes:
    o = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    scale = 10**9 if nano else 10**6
    for i, (ts, frame) in enumerate(packets):
        ticks = round(ts * scale)
        wire = wirelens[i] if wirelens is not None else len(frame)
        out.append(struct.pack(o + "IIII", ticks // scale, ticks % scale, len(frame), wire))
        out.append(frame)
    return b"".join(out)


def ng_block(btype: int, body: bytes, o: str = "<") -> bytes:
    body += bytes(-len(body) & 3)
    n = len(body) + 12
    return struct.pack(o + "II", btype, n) + body + struct.pack(o + "I", n)


def ng_shb(o: str = "<") -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1), o)


def ng_idb(linktype: int, *, tsresol: int | None = None, tsoffset: int = 0, o: str = "<") -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(o + "HH", 9, 1) + bytes([tsresol, 0, 0, 0])
    if tsoffset:
        opts += struct.pack(o + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(o + "HH", 0, 0)
    return ng_block(1, struct.pack(o + "HHI", linktype, 0, 262144) + opts, o)


def ng_epb(iface: int, ticks: int, frame: bytes, *, wire: int | None = None, o: str = "<") -> bytes:
    wl = len(frame) if wire is None else wire
    head = struct.pack(o + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(frame), wl)
    return ng_block(6, head + frame, o)


def ng_spb(frame: bytes, o: str = "<") -> bytes:
    return ng_block(3, struct.pack(o + "I", len(frame)) + frame, o)


def frame_of(n: int, tag: int = 0) -> bytes:
    """A recognisable frame: tag byte then a counting pattern."""
    return bytes([tag & 0xFF]) + bytes((i * 7 + tag) & 0xFF for i in range(n - 1))


def read_all(path: Path, chunk: int = 4 << 20) -> tuple[list[bytes], np.ndarray, ReadReport]:
    reader = open_capture(path, chunk_bytes=chunk)
    frames: list[bytes] = []
    stamps: list[np.ndarray] = []
    for batch in reader:
        check_batch(batch)
        frames += [
            batch.buf[o : o + c]
            for o, c in zip(batch.offset.tolist(), batch.caplen.tolist(), strict=True)
        ]
        stamps.append(batch.ts)
    ts = np.concatenate(stamps) if stamps else np.zeros(0)
    return frames, ts, reader.report


def check_batch(batch: FrameBatch) -> None:
    n = len(batch)
    assert n > 0
    for arr in (batch.caplen, batch.wirelen, batch.ts, batch.linktype):
        assert arr.shape == (n,)
    assert (batch.offset >= 0).all()
    assert (batch.offset + batch.caplen <= len(batch.buf)).all()
    assert (batch.caplen > 0).all()
    assert (batch.wirelen >= batch.caplen).all()


def write(tmp_path: Path, data: bytes, name: str = "f.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


PACKETS = [
    (1_700_000_000 + i * 0.25 + 1e-6 * i, frame_of(40 + (i * 37) % 300, i)) for i in range(60)
]


# ---- classic pcap ---------------------------------------------------------------------------


@pytest.mark.parametrize("nano", [False, True])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("chunk", [256, 1000, 4 << 20])
def test_pcap_round_trip(tmp_path: Path, nano: bool, big: bool, chunk: int) -> None:
    path = write(tmp_path, pcap_bytes(PACKETS, nano=nano, big=big))
    frames, ts, report = read_all(path, chunk)
    assert frames == [f for _, f in PACKETS]
    np.testing.assert_allclose(ts, [t for t, _ in PACKETS], rtol=0, atol=2e-6 if not nano else 1e-6)
    assert report.packets == len(PACKETS)
    assert report.problems == [] and not report.cut_short and not report.stopped_early
    assert report.bytes_read == report.file_size == path.stat().st_size
    assert report.format == "pcap"


def test_pcap_nanosecond_precision(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes([(1_700_000_000.123456789, frame_of(60))], nano=True))
    _, ts, _ = read_all(path)
    assert abs(ts[0] - 1_700_000_000.123456789) < 1e-6
    assert int(round((ts[0] % 1) * 1e9)) in range(123456700, 123456900)


def test_record_larger_than_chunk(tmp_path: Path) -> None:
    packets = [(1.0, frame_of(100)), (2.0, frame_of(60000, 3)), (3.0, frame_of(70))]
    path = write(tmp_path, pcap_bytes(packets))
    frames, _, report = read_all(path, chunk=4096)
    assert frames == [f for _, f in packets]
    assert report.problems == []


def test_snaplen_cut_is_legal(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes(PACKETS[:3], snaplen=96, wirelens=[1514, 1514, 1514]))
    reader = open_capture(path)
    batch = next(iter(reader))
    assert batch.wirelen.tolist() == [1514] * 3
    assert reader.report.problems == []


def test_linktype_and_progress(tmp_path: Path) -> None:
    path = write(tmp_path, pcap_bytes(PACKETS, linktype=LINKTYPE_RAW))
    reader = CaptureReader(path, chunk_bytes=512)
    assert reader.file_size == path.stat().st_size
    seen = []
    for batch in reader:
        assert (batch.linktype == LINKTYPE_RAW).all()
        seen.append(reader.bytes_read)
    assert seen == sorted(seen) and seen[-1] == reader.file_size
    # A second iteration starts again from the beginning.
    assert sum(len(b) for b in reader) == len(PACKETS)


def test_detect_format() -> None:
    assert detect_format(b"\xd4\xc3\xb2\xa1rest") == "pcap"
    assert detect_format(b"\xa1\xb2\x3c\x4d") == "pcap"
    assert detect_format(b"\x0a\x0d\x0d\x0a") == "pcapng"
    assert detect_format(b"GIF8") is None
    assert detect_format(b"") is None


# ---- bad pcap input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"GIF89a" + bytes(100), "not a pcap"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "cut short"),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00XXXX" + bytes(16), "byte-order"),
    ],
)
def test_unusable_files_raise(tmp_path: Path, data: bytes, words: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(CaptureFormatError) as info:
        open_capture(path)
    assert info.value.offset == 0 and words in info.value.reason
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_raises_format_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureFormatError, match="cannot read"):
        open_capture(tmp_path / "nope.pcap")


def test_header_only_pcap_is_empty(tmp_path: Path) -> None:
    frames, _, report = read_all(write(tmp_path, pcap_bytes([])))
    assert frames == [] and report.problems == [] and report.packets == 0


@pytest.mark.parametrize("cut", [3, 16, 20])  # inside a record header, just after it, in data
def test_truncated_pcap_keeps_what_came_before(tmp_path: Path, cut: int) -> None:
    data = pcap_bytes(PACKETS[:10])
    last = len(data) - 16 - len(PACKETS[9][1])  # where the 10th record starts
    path = write(tmp_path, data[: last + cut])
    for chunk in (256, 4 << 20):
        frames, _, report = read_all(path, chunk)
        assert frames == [f for _, f in PACKETS[:9]]
        assert report.cut_short and not report.stopped_early
        (problem,) = report.problems
        assert problem.offset == last and "file ends inside the record" in problem.message


def test_absurd_caplen_stops_with_offset(tmp_path: Path) -> None:
    data = pcap_bytes(PACKETS[:5])
    garbage = struct.pack("<IIII", 1_700_000_100, 0, 0x7FFF0000, 0x7FFF0000) + bytes(64)
    path = write(tmp_path, data + garbage + pcap_bytes(PACKETS[5:8])[24:])
    frames, _, report = read_all(path)
    assert frames == [f for _, f in PACKETS[:5]]
    assert report.stopped_early and not report.cut_short
    (problem,) = report.problems
    assert problem.offset == len(data)
    assert "claims" in problem.message and "corrupt" in problem.message


def test_caplen_over_twice_snaplen_is_corrupt(tmp_path: Path) -> None:
    data = pcap_bytes([(1.0, frame_of(60)), (2.0, frame_of(500))], snaplen=128)
    frames, _, report = read_all(write(tmp_path, data))
    assert len(frames) == 1 and report.stopped_early
    assert "snaplen 128" in report.problems[0].message


def test_zero_length_records_are_skipped(tmp_path: Path) -> None:
    packets = [(1.0, frame_of(60)), (2.0, b""), (3.0, b""), (4.0, frame_of(61))]
    frames, _, report = read_all(write(tmp_path, pcap_bytes(packets)))
    assert frames == [packets[0][1], packets[3][1]]
    (problem,) = report.problems
    assert problem.offset == 24 + 16 + 60
    assert "zero-length" in problem.message and "2 times" in problem.message
    assert not report.stopped_early


def test_wirelen_below_caplen_is_kept_and_reported(tmp_path: Path) -> None:
    data = pcap_bytes(PACKETS[:3], wirelens=[len(PACKETS[0][1]), 10, len(PACKETS[2][1])])
    reader = open_capture(write(tmp_path, data))
    batch = next(iter(reader))
    assert batch.wirelen.tolist() == batch.caplen.tolist()
    (problem,) = reader.report.problems
    assert "wire length 10" in problem.message


def test_garbage_after_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    data = pcap_bytes([]) + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    frames, _, report = read_all(write(tmp_path, data))
    assert report.problems, "garbage must be reported"
    assert report.stopped_early or report.cut_short


# ---- pcapng --------------------------------------------------------------------------------


def test_pcapng_interfaces_resolutions_and_sections(tmp_path: Path) -> None:
    f = [frame_of(60 + i, i) for i in range(8)]
    data = b"".join(
        [
            ng_shb(),
            ng_idb(LINKTYPE_ETHERNET),  # default µs
            ng_block(4, b"\x01\x00\x08\x00" + bytes(8)),  # a name resolution block: skipped
            ng_idb(LINKTYPE_RAW, tsresol=9, tsoffset=100),  # ns, plus 100 s
            ng_epb(0, 1_700_000_000_500_000, f[0]),
            ng_epb(1, 1_700_000_000_250_000_000, f[1]),
            ng_spb(f[2]),  # takes the last timestamp
            ng_block(5, bytes(20)),  # interface statistics: skipped
            ng_block(0x40000BAD, b"custom"),
            # A big-endian second section, interface with a 2^-20 s resolution.
            ng_shb(">"),
            ng_idb(LINKTYPE_ETHERNET, tsresol=0x80 | 20, o=">"),
            ng_epb(0, (1_700_000_123 << 20) + (1 << 19), f[3], o=">"),
            ng_spb(f[4], o=">"),
        ]
    )
    path = write(tmp_path, data, "x.pcapng")
    for chunk in (256, 4 << 20):
        reader = open_capture(path, chunk_bytes=chunk)
        batches = list(reader)
        assert reader.report.problems == [] and reader.report.format == "pcapng"
        frames = [
            b.buf[o : o + c] for b in batches for o, c in zip(b.offset, b.caplen, strict=True)
        ]
        assert frames == f[:5]
        ts = np.concatenate([b.ts for b in batches])
        np.testing.assert_allclose(
            ts,
            [1_700_000_000.5, 1_700_000_100.25, 1_700_000_100.25, 1_700_000_123.5, 1_700_000_123.5],
            rtol=0,
            atol=1e-6,
        )
        links = np.concatenate([b.linktype for b in batches]).tolist()
        eth, raw = LINKTYPE_ETHERNET, LINKTYPE_RAW
        assert links == [eth, raw, eth, eth, eth]


def test_pcapng_obsolete_packet_block(tmp_path: Path) -> None:
    head = struct.pack("<HHIIII", 0, 0, 0, 1_000_000, 60, 70)
    data = ng_shb() + ng_idb(LINKTYPE_ETHERNET) + ng_block(2, head + frame_of(60))
    reader = open_capture(write(tmp_path, data, "p.pcapng"))
    (batch,) = list(reader)
    assert batch.ts.tolist() == [1.0] and batch.wirelen.tolist() == [70]
    assert reader.report.problems == []


def _ng_file(n: int = 6) -> tuple[bytes, list[int]]:
    """A pcapng of ``n`` packets and the byte offset of each EPB."""
    parts = [ng_shb(), ng_idb(LINKTYPE_ETHERNET)]
    starts = []
    for i in range(n):
        starts.append(sum(map(len, parts)))
        parts.append(ng_epb(0, 1_000_000 * (i + 1), frame_of(50 + i, i)))
    return b"".join(parts), starts


def test_pcapng_trailing_length_mismatch_stops(tmp_path: Path) -> None:
    data, starts = _ng_file()
    bad = bytearray(data)
    end3 = starts[4] - 4
    bad[end3 : end3 + 4] = struct.pack("<I", 999)
    frames, _, report = read_all(write(tmp_path, bytes(bad), "t.pcapng"))
    assert len(frames) == 3 and report.stopped_early
    (problem,) = report.problems
    assert problem.offset == starts[3] and "trailing length" in problem.message


def test_pcapng_length_not_multiple_of_four(tmp_path: Path) -> None:
    data, starts = _ng_file()
    bad = bytearray(data)
    struct.pack_into("<I", bad, starts[2] + 4, 70)
    frames, _, report = read_all(write(tmp_path, bytes(bad), "m.pcapng"))
    assert len(frames) == 2 and report.stopped_early
    assert report.problems[0].offset == starts[2]
    assert "multiple of 4" in report.problems[0].message


def test_pcapng_unknown_interface_is_skipped(tmp_path: Path) -> None:
    data, starts = _ng_file()
    bad = bytearray(data)
    struct.pack_into("<I", bad, starts[1] + 8, 7)
    frames, _, report = read_all(write(tmp_path, bytes(bad), "i.pcapng"))
    assert len(frames) == 5 and not report.stopped_early
    (problem,) = report.problems
    assert problem.offset == starts[1] and "interface 7" in problem.message


def test_pcapng_caplen_beyond_block_is_skipped(tmp_path: Path) -> None:
    data, starts = _ng_file()
    bad = bytearray(data)
    struct.pack_into("<I", bad, starts[4] + 20, 5000)
    frames, _, report = read_all(write(tmp_path, bytes(bad), "c.pcapng"))
    assert len(frames) == 5
    assert report.problems[0].offset == starts[4] and "5000" in report.problems[0].message


@pytest.mark.parametrize("chunk", [256, 4 << 20])
def test_pcapng_truncated(tmp_path: Path, chunk: int) -> None:
    data, starts = _ng_file()
    frames, _, report = read_all(write(tmp_path, data[: starts[5] + 30], "c.pcapng"), chunk)
    assert len(frames) == 5 and report.cut_short
    assert report.problems[0].offset == starts[5]


# ---- the real captures ----------------------------------------------------------------------

KNOWN_COUNTS = {
    "echodot3a_active.pcap": 2778,
    "homepod_FNT_S3E10.pcap": 4257,
    "sean_kennedy__alexa_5_40s.pcap": 2780,
    "haipeng_li__flip_a_coin_5_30s.pcap": 861,
    "cic_echodot1_LAN_VOLUMEON_1.pcap": 23,
    "cic_sonosone_ALEXA_PLAY_2.pcap": 1428,
}


def _capinfos_counts(files: list[Path]) -> dict[str, int]:
    exe = shutil.which("capinfos")
    if exe is None:
        return dict(KNOWN_COUNTS)
    out = subprocess.run(
        [exe, "-c", "-M", "-T", "-r", *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    counts = {}
    for line in out.splitlines():
        name, _, value = line.rpartition("\t")
        if value.isdigit():
            counts[Path(name).name] = int(value)
    return counts


def test_real_captures_read_cleanly(captures: Path) -> None:
    files = sorted(captures.glob("*.pcap*"))
    assert files
    counts = _capinfos_counts(files)
    for name, count in KNOWN_COUNTS.items():
        assert counts[name] == count
    for path in files:
        frames, ts, report = read_all(path, chunk=64 << 10)
        assert report.problems == [], (path.name, report.problems)
        assert not report.cut_short and not report.stopped_early
        if path.name in counts:
            assert len(frames) == counts[path.name], path.name
        assert (np.diff(ts) > -1).all()  # roughly ordered, sane timestamps
        assert (ts > 1.4e9).all() and (ts < 2e9).all()


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("name", ["homepod_FNT_S3E10.pcap", "cic_echospot_VOICE_VOLUMEON_1.pcap"])
def test_real_capture_frames_match_tshark(captures: Path, name: str) -> None:
    path = captures / name
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=,"]
        + ["-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.cap_len"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    want = np.array([[float(x) for x in line.split(",")] for line in out])
    reader = open_capture(path)
    batches = list(reader)
    ts = np.concatenate([b.ts for b in batches])
    np.testing.assert_allclose(ts, want[:, 0], rtol=0, atol=2e-6)
    assert np.concatenate([b.wirelen for b in batches]).tolist() == want[:, 1].astype(int).tolist()
    assert np.concatenate([b.caplen for b in batches]).tolist() == want[:, 2].astype(int).tolist()


# ---- the speculative walk: anchors that change, false candidates ---------------------------


@pytest.mark.parametrize("chunk", [512, 4 << 20])
def test_pcap_timestamp_top_byte_changes(tmp_path: Path, chunk: int) -> None:
    # Seconds cross 0x65000000 mid-file: the byte the fast walk looks for changes.
    packets = [(0x64FFFFF0 + i * 0.7, frame_of(60 + i % 50, i)) for i in range(80)]
    frames, ts, report = read_all(write(tmp_path, pcap_bytes(packets)), chunk)
    assert frames == [f for _, f in packets] and report.problems == []
    np.testing.assert_allclose(ts, [t for t, _ in packets], atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk", [512, 4 << 20])
def test_pcapng_timestamp_high_word_changes(tmp_path: Path, chunk: int) -> None:
    # µs ticks whose high word changes in its second byte mid-file (every ~12 days).
    base = (0x00060AFF << 32) + 0xFFFF0000
    step = 1 << 36
    parts = [ng_shb(), ng_idb(LINKTYPE_ETHERNET)]
    frames = [frame_of(60 + i % 40, i) for i in range(60)]
    parts += [ng_epb(0, base + i * step, f) for i, f in enumerate(frames)]
    got, ts, report = read_all(write(tmp_path, b"".join(parts), "h.pcapng"), chunk)
    assert got == frames and report.problems == []
    np.testing.assert_allclose(ts, [(base + i * step) / 1e6 for i in range(60)], rtol=1e-15)


def test_frames_that_look_like_headers(tmp_path: Path) -> None:
    # Frame data full of fake record headers pointing at each other must not fool the walk.
    t = 1_700_000_000
    fake = b"".join(struct.pack("<IIII", t, 0, 16, 16) for _ in range(8))
    packets = [(t + i, fake[: 16 * (1 + i % 8)] + frame_of(20, i)) for i in range(50)]
    for chunk in (300, 4 << 20):
        frames, _, report = read_all(write(tmp_path, pcap_bytes(packets)), chunk)
        assert frames == [f for _, f in packets] and report.problems == []
    ng_fake = ng_epb(0, 5, b"abcd") * 4
    parts = [ng_shb(), ng_idb(LINKTYPE_ETHERNET)]
    parts += [ng_epb(0, 10**6 * i, ng_fake[: 36 * (i % 4)] + frame_of(30, i)) for i in range(40)]
    frames, _, report = read_all(write(tmp_path, b"".join(parts), "f.pcapng"))
    assert len(frames) == 40 and report.problems == []


def test_memory_is_bounded_by_the_chunk(tmp_path: Path) -> None:
    # Every batch holds one chunk (and a little more, for the record crossing its end),
    # however long the file: memory does not grow with it.
    path = write(tmp_path, pcap_bytes(PACKETS * 20))
    reader = open_capture(path, chunk_bytes=4096)
    sizes = [len(batch.buf) for batch in reader]
    assert sum(1 for _ in sizes) > 10 and max(sizes) <= 4096 + 2048
    assert reader.report.packets == len(PACKETS) * 20
