"""The whole engine on real captures: devices, names, flows, series, uploads match tshark."""

from __future__ import annotations

from pathlib import Path

import pytest

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core.analyze import analyze_file
from spyglass.core.capfile import open_capture
from spyglass.core.pipeline import Pipeline


def test_echo_dot_activation(captures: Path) -> None:
    r = analyze_file(captures / "echodot3a_active.pcap", vendor_lookup=vendor_for_mac)
    (up,) = r.uploads
    assert up.device_mac == "68:db:f5:90:19:64"
    assert up.remote_ip == "52.94.233.109" and up.proto == "tcp" and up.port == 443
    assert up.assistant == "alexa"
    assert 4.0 < up.duration < 6.5
    assert 150_000 < up.bytes_up < 260_000
    assert up.peak_bps >= 30_000
    assert up.evidence and 0.5 <= up.confidence <= 0.99
    dev = {d.mac: d for d in r.devices}["68:db:f5:90:19:64"]
    assert dev.vendor and "Amazon" in dev.vendor
    assert "192.168.12.112" in dev.ips
    # tshark -z conv,ip: 192.168.12.112 <-> 52.94.233.109: 217 frames / 224 kB out, 258 in.
    (flow,) = [f for f in r.flows if f.remote_ip == "52.94.233.109"]
    assert (flow.packets_up, flow.packets_down) == (217, 258)
    # The per-second series add up to the flows, second by second.
    series_up = sum(p.bytes_up for p in r.series if p.remote_ip == "52.94.233.109")
    assert series_up == flow.bytes_up
    names = {(e.ip, e.name) for e in r.endpoint_names}
    assert ("52.55.98.56", "fireoscaptiveportal.com") in names


def test_homepod_names_and_identity(captures: Path) -> None:
    r = analyze_file(captures / "homepod_FNT_S3E10.pcap", vendor_lookup=vendor_for_mac)
    dev = {d.mac: d for d in r.devices}["d4:a3:3d:6b:1e:97"]
    assert dev.model == "Apple HomePod" and dev.assistant == "siri" and dev.kind == "speaker"
    assert dev.evidence
    by_source = {(e.ip, e.source): e.name for e in r.endpoint_names}
    assert by_source[("17.174.1.5", "sni")] == "guzzoni.apple.com"
    assert len(r.uploads) == 2
    assert all(u.destination == "guzzoni.apple.com" for u in r.uploads)
    assert all(any("voice endpoint" in e for e in u.evidence) for u in r.uploads)
    # The other Apple device (a phone or Mac) is never reported as uploading.
    assert {u.device_mac for u in r.uploads} == {"d4:a3:3d:6b:1e:97"}


def test_endpoint_names_are_those_of_contacted_addresses(captures: Path) -> None:
    """The HomePod capture's devices resolved 40 names and contacted the addresses of 15: the
    result lists those 15; the others stay in the pipeline's name book, which the result
    keeps."""
    r = analyze_file(captures / "homepod_FNT_S3E10.pcap", vendor_lookup=vendor_for_mac)
    assert r.pipeline is not None
    book = r.pipeline.names.entries()
    contacted = {(f.device_mac, f.remote_ip) for f in r.flows}
    assert r.endpoint_names == [e for e in book if (e.device_mac, e.ip) in contacted]
    assert 0 < len(r.endpoint_names) < len(book)


@pytest.mark.parametrize("chunk", [1 << 12, 1 << 16, 4 << 20])
def test_batch_size_does_not_change_results(captures: Path, chunk: int) -> None:
    """Streaming: any batching of the same packets yields the same uploads and flows."""
    path = captures / "sean_kennedy__what_time_is_it_5_0_18_31_47_58_capture.pcap"
    pipe = Pipeline(vendor_lookup=vendor_for_mac)
    for batch in open_capture(path, chunk_bytes=chunk):
        pipe.feed(batch)
    pipe.flush()
    ups = [(u.start, u.end, u.bytes_up) for u in pipe.uploads()]
    ref = analyze_file(path, vendor_lookup=vendor_for_mac)
    assert ups == [(u.start, u.end, u.bytes_up) for u in ref.uploads]
    assert len(ups) == 5
    assert sum(f.bytes_up for f in pipe.flows()) == sum(f.bytes_up for f in ref.flows)


def test_lan_override_changes_what_is_remote(captures: Path) -> None:
    path = captures / "echodot3a_active.pcap"
    # Declaring only a foreign range as LAN: the speaker's private address is now "remote" and
    # its traffic to the cloud is internet-to-internet, so nothing is attributed to it.
    r = analyze_file(path, lan=["10.99.0.0/16"])
    assert r.uploads == []
    with pytest.raises(ValueError, match="not-a-cidr"):
        Pipeline(lan=["not-a-cidr"])


def test_device_cap_bounds_a_mac_flood(captures: Path) -> None:
    """Past the cap, new MACs are counted and turned away; known devices are still analysed."""
    path = captures / "echodot3a_active.pcap"
    pipe = Pipeline(vendor_lookup=vendor_for_mac)
    pipe.inventory.max_devices = 1
    for batch in open_capture(path):
        pipe.feed(batch)
    pipe.flush()
    assert len(pipe.devices()) == 1
    assert pipe.inventory.refused > 0 and pipe.stats.refused_packets > 0
    kept = pipe.devices()[0].mac
    assert {f.device_mac for f in pipe.flows()} <= {kept}
    assert all(u.device_mac == kept for u in pipe.uploads())


def test_live_pipeline_does_not_hoard_uploads(captures: Path) -> None:
    pipe = Pipeline(vendor_lookup=vendor_for_mac, keep_uploads=False)
    got = []
    for batch in open_capture(captures / "echodot3a_active.pcap"):
        got += pipe.feed(batch)
    got += pipe.flush()
    assert len(got) == 1 and pipe.uploads() == []
