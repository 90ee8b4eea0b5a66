"""The live agent reports the same uploads for a replayed real capture as `analyze` finds in
the file: the one streaming pipeline, fed by a wire instead of a file."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from spyglass.adapters.oui import vendor_for_mac
from spyglass.api.client import AgentClient
from spyglass.core.analyze import analyze_file
from spyglass.sim.replay import plan_replay
from tests.agent import running
from tests.netlab.lan import LAN_NET, VENDOR_HOSTS, lan_or_skip
from tests.netlab.replayer import replay

pytestmark = [pytest.mark.root, pytest.mark.captures]

CASES = [
    pytest.param("echodot3a_active.pcap", 18.0, 30.0, id="echo-dot"),
    pytest.param("homepod_FNT_S3E10.pcap", 104.5, 119.5, id="homepod-sni"),
]


@pytest.mark.parametrize(("name", "start", "end"), CASES)
def test_live_agent_matches_analyze(
    tmp_path: Path, captures: Path, labels: list[dict[str, str]], name: str, start: float,
    end: float,
) -> None:  # fmt: skip
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    path = captures / name
    mac = next(row["device_mac"] for row in labels if row["file"] == name)
    plan = plan_replay(path, mac, start=start, end=end, known_addresses=VENDOR_HOSTS)
    lo, hi = plan.origin, plan.origin + plan.duration
    original = [
        u for u in analyze_file(path, vendor_lookup=vendor_for_mac).uploads
        if u.device_mac == mac and u.end > lo and u.start < hi
    ]
    assert original
    with lan_or_skip() as lan:
        proc, sock = running.start_agent(
            lan.popen, lan.gateway, tmp_path, "-i", "lan0", "--mode", "gateway", "--lan", LAN_NET
        )
        report = replay(lan, plan)
        assert report.errors == []
        live: list[Any] = []
        deadline = time.monotonic() + 10
        with AgentClient(str(sock), timeout=5) as client:
            while time.monotonic() < deadline and len(live) < len(original):
                live = [u for u in client.uploads() if u.device_mac == mac]
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert len(live) == len(original)
    for o, r in zip(original, live, strict=True):
        assert r.duration == pytest.approx(o.duration, rel=0.25)
        assert r.bytes_up == pytest.approx(o.bytes_up, rel=0.25)
        assert r.start - report.origin == pytest.approx(o.start - plan.origin, abs=0.3)
        assert (r.proto, r.port, r.assistant) == (o.proto, o.port, o.assistant)
        if o.destination != o.remote_ip:  # the original knew the name: so must the agent
            assert r.destination == o.destination
