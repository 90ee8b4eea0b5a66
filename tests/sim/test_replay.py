"""Replay plans from the real captures: payload sizes, handshakes, names, address mapping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from spyglass.core.capfile import CaptureFormatError
from spyglass.core.pcapwrite import PcapWriter
from spyglass.sim.replay import LAB_POOL, plan_replay
from tests.netlab.lan import VENDOR_HOSTS

pytestmark = pytest.mark.captures

ECHO_MAC = "68:db:f5:90:19:64"
HOMEPOD_MAC = "d4:a3:3d:6b:1e:97"
CIC_MAC = "68:db:f5:c1:c0:01"


def tshark_payloads(path: Path, display_filter: str) -> list[int]:
    """tcp.len of the matching segments, each sequence number counted once (a retransmission
    repeats its sequence number)."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-o", "tcp.relative_sequence_numbers:FALSE",
         "-Y", display_filter, "-T", "fields", "-e", "tcp.seq", "-e", "tcp.len"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    seen: set[str] = set()
    sizes = []
    for line in out.splitlines():
        seq, n = line.split("\t")
        if seq not in seen:
            seen.add(seq)
            sizes.append(int(n))
    return sizes


def test_echo_upload_connection_matches_tshark(captures: Path) -> None:
    path = captures / "echodot3a_active.pcap"
    plan = plan_replay(path, ECHO_MAC)
    [conn] = [c for c in plan.connections if c.original_ip == "52.94.233.109"]
    flt = "ip.src==192.168.12.112 && ip.dst==52.94.233.109 && tcp.len>0"
    expected = tshark_payloads(path, flt)
    assert [n for _, n in plan.sends(conn.id, "up")] == expected
    assert sum(expected) == 212_882
    down = tshark_payloads(path, "ip.dst==192.168.12.112 && ip.src==52.94.233.109 && tcp.len>0")
    assert [n for _, n in plan.sends(conn.id, "down")] == down
    # It began before the capture: no SYN, opened before the replay's clock starts.
    assert conn.start is None and conn.end is None and not conn.tls
    assert (conn.proto, conn.remote_port, conn.local_port) == ("tcp", 443, 39638)


def test_echo_time_range_and_names(captures: Path) -> None:
    plan = plan_replay(captures / "echodot3a_active.pcap", ECHO_MAC, start=18, end=30)
    assert plan.duration == pytest.approx(12.0)
    assert all(0 <= s.t < 12 for s in plan.steps)
    assert [s.t for s in plan.steps] == sorted(s.t for s in plan.steps)
    http = next(c for c in plan.connections if c.remote_port == 80)
    # SYN at 20.0625 s and FIN at 20.0966 s after the first packet, kept as plan times.
    assert http.start == pytest.approx(2.0625, abs=1e-3)
    assert http.end == pytest.approx(2.0966, abs=1e-3)
    [(t, n)] = plan.sends(http.id, "up")
    assert t == pytest.approx(2.0810, abs=1e-3) and n == 179
    assert [(q.name, q.qtype) for q in plan.dns] == [("fireoscaptiveportal.com", 1)]
    assert plan.dns_names == {"fireoscaptiveportal.com": http.remote_ip}
    # No name the lab knows: both hosts get pool addresses, in order of first use.
    assert plan.addresses == {"52.55.98.56": "10.78.0.100", "52.94.233.109": "10.78.0.101"}


def test_scale_and_max_seconds(captures: Path) -> None:
    path = captures / "echodot3a_active.pcap"
    full = plan_replay(path, ECHO_MAC, start=18, end=30)
    half = plan_replay(path, ECHO_MAC, start=18, end=30, time_scale=0.5)
    assert half.duration == pytest.approx(6.0)
    assert [s.t for s in half.steps] == pytest.approx([s.t / 2 for s in full.steps], abs=1e-5)
    assert [s.nbytes for s in half.steps] == [s.nbytes for s in full.steps]
    capped = plan_replay(path, ECHO_MAC, start=18, max_seconds=3)
    assert capped.duration == pytest.approx(3.0)
    assert capped.steps == [s for s in full.steps if s.t < 3]


