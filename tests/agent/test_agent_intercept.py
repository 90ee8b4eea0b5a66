"""Intercept mode end to end: the agent ARP-intercepts a speaker on a flat LAN, sees its upload,
and leaves every ARP cache true when it stops."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spyglass.api.client import AgentClient
from tests.agent import running
from tests.netlab.flatlan import (
    IF,
    NET,
    ROUTER_IP,
    ROUTER_MAC,
    SPEAKER_IP,
    FlatLan,
    flat_lan_or_skip,
)

pytestmark = pytest.mark.root

SPEAKER_MAC = "68:db:f5:20:20:20"  # an Amazon OUI, so the speaker counts as one
CLOUD_IP = "10.80.0.2"
EXTRA: list[str] = []  # behind the router: "the internet" of this lab


@pytest.fixture
def lan() -> Iterator[FlatLan]:
    with flat_lan_or_skip() as lab:
        lab.run(lab.speaker, "ip", "link", "set", "dev", IF, "address", SPEAKER_MAC)
        lab.run(lab.router, "ip", "addr", "add", f"{CLOUD_IP}/32", "dev", "lo")
        lab.run(lab.router, "ip", "link", "set", "lo", "up")
        lab.run(lab.speaker, "ip", "route", "add", "10.80.0.0/24", "via", ROUTER_IP)
        # The intercepting host forwards by its own routes, like a home host's default route.
        lab.run(lab.spy, "ip", "route", "add", "10.80.0.0/24", "via", ROUTER_IP)
        lab.start_tcp_echo(lab.router, CLOUD_IP, 443)
        yield lab


def start_agent(lan: FlatLan, tmp: Path) -> tuple[subprocess.Popen[Any], Path]:
    return running.start_agent(
        lan.popen, lan.spy, tmp, "-i", IF, "--mode", "intercept", "--target", SPEAKER_IP,
        "--router", ROUTER_IP, "--lan", NET, *EXTRA,
    )


def stream(lan: FlatLan, seconds: float) -> None:
    def run() -> None:
        with socket.create_connection((CLOUD_IP, 443), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                s.sendall(b"\x17" * 118)
                time.sleep(0.02)

    lan.call(lan.speaker, run)


def test_intercepted_speaker_upload_and_true_arp_after_stop(lan: FlatLan, tmp_path: Path) -> None:
    proc, sock = start_agent(lan, tmp_path)
    # Poisoned: the speaker now reaches the router through the spyglass host's MAC.
    assert lan.neigh(lan.speaker, ROUTER_IP) != ROUTER_MAC
    stream(lan, 3.0)
    uploads: list[Any] = []
    deadline = time.monotonic() + 10
    with AgentClient(str(sock), timeout=5) as c:
        while time.monotonic() < deadline and not uploads:
            uploads = c.uploads()
            time.sleep(0.3)
        st = c.status()
    assert len(uploads) == 1, st
    assert uploads[0].device_mac == SPEAKER_MAC and uploads[0].remote_ip == CLOUD_IP
    assert 1.5 < uploads[0].end - uploads[0].start < 4.5  # the first ARP round costs a little
    assert st["intercepting"] == [SPEAKER_IP] and SPEAKER_MAC in st["watched"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    time.sleep(0.5)
    assert lan.neigh(lan.speaker, ROUTER_IP) == ROUTER_MAC
    assert lan.neigh(lan.router, SPEAKER_IP) == SPEAKER_MAC


def test_sigkill_still_restores_arp(lan: FlatLan, tmp_path: Path) -> None:
    proc, _ = start_agent(lan, tmp_path)
    assert lan.neigh(lan.speaker, ROUTER_IP) != ROUTER_MAC
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and lan.neigh(lan.speaker, ROUTER_IP) != ROUTER_MAC:
        time.sleep(0.2)
    assert lan.neigh(lan.speaker, ROUTER_IP) == ROUTER_MAC
    assert lan.neigh(lan.router, SPEAKER_IP) == SPEAKER_MAC
