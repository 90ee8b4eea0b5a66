"""Property tests: random and mutated frames and files never crash the reader or the decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, CookedLinux, Dot1Q, Ether

from spyglass.core.capfile import CaptureFormatError, open_capture
from spyglass.core.decode import decode
from spyglass.core.frames import Decoded, FrameBatch
from tests.core.test_capfile import check_batch, ng_epb, ng_idb, ng_shb, ng_spb, pcap_bytes

LINKTYPES = [0, 1, 101, 113, 147, 228, 229, 276]
SEEDS: list[tuple[int, bytes]] = [
    (1, bytes(Ether() / IP(options=b"\x01\x01\x01\x00") / TCP(options=[("MSS", 1460)]) / b"abc")),
    (1, bytes(Ether() / Dot1Q(vlan=3) / Dot1Q(vlan=4) / IP() / UDP() / (b"x" * 30))),
    (1, bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / TCP())),
    (1, bytes(Ether() / IP(frag=3) / ICMP() / (b"y" * 20))),
    (1, bytes(Ether() / ARP())),
    (113, bytes(CookedLinux(lladdrlen=6) / IPv6() / UDP() / b"z")),
    (101, bytes(IP() / UDP() / (b"q" * 9))),
]
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def batch_of(frames: list[tuple[int, bytes, int]], gap: int) -> FrameBatch:
    """Frames packed in one buffer, ``gap`` junk bytes before each, as a reader would hand out."""
    buf = bytearray()
    offs, caps, wires = [], [], []
    for _, data, extra in frames:
        buf += b"\xee" * gap
        offs.append(len(buf))
        caps.append(len(data))
        wires.append(len(data) + extra)
        buf += data
    n = len(frames)
    return FrameBatch(
        bytes(buf),
        np.array(offs, np.int64),
        np.array(caps, np.int32),
        np.array(wires, np.int32),
        np.arange(n, dtype=np.float64),
        np.array([lt for lt, _, _ in frames], np.uint16),
    )


def check_decoded(batch: FrameBatch, d: Decoded) -> None:
    n = len(batch)
    assert len(d) == n
    for name in d.__slots__:
        assert getattr(d, name).shape == (n,), name
    assert set(np.unique(d.ipver).tolist()) <= {0, 4, 6}
    assert (d.payload_cap >= 0).all() and (d.payload_cap <= d.payload_len).all()
    assert (d.payload_len >= 0).all()
    has = d.payload_cap > 0
    assert (d.payload_off[has] >= batch.offset[has]).all()
    assert (d.payload_off + d.payload_cap <= batch.offset + batch.caplen).all()
    bad = d.malformed
    assert (d.sport[bad] == 0).all() and (d.payload_len[bad] == 0).all()
    assert (d.ipver[d.ethertype == 0x0806] == 0).all()


frames_st = st.lists(
    st.tuples(st.sampled_from(LINKTYPES), st.binary(min_size=1, max_size=120), st.integers(0, 64)),
    min_size=1,
    max_size=20,
)


@FUZZ
@given(frames=frames_st, gap=st.integers(0, 3))
def test_random_frames(frames: list[tuple[int, bytes, int]], gap: int) -> None:
    batch = batch_of(frames, gap)
    check_decoded(batch, decode(batch))


@FUZZ
@given(
    picks=st.lists(
        st.tuples(
            st.integers(0, len(SEEDS) - 1),
            st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=4),
            st.integers(1, 200),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_mutated_frames(picks: list[tuple[int, list[tuple[int, int]], int]]) -> None:
    frames = []
    for seed, flips, cut in picks:
        lt, data = SEEDS[seed]
        raw = bytearray(data)
        for at, bit in flips:
            raw[at % len(raw)] ^= 1 << bit
        frames.append((lt, bytes(raw[:cut]), len(raw) - min(cut, len(raw))))
    batch = batch_of(frames, 0)
    check_decoded(batch, decode(batch))


def _sample_files() -> list[bytes]:
    packets = [(1_700_000_000 + i * 0.5, data) for i, (_, data) in enumerate(SEEDS)]
    ng = ng_shb() + ng_idb(1) + ng_idb(113, tsresol=9)
    ng += b"".join(ng_epb(i % 2, 10**15 + i, data) for i, (_, data) in enumerate(SEEDS))
    ng += ng_spb(SEEDS[0][1])
    return [pcap_bytes(packets), pcap_bytes(packets, nano=True, big=True), ng]


FILES = _sample_files()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "f.cap"


def read_checked(path: Path, chunk: int) -> None:
    try:
        reader = open_capture(path, chunk_bytes=chunk)
    except CaptureFormatError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    total = 0
    for batch in reader:
        check_batch(batch)
        check_decoded(batch, decode(batch))
        total += len(batch)
    report = reader.report
    assert report.packets == total
    assert 0 <= report.bytes_read <= report.file_size
    for problem in report.problems:
        assert 0 <= problem.offset <= report.file_size and "\n" not in problem.message


@FUZZ
@given(
    which=st.integers(0, len(FILES) - 1),
    flips=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 7)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 2000)),
    chunk=st.sampled_from([256, 1000, 1 << 20]),
)
def test_mutated_files(
    scratch: Path, which: int, flips: list[tuple[int, int]], cut: int | None, chunk: int
) -> None:
    data = bytearray(FILES[which])
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    scratch.write_bytes(bytes(data[:cut] if cut is not None else data))
    read_checked(scratch, chunk)


@FUZZ
@given(head=st.sampled_from([b"", FILES[0][:24], FILES[2][:48]]), tail=st.binary(max_size=600))
def test_random_file_bodies(scratch: Path, head: bytes, tail: bytes) -> None:
    scratch.write_bytes(head + tail)
    read_checked(scratch, 256)
