"""Real captures replayed over real sockets in the namespace lab report the same uploads.

Each case replays one labelled speaker's internet traffic from a window of a real capture (the
speaker's namespace takes the original MAC), captures it on the gateway's LAN interface, and
analyses that capture as the agent would: the uploads must be those the original shows in the
window, with duration and bytes within 25 %. The window keeps each case short.
"""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import pytest

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core.analyze import analyze_file
from spyglass.core.models import Upload
from spyglass.sim.replay import plan_replay
from tests.netlab.lan import LAN_NET, VENDOR_HOSTS, lab_unavailable_reason, lan_or_skip
from tests.netlab.replayer import ReplayReport, gateway_capture, replay

pytestmark = [pytest.mark.root, pytest.mark.captures]

IP_FREEBIND = 15  # linux/in.h: bind to an address the host does not have (yet)
CASES = [
    # file, start, end (seconds after the first packet)
    pytest.param("echodot3a_active.pcap", 18.0, 30.0, id="echo-dot-tcp"),
    pytest.param("cic_echodot1_VOICE_VOLUMEOFF_1.pcap", 0.0, None, id="cic-echo-dot"),
    pytest.param("homepod_FNT_S3E10.pcap", 104.5, 119.5, id="homepod-tls-sni"),
    pytest.param("cic_nestmini_VOICE_VOLUMEOFF_1.pcap", 0.0, 4.0, id="nest-mini-quic"),
]


def in_window(uploads: list[Upload], mac: str, lo: float, hi: float) -> list[Upload]:
    return [u for u in uploads if u.device_mac == mac and u.end > lo and u.start < hi]


@pytest.mark.parametrize(("name", "start", "end"), CASES)
def test_replay_reports_the_same_uploads(
    tmp_path: Path, captures: Path, labels: list[dict[str, str]], name: str, start: float,
    end: float | None,
) -> None:  # fmt: skip
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed (it captures the replay on the gateway)")
    path = captures / name
    mac = next(row["device_mac"] for row in labels if row["file"] == name)
    plan = plan_replay(path, mac, start=start, end=end, known_addresses=VENDOR_HOSTS)
    original = in_window(
        analyze_file(path, vendor_lookup=vendor_for_mac).uploads,
        mac, plan.origin, plan.origin + plan.duration,
    )  # fmt: skip
    assert original, f"{name}: the window holds no upload to compare"

    out = tmp_path / "replay.pcap"
    with lan_or_skip() as lan, gateway_capture(lan, out):
        report = replay(lan, plan)
    assert report.errors == []
    assert report.sent("up") == plan.payload_bytes("up")
    assert report.sent("down") == plan.payload_bytes("down")

    result = analyze_file(out, lan=[LAN_NET], vendor_lookup=vendor_for_mac)
    replayed = [u for u in result.uploads if u.device_mac == mac]
    print(summary(name, original, replayed, plan.origin, report))
    assert len(replayed) == len(original)
    for o, r in zip(original, replayed, strict=True):
        assert r.duration == pytest.approx(o.duration, rel=0.25)
        assert r.bytes_up == pytest.approx(o.bytes_up, rel=0.25)
        assert r.peak_bps == pytest.approx(o.peak_bps, rel=0.25)
        # At the same place in the window: the replay's t=0 sits on the same fraction of a
        # second as the original's, so the detector's 100-ms bins line up.
        assert r.start - report.origin == pytest.approx(o.start - plan.origin, abs=0.2)
        assert (r.proto, r.port) == (o.proto, o.port)

    tls = [c for c in plan.connections if c.tls]
    assert sorted(report.tls_server_names, key=str) == sorted((c.sni for c in tls), key=str)
    names = {(e.ip, e.name) for e in result.endpoint_names if e.device_mac == mac}
    assert {(c.remote_ip, c.sni) for c in tls if c.sni} <= names
    assert {(addr, n) for n, addr in plan.dns_names.items()} <= names  # asked and answered


def summary(
    name: str, original: list[Upload], replayed: list[Upload], origin: float, rep: ReplayReport
) -> str:
    def row(u: Upload, base: float) -> str:
        return (
            f"start {u.start - base:6.2f} s, {u.duration:4.1f} s, {u.bytes_up} B, {u.destination}"
        )

    lines = [f"{name}:"]
    lines += [f"  original {row(u, origin)}" for u in original]
    lines += [f"  replayed {row(u, rep.origin)}" for u in replayed]
    d = rep.drift_ms()
    lines.append(
        f"  drift mean {d['mean']:.2f} ms, p95 {d['p95']:.2f} ms, max {d['max']:.2f} ms "
        f"over {len(rep.sends)} sends; wall {rep.wall_s:.1f} s"
    )
    return "\n".join(lines)


def test_a_failed_replay_leaves_the_lab_as_it_was(
    captures: Path, labels: list[dict[str, str]]
) -> None:
    name = "cic_echodot1_VOICE_VOLUMEOFF_1.pcap"
    mac = next(row["device_mac"] for row in labels if row["file"] == name)
    plan = plan_replay(captures / name, mac, end=1.0)
    [conn] = plan.connections
    with lan_or_skip() as lan:
        before = lan.run(lan.cloud, "ip", "-o", "addr").stdout
        threads = threading.active_count()
        # Something already listens where the scripted peer must (bound ahead of its address).
        with lan.socket(lan.cloud) as squatter:
            squatter.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            squatter.bind((conn.remote_ip, conn.remote_port))
            squatter.listen()
            with pytest.raises(OSError, match="in use"):
                replay(lan, plan)
        assert lan.run(lan.cloud, "ip", "-o", "addr").stdout == before
        assert threading.active_count() == threads
