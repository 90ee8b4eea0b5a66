"""The household simulator: determinism, labels, dissection, rates, target size."""

from __future__ import annotations

import csv
import shutil
import struct
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from scapy.layers import dns as _dns  # noqa: F401 - binds UDP/53 to DNS
from scapy.layers import inet as _inet  # noqa: F401 - binds Ether to IP
from scapy.layers.dns import DNS
from scapy.layers.l2 import Ether

from spyglass.sim import profiles
from spyglass.sim.household import LABEL_FIELDS, SimSummary, simulate_household

REAL_LABELS = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "captures" / "labels.csv"
)


def _records(path: Path) -> list[tuple[float, bytes]]:
    """Every frame of a classic pcap (stdlib: scapy is too slow for 100k packets)."""
    data = path.read_bytes()
    assert struct.unpack("<I", data[:4])[0] == 0xA1B2C3D4
    out: list[tuple[float, bytes]] = []
    off = 24
    while off < len(data):
        sec, usec, cap, _wire = struct.unpack_from("<IIII", data, off)
        out.append((sec + usec / 1e6, data[off + 16 : off + 16 + cap]))
        off += 16 + cap
    return out


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimSummary, list[tuple[float, bytes]]]:
    out = tmp_path_factory.mktemp("sim") / "home.pcap"
    summary = simulate_household(out, duration_s=300.0, seed=7, speakers=6, others=5)
    return summary, _records(out)


