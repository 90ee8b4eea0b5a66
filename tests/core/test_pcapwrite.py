"""PcapWriter: read back with scapy (and capinfos when present)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers import dns as _dns  # noqa: F401 - binds UDP/53 to DNS
from scapy.layers import inet as _inet  # noqa: F401 - binds Ether to IP
from scapy.layers.l2 import Ether
from scapy.utils import RawPcapReader, rdpcap

from spyglass.core.pcapwrite import PcapWriter
from spyglass.sim import craft
from spyglass.sim.flows import UdpFlow

T0 = 1764000000.0


def _frames() -> list[tuple[float, bytes]]:
    flow = UdpFlow(
        craft.mac("68:db:f5:00:00:01"),
        craft.mac("04:d4:c4:00:00:01"),
        craft.ip4("192.168.1.10"),
        craft.ip4("192.168.1.1"),
        40000,
        53,
    )
    return [
        (
            T0 + i * 0.123457 + 0.9999996 * (i == 3),
            flow.frame(True, craft.dns_query(i, f"h{i}.example.com")),
        )
        for i in range(6)
    ]


def test_roundtrip_with_scapy(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    frames = _frames()
    with PcapWriter(path) as w:
        for ts, f in frames:
            w.write(ts, f)
        w.write(T0 + 10, frames[0][1], wirelen=len(frames[0][1]) + 100)
    pkts = rdpcap(str(path))
    assert len(pkts) == 7
    for (ts, f), p in zip(frames, pkts, strict=False):
        assert abs(float(p.time) - ts) < 1e-6
        assert bytes(p) == f
        assert p.wirelen == len(f)
        assert p.haslayer("DNS")
    assert pkts[6].wirelen == len(frames[0][1]) + 100
    head = path.read_bytes()[:24]
    assert struct.unpack("<IHHiIII", head) == (0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def test_write_many_matches_write(tmp_path: Path) -> None:
    frames = _frames()
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    with PcapWriter(one) as w:
        for ts, f in frames:
            w.write(ts, f)
    with PcapWriter(many) as w:
        assert w.write_many(frames) == len(frames)
        assert w.count == len(frames)
    assert one.read_bytes() == many.read_bytes()


def test_nanosecond_snaplen_and_file_object(tmp_path: Path) -> None:
    buf = io.BytesIO()
    frame = bytes(range(200))
    with PcapWriter(buf, nanosecond=True, snaplen=64, linktype=101) as w:
        w.write(T0 + 0.123456789, frame)
        w.write_many([(T0 + 1.5, frame)])
    path = tmp_path / "ns.pcap"
    path.write_bytes(buf.getvalue())
    with RawPcapReader(str(path)) as reader:
        recs = list(reader)
    assert len(recs) == 2
    data, meta = recs[0]
    assert data == frame[:64]
    assert meta.caplen == 64 and meta.wirelen == 200
    assert meta.sec == int(T0) and abs(meta.usec - 123456789) <= 256  # float precision near 1.7e9
    assert struct.unpack("<I", buf.getvalue()[:4])[0] == 0xA1B23C4D


def test_microsecond_carry_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    with PcapWriter(path) as w:
        w.write(T0 + 0.9999997, b"\0" * 60)
        w.write_many([(T0 + 1.9999999, b"\0" * 60)])
        with pytest.raises(ValueError, match="timestamp"):
            w.write(-1.0, b"\0" * 60)
        with pytest.raises(ValueError, match="timestamp"):
            w.write_many([(2.0**40, b"\0" * 60)])
        with pytest.raises(ValueError, match="wirelen"):
            w.write(T0, b"\0" * 60, wirelen=10)
    with RawPcapReader(str(path)) as reader:
        recs = list(reader)
    assert [(m.sec, m.usec) for _, m in recs] == [(int(T0) + 1, 0), (int(T0) + 2, 0)]
    with pytest.raises(ValueError, match="closed"):
        w.write(T0, b"\0")
    with pytest.raises(ValueError, match="snaplen"):
        PcapWriter(io.BytesIO(), snaplen=0)


def test_scapy_reference_frames_roundtrip(tmp_path: Path) -> None:
    ref = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="68:db:f5:00:00:01") / (b"x" * 50))
    path = tmp_path / "r.pcap"
    with PcapWriter(path) as w:
        w.write(T0, ref)
    assert bytes(rdpcap(str(path))[0]) == ref


@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos not installed")
def test_capinfos_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "ci.pcap"
    with PcapWriter(path) as w:
        w.write_many(_frames())
    out = subprocess.run(
        ["capinfos", "-c", "-M", str(path)], capture_output=True, text=True, check=True
    )
    assert "Number of packets:   6" in out.stdout or "Number of packets: 6" in out.stdout