def test_homepod_tls_handshake_is_left_to_the_replay(captures: Path) -> None:
    path = captures / "homepod_FNT_S3E10.pcap"
    plan = plan_replay(path, HOMEPOD_MAC, start=104, end=121, known_addresses=VENDOR_HOSTS)
    [conn] = plan.connections
    assert (conn.tls, conn.sni, conn.local_port) == (True, "guzzoni.apple.com", 54748)
    assert conn.start == pytest.approx(0.6813, abs=1e-3)
    assert conn.handshake_segments > 0
    # The lab has an address for guzzoni.apple.com: the host gets it, and the DNS answers it.
    assert plan.addresses == {"17.174.1.5": VENDOR_HOSTS["guzzoni.apple.com"]}
    assert plan.dns_names["guzzoni.apple.com"] == VENDOR_HOSTS["guzzoni.apple.com"]
    # Asked before the range: the replay asks first.
    assert [q.t for q in plan.dns if q.name == "guzzoni.apple.com"] == [None]
    # Every replayed segment comes after the original handshake, which tshark sees end with
    # the client's first application-data record.
    flt = "tcp.srcport==54748 && tls.record.content_type==23 && tcp.len>0"
    first_app = tshark_first_time(path, flt) - 104
    assert min(t for t, _ in plan.sends(conn.id, "up")) == pytest.approx(first_app, abs=1e-3)


def tshark_first_time(path: Path, display_filter: str) -> float:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields",
         "-e", "frame.time_relative"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return float(out.split()[0])


def test_homepod_retransmissions_left_out(captures: Path) -> None:
    path = captures / "homepod_FNT_S3E10.pcap"
    plan = plan_replay(path, HOMEPOD_MAC, start=125, end=135)
    assert any("retransmitted" in n for n in plan.notes)
    [conn] = plan.connections
    # At 130.485 s the server's 46 + 31 bytes were captured twice, same sequence numbers.
    flt = "tcp.port==54734 && ip.src==17.248.138.83 && tcp.len>0 && frame.time_relative>125"
    assert tshark_payloads(path, flt) == [46, 31]
    assert [n for _, n in plan.sends(conn.id, "down")] == [46, 31]
    assert conn.start is None and conn.end == pytest.approx(5.485, abs=1e-3)  # server's FIN


def test_cic_voice_plan(captures: Path) -> None:
    plan = plan_replay(captures / "cic_echodot1_VOICE_VOLUMEOFF_1.pcap", CIC_MAC)
    [conn] = plan.connections
    assert (conn.original_ip, conn.remote_port, conn.local_port) == ("205.251.243.55", 443, 42900)
    assert plan.addresses == {"205.251.243.55": LAB_POOL[0]}
    assert plan.payload_bytes("up") == 22_524 and plan.payload_bytes("down") == 2_382
    assert plan.dns == [] and plan.dns_names == {}


def test_bad_input(captures: Path, tmp_path: Path) -> None:
    path = captures / "echodot3a_active.pcap"
    with pytest.raises(ValueError, match="not a MAC address"):
        plan_replay(path, "68:db:f5")
    with pytest.raises(ValueError, match="time range"):
        plan_replay(path, ECHO_MAC, start=30, end=20)
    with pytest.raises(ValueError, match="time_scale"):
        plan_replay(path, ECHO_MAC, time_scale=0)
    with pytest.raises(ValueError, match="no internet traffic"):
        plan_replay(path, "02:00:00:00:00:01")
    with pytest.raises(ValueError, match="no internet traffic"):
        plan_replay(path, ECHO_MAC, start=0, end=5)  # only LAN chatter there
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a capture at all")
    with pytest.raises(CaptureFormatError):
        plan_replay(junk, ECHO_MAC)
    empty = tmp_path / "empty.pcap"
    with PcapWriter(empty):
        pass
    with pytest.raises(ValueError, match="no packets"):
        plan_replay(empty, ECHO_MAC)


def test_pool_exhaustion_is_explained(captures: Path) -> None:
    with pytest.raises(ValueError, match="choose a shorter time range"):
        plan_replay(
            captures / "homepod_FNT_S3E10.pcap", HOMEPOD_MAC, pool=("10.78.0.100", "10.78.0.102")
        )