def _labels(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = simulate_household(tmp_path / "a.pcap", duration_s=90.0, seed=3)
    b = simulate_household(tmp_path / "b.pcap", duration_s=90.0, seed=3)
    c = simulate_household(tmp_path / "c.pcap", duration_s=90.0, seed=4)
    assert a.pcap.read_bytes() == b.pcap.read_bytes()
    assert a.labels.read_text().replace("a.pcap", "x") == b.labels.read_text().replace(
        "b.pcap", "x"
    )
    assert a.pcap.read_bytes() != c.pcap.read_bytes()
    assert a.packets == len(_records(a.pcap))


def test_frames_in_time_order_and_inside_the_capture(
    house: tuple[SimSummary, list[tuple[float, bytes]]],
) -> None:
    summary, recs = house
    ts = [t for t, _ in recs]
    assert ts == sorted(ts)
    assert summary.packets == len(recs)
    assert ts[0] >= 1764000000.0 and ts[-1] < 1764000000.0 + summary.duration_s


def test_labels_file_matches_what_was_generated(
    house: tuple[SimSummary, list[tuple[float, bytes]]],
) -> None:
    summary, _ = house
    assert summary.labels == summary.pcap.with_name("home.labels.csv")
    header = summary.labels.read_text().splitlines()[0].split(",")
    assert header == LABEL_FIELDS
    if REAL_LABELS.is_file():
        assert header == REAL_LABELS.read_text().splitlines()[0].split(",")
    rows = _labels(summary.labels)
    speakers = [d for d in summary.devices if d["kind"] == "speaker"]
    assert [r["device_mac"] for r in rows] == [d["mac"] for d in speakers]
    assert {r["device_model"] for r in rows} == {m.label_model for m in profiles.SPEAKERS.values()}
    total = 0
    for row, dev in zip(rows, speakers, strict=True):
        windows = [w for w in row["event_windows"].split(";") if w]
        assert int(row["expected_uploads"]) == len(windows) == dev["uploads"]
        assert row["tolerance_s"] == "10" and row["source"] == "spyglass-simulator seed=7"
        assert row["license"] == "GPL-3.0-or-later" and row["file"] == "home.pcap"
        for w in windows:
            start, end = map(float, w.split("-"))
            assert 1764000000.0 < start < end < 1764000000.0 + summary.duration_s
        total += len(windows)
    assert total == summary.uploads >= 4  # every speaker that can upload does so early


def test_every_device_has_dhcp_arp_and_named_cloud_traffic(
    house: tuple[SimSummary, list[tuple[float, bytes]]],
) -> None:
    summary, recs = house
    hostnames: set[str] = set()
    answers: dict[str, set[str]] = defaultdict(set)
    arp_macs: set[str] = set()
    for _, raw in recs:
        if raw[12:14] == b"\x08\x06":
            arp_macs.add(raw[6:12].hex(":"))
            continue
        if len(raw) > 600 or raw[23] != 17:
            continue
        sport, dport = struct.unpack_from("!HH", raw, 34)
        if dport == 67:
            opts = raw[42 + 240 :]
            i = 0
            while i < len(opts) and opts[i] != 255:
                if opts[i] == 12:
                    hostnames.add(opts[i + 2 : i + 2 + opts[i + 1]].decode())
                i += 2 + opts[i + 1]
        elif sport == 53:
            dns = Ether(raw)[DNS]
            for k in range(dns.ancount):
                rr = dns.an[k]
                if rr.type == 1:
                    answers[dns.qd[0].qname.decode().rstrip(".")].add(rr.rdata)
    assert {d["hostname"] for d in summary.devices} <= hostnames
    assert {d["mac"] for d in summary.devices} <= arp_macs
    assert any(a.startswith("17.174.1.") for a in answers["guzzoni.apple.com"])
    alexa = answers["bob-dispatch-prod-na.amazon.com"] | answers["avs-alexa-14-na.amazon.com"]
    assert alexa and all(a.startswith(("52.94.", "52.119.", "52.46.")) for a in alexa)
    assert answers["www.google.com"]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_tshark_dissects_without_malformed_packets(
    house: tuple[SimSummary, list[tuple[float, bytes]]],
) -> None:
    summary, _ = house
    expert = subprocess.run(
        ["tshark", "-r", str(summary.pcap), "-q", "-z", "expert"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Malformed" not in expert
    assert "Errors (" not in expert and "Warnings (" not in expert, expert
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(summary.pcap),
            "-Y",
            "tls.handshake.type == 1 || mdns || ssdp",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "tls.handshake.extensions_server_name",
            "-e",
            "dns.txt",
            "-e",
            "http.server",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split("|")[0] for line in fields.splitlines()}
    assert "guzzoni.apple.com" in names
    assert names & {"bob-dispatch-prod-na.amazon.com", "avs-alexa-14-na.amazon.com"}
    assert "device-metrics-us.amazon.com" in names or "msmetrics.ws.sonos.com" in names
    assert "md=Google Nest Mini" in fields and "model=AudioAccessory1,1" in fields
    assert "Sonos/70.3-35220 (ZPS12)" in fields


def test_upload_rates_inside_the_modelled_ranges(
    house: tuple[SimSummary, list[tuple[float, bytes]]],
) -> None:
    summary, recs = house
    models = {d["mac"]: d["model"] for d in summary.devices}
    by_label = {m.label_model: m for m in profiles.SPEAKERS.values()}
    checked = 0
    for row in _labels(summary.labels):
        model = by_label[row["device_model"]]
        mac = bytes.fromhex(row["device_mac"].replace(":", ""))
        assert models[row["device_mac"]] == model.label_model
        for w in filter(None, row["event_windows"].split(";")):
            start, end = map(float, w.split("-"))
            per: dict[bytes, Counter[int]] = defaultdict(Counter)  # remote IP -> second -> bytes
            for ts, raw in recs:
                if (
                    start - 0.001 <= ts <= end + 0.001
                    and raw[6:12] == mac
                    and raw[12:14] == b"\x08\x00"
                ) and struct.unpack_from("!H", raw, 36)[0] == 443:
                    per[raw[30:34]][int(ts)] += len(raw)
            series = max(per.values(), key=lambda c: sum(c.values()))
            peak = max(series.values())
            profs = [p for p in (model.upload, model.misactivation) if p is not None]
            assert any(p.rate_Bps[0] * 0.9 <= peak <= p.rate_Bps[1] * 1.05 for p in profs), (
                row,
                peak,
            )
            if model.key.startswith("echo"):
                assert 4.0 <= end - start <= 6.0 * 1.6 + 4.0  # one turn, or a follow-up inside
            checked += 1
    assert checked == summary.uploads


def test_target_packets_within_ten_percent(tmp_path: Path) -> None:
    s = simulate_household(tmp_path / "t.pcap", target_packets=40_000, seed=2)
    assert 36_000 <= s.packets <= 44_000
    assert s.packets == len(_records(s.pcap))
    rows = _labels(s.labels)
    assert sum(int(r["expected_uploads"]) for r in rows) == s.uploads


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duration_s"):
        simulate_household(tmp_path / "x.pcap", duration_s=0)
    with pytest.raises(ValueError, match="device"):
        simulate_household(tmp_path / "x.pcap", speakers=0, others=0)
    with pytest.raises(ValueError, match="target_packets"):
        simulate_household(tmp_path / "x.pcap", target_packets=0)
