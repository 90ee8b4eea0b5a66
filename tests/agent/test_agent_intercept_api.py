"""Intercept mode chosen at runtime through the API: a real agent on the flat namespace LAN starts
with nothing chosen, intercepts the speaker when asked (`intercept` op and `spyglass intercept`),
restores its true ARP entries when it is un-chosen, and intercepts it again after a restart."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spyglass.api.client import AgentClient, AgentError
from spyglass.cli.main import main
from spyglass.store.db import Store
from tests.agent import running
from tests.agent import test_agent_intercept as base
from tests.agent.helpers import Raw
from tests.netlab.flatlan import (
    IF,
    NET,
    OTHER_IP,
    OTHER_MAC,
    ROUTER_IP,
    ROUTER_MAC,
    SPEAKER_IP,
    SPY_MAC,
    FlatLan,
)

pytestmark = pytest.mark.root

lan = base.lan  # the same lab: a speaker with an Amazon MAC, "the internet" behind the router
SPEAKER_MAC = base.SPEAKER_MAC
NOBODY_IP = "10.79.0.77"  # on the LAN, but no host answers there
TIMEOUT_S = 30.0  # the first choice starts the restore watchdog: seconds on a busy machine


def start_agent(lan: FlatLan, tmp: Path, *args: str) -> tuple[subprocess.Popen[Any], Path]:
    return running.start_agent(
        lan.popen, lan.spy, tmp, "-i", IF, "--mode", "intercept", "--router", ROUTER_IP,
        "--lan", NET, *args,
    )  # fmt: skip


def wait_for(what: Callable[[], bool], seconds: float = 6.0) -> bool:
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def know_each_other(lan: FlatLan, *hosts: str) -> None:
    """Real traffic first, so every cache holds the true entry before anyone poisons it."""
    for ns in hosts:
        assert lan.ping(ns, ROUTER_IP, timeout_s=3)


def poisoned(lan: FlatLan, ip: str, ns: str) -> bool:
    """``ns`` and the router both reach each other through the spyglass host."""
    return lan.neigh(ns, ROUTER_IP) == SPY_MAC and lan.neigh(lan.router, ip) == SPY_MAC


def true_entries(lan: FlatLan, ip: str, mac: str, ns: str) -> bool:
    return lan.neigh(ns, ROUTER_IP) == ROUTER_MAC and lan.neigh(lan.router, ip) == mac


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def test_choose_and_unchoose_at_runtime(
    lan: FlatLan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    know_each_other(lan, lan.speaker)
    proc, sock = start_agent(lan, tmp_path)  # no --target: nothing chosen yet
    with AgentClient(str(sock), timeout=TIMEOUT_S) as c:
        st = c.status()
        assert st["mode"] == "intercept" and st["intercepting"] == []
        assert true_entries(lan, SPEAKER_IP, SPEAKER_MAC, lan.speaker)

        # Refusals while the interceptor has not started: each a clear error, nothing poisoned,
        # and the same connection goes on working.
        for ip, why in [
            (ROUTER_IP, "is the router"),
            (NOBODY_IP, f"no ARP answer from {NOBODY_IP}"),
            ("10.80.0.2", "not on eth0's network"),
        ]:
            with pytest.raises(AgentError) as info:
                c.intercept(ip)
            assert info.value.code == "bad_request" and why in str(info.value), info.value
        assert c.status()["intercepting"] == []

        # Chosen with the CLI: the speaker and the router now reach each other through us.
        rc, out, err = cli(capsys, "intercept", SPEAKER_IP, "--socket", str(sock), "--json")
        assert rc == 0, err
        assert json.loads(out) == {"device": SPEAKER_IP, "intercepting": [SPEAKER_IP]}
        assert wait_for(lambda: poisoned(lan, SPEAKER_IP, lan.speaker))
        base.stream(lan, 3.0)  # forwarded: it reaches "the cloud" and back
        uploads: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not uploads:
            uploads = c.uploads()
            time.sleep(0.3)
        assert len(uploads) == 1, c.status()
        assert uploads[0].device_mac == SPEAKER_MAC and uploads[0].remote_ip == base.CLOUD_IP
        st = c.status()
        assert st["intercepting"] == [SPEAKER_IP] and SPEAKER_MAC in st["watched"]

        # A refusal while running leaves the chosen device intercepted.
        with pytest.raises(AgentError, match=f"no ARP answer from {NOBODY_IP}"):
            c.intercept(NOBODY_IP)
        assert c.intercept(SPEAKER_IP) == {"device": SPEAKER_IP, "intercepting": [SPEAKER_IP]}

        # Un-chosen: both caches hold the true MACs again while the agent runs on, and with
        # nothing left to intercept, forwarding is off again.
        assert lan.sysctl(lan.spy, "net.ipv4.ip_forward") == "1"
        assert c.intercept(SPEAKER_IP, on=False) == {"device": SPEAKER_IP, "intercepting": []}
        assert wait_for(lambda: true_entries(lan, SPEAKER_IP, SPEAKER_MAC, lan.speaker))
        assert wait_for(lambda: lan.sysctl(lan.spy, "net.ipv4.ip_forward") == "0")
        assert proc.poll() is None
        st = c.status()
        assert st["state"] == "capturing" and st["intercepting"] == []
        # A speaker stays watched (for what it still sends where we can see it).
        assert SPEAKER_MAC in st["watched"]
        # Un-choosing what is not chosen is not an error.
        assert c.intercept(SPEAKER_IP, on=False) == {"device": SPEAKER_IP, "intercepting": []}

    # What the protocol refuses gets its usual error line; the connection stays usable.
    conn = Raw(sock)
    try:
        reply = conn.ask({"v": 1, "id": 1, "op": "intercept", "device": "10.79.0.300"})
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
        assert "not an IPv4 address" in reply["error"]["message"]
        reply = conn.ask({"v": 1, "id": 2, "op": "intercept", "device": SPEAKER_IP, "on": "no"})
        assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
        assert conn.ask({"v": 1, "id": 3, "op": "status"})["result"]["state"] == "capturing"
    finally:
        conn.close()
    stop(proc)
    assert wait_for(lambda: true_entries(lan, SPEAKER_IP, SPEAKER_MAC, lan.speaker))
    with Store.open(tmp_path / "agent.db") as store:
        assert json.loads(store.get_setting("intercept") or "null") == []


def test_the_choice_survives_a_restart(
    lan: FlatLan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    know_each_other(lan, lan.speaker, lan.other)
    proc, sock = start_agent(lan, tmp_path)
    with AgentClient(str(sock), timeout=TIMEOUT_S) as c:
        assert c.intercept(SPEAKER_IP)["intercepting"] == [SPEAKER_IP]
    assert wait_for(lambda: poisoned(lan, SPEAKER_IP, lan.speaker))
    stop(proc)  # every exit restores...
    assert wait_for(lambda: true_entries(lan, SPEAKER_IP, SPEAKER_MAC, lan.speaker))

    # ...and the next agent intercepts the saved choice again; --target adds to it.
    proc, sock = start_agent(lan, tmp_path, "--target", OTHER_IP)
    with AgentClient(str(sock), timeout=TIMEOUT_S) as c:
        st = c.status()
        assert st["intercepting"] == [SPEAKER_IP, OTHER_IP], st
        assert not st["problems"]
    assert wait_for(lambda: poisoned(lan, SPEAKER_IP, lan.speaker))
    assert wait_for(lambda: poisoned(lan, OTHER_IP, lan.other))
    rc, out, err = cli(capsys, "status", "--socket", str(sock))
    assert rc == 0 and f"intercepting: {SPEAKER_IP}, {OTHER_IP}  router: {ROUTER_IP}" in out
    rc, out, err = cli(capsys, "intercept", OTHER_IP, "--off", "--socket", str(sock))
    assert rc == 0, err
    assert out == (
        f"no longer intercepting {OTHER_IP}: its true ARP entries are being restored\n"
        f"intercepting now: {SPEAKER_IP}\n"
    )
    assert wait_for(lambda: true_entries(lan, OTHER_IP, OTHER_MAC, lan.other))
    stop(proc)
    assert wait_for(lambda: true_entries(lan, SPEAKER_IP, SPEAKER_MAC, lan.speaker))
    assert wait_for(lambda: true_entries(lan, OTHER_IP, OTHER_MAC, lan.other))
    with Store.open(tmp_path / "agent.db") as store:
        # The command line's --target is not remembered: only what was chosen through the API.
        assert json.loads(store.get_setting("intercept") or "null") == [SPEAKER_IP]


def test_the_op_outside_intercept_mode(
    lan: FlatLan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc, sock = running.start_agent(
        lan.popen, lan.spy, tmp_path, "-i", IF, "--mode", "passive", "--lan", NET
    )
    with AgentClient(str(sock), timeout=TIMEOUT_S) as c:
        with pytest.raises(AgentError) as info:
            c.intercept(SPEAKER_IP)
        assert info.value.code == "bad_request"
        assert "the agent is not in intercept mode" in str(info.value)
        assert c.status()["state"] == "capturing"  # the same connection answers on
    rc, _out, err = cli(capsys, "intercept", SPEAKER_IP, "--off", "--socket", str(sock))
    assert rc == 1 and "not in intercept mode" in err
    assert proc.poll() is None
    stop(proc)
