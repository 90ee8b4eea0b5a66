"""The agent end to end in the namespace home LAN: live capture → detection → store → API."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spyglass.api.client import AgentClient, AgentError, AgentUnavailable
from spyglass.api.convert import WireUpload
from tests.agent import running
from tests.netlab.lan import DNS_IP, VENDOR_HOSTS, HomeLan, build_query, lan_or_skip

pytestmark = pytest.mark.root

SPEAKER_MAC = "68:db:f5:12:34:56"  # an Amazon OUI: the agent treats it as a speaker


@pytest.fixture
def lab() -> Iterator[HomeLan]:
    with lan_or_skip() as lan:
        lan.run(lan.speaker, "ip", "link", "set", "dev", "eth0", "address", SPEAKER_MAC)
        yield lan


def start_agent(lab: HomeLan, tmp: Path, *extra: str) -> tuple[subprocess.Popen[Any], Path]:
    return running.start_agent(lab.popen, lab.gateway, tmp, "-i", "lan0", "--mode", "gateway",
                               *extra)


def speak(lab: HomeLan, seconds: float = 3.0, record: int = 118, every: float = 0.02) -> None:
    """From the speaker: resolve the voice endpoint, open TLS to it and stream paced records."""
    import ssl

    host = "bob-dispatch-prod-na.amazon.com"
    cert, _ = lab.tls_files()
    ctx = ssl.create_default_context(cafile=str(cert))

    def run() -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(build_query(host), (DNS_IP, 53))
        udp.settimeout(2)
        udp.recv(512)
        udp.close()
        raw = socket.create_connection((VENDOR_HOSTS[host], 443), timeout=5)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            end = time.monotonic() + seconds
            payload = os.urandom(record)
            while time.monotonic() < end:
                tls.sendall(payload)
                time.sleep(every)
            time.sleep(0.3)

    lab.call(lab.speaker, run)


def test_live_upload_reaches_api_and_store(lab: HomeLan, tmp_path: Path) -> None:
    lab.start_dns()
    lab.start_tls_server()
    proc, sock = start_agent(lab, tmp_path)
    events: list[dict[str, Any]] = []
    client = AgentClient(str(sock), timeout=10)
    sub = client.subscribe()
    # The lab's speaker may have spoken (IPv6 router solicitations, MLD) before the
    # subscription began: its device_seen then went out before, and the store (written every
    # second) has it once two writes have passed. Otherwise the event must come.
    time.sleep(2.5)
    known_before = {d.mac for d in client.devices()}

    def collect() -> None:
        with contextlib.suppress(AgentUnavailable):  # the agent stops at the end
            for ev in sub:
                events.append(ev)

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    speak(lab, seconds=3.0)
    deadline = time.monotonic() + 10
    uploads: list[WireUpload] = []
    while time.monotonic() < deadline and not uploads:
        uploads = client.uploads()
        time.sleep(0.3)
    assert len(uploads) == 1, (uploads, proc)
    up = uploads[0]
    assert isinstance(up.id, int)
    assert up.device_mac == SPEAKER_MAC
    assert up.destination == "bob-dispatch-prod-na.amazon.com"
    assert up.assistant == "alexa"
    assert 2.0 < up.end - up.start < 4.5
    names = {e.get("event") for e in events}
    assert {"upload_started", "upload_ended"} <= names
    seen = {e["data"]["mac"] for e in events if e.get("event") == "device_seen"}
    assert SPEAKER_MAC in seen | known_before
    st = client.status()
    assert st["mode"] == "gateway" and st["interface"] == "lan0"
    assert st["packets"] > 100 and st["kernel_drops"] == 0
    assert SPEAKER_MAC in st["watched"]
    assert SPEAKER_MAC in {d.mac for d in client.devices()}
    # The tray app's verdict and watch buttons, through the API; the agent is the writer.
    assert client.verdict(up.id, "me") == {"upload": up.id, "verdict": "me"}
    assert client.uploads()[0].verdict == "me"
    with pytest.raises(AgentError, match="no upload with id 999"):
        client.verdict(999, "nobody")
    assert client.watch("02:00:00:00:00:99")["watched"] is True
    assert "02:00:00:00:00:99" in client.status()["watched"]
    found = client.sweep()["devices"]
    assert found.get("10.77.0.2") == SPEAKER_MAC
    sub.close()
    client.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not sock.exists()
    rows = sqlite3.connect(tmp_path / "agent.db").execute("SELECT COUNT(*) FROM uploads").fetchone()
    assert rows[0] == 1


def test_kill_9_leaves_a_clean_store(lab: HomeLan, tmp_path: Path) -> None:
    lab.start_dns()
    lab.start_tls_server()
    proc, sock = start_agent(lab, tmp_path)
    speak(lab, seconds=2.0)
    time.sleep(5.0)  # judged 1 s after the stream, released after 1.8 s, written within 1 s
    proc.kill()
    proc.wait(timeout=10)
    db = sqlite3.connect(tmp_path / "agent.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM uploads").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM series").fetchone()[0] > 0
    # The next agent replaces the dead one's socket and carries on.
    proc2, _ = start_agent(lab, tmp_path)
    proc2.send_signal(signal.SIGINT)
    assert proc2.wait(timeout=15) == 0


def test_vanished_interface_is_reported_not_fatal(lab: HomeLan, tmp_path: Path) -> None:
    proc, sock = start_agent(lab, tmp_path)
    lab.delete_link(lab.gateway, "lan0")
    deadline = time.monotonic() + 10
    problems: list[dict[str, Any]] = []
    with AgentClient(str(sock), timeout=5) as c:
        while time.monotonic() < deadline and not problems:
            problems = [p for p in c.status()["problems"] if p["kind"] == "interface"]
            time.sleep(0.3)
    assert problems and "lan0" in problems[0]["message"]
    assert proc.poll() is None  # still running, retrying
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_agent_refuses_without_privileges_or_bad_lan(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "spyglass", "agent", "-i", "lo", "--lan", "nonsense",
         "--socket", str(tmp_path / "s"), "--db", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--lan 'nonsense' is not a network" in out.stderr
