"""The control ops (watch, verdict, intercept) on their way from the API to the capture thread:
an op runs exactly when its caller is told it did, also when the capture loop is busy or away.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spyglass.agent.runner import DISCOVERY_WINDOW_S, Agent, AgentConfig
from spyglass.api.client import AgentClient, AgentError
from spyglass.store.db import Store
from tests.agent.test_agent_faults import SINK, ipv4, mac_of, send_raw, stop, udp, wait_for
from tests.agent.test_agent_live import SPEAKER_MAC, start_agent
from tests.netlab.lan import GATEWAY_LAN_IF, HomeLan, lan_or_skip

LATE_MAC = "02:00:00:00:00:71"  # watched while the capture loop was away
SYNC_MAC = "02:00:00:00:00:72"
# Hosts that send nothing but UDP to a port no discovery filter admits.
EARLY_MAC = "02:00:00:00:00:81"  # speaks in the discovery window, never watched
AFTER_MAC = "02:00:00:00:00:82"  # speaks after it, never watched
CHOSEN_MAC = "02:00:00:00:00:83"  # watched by the user in the window, speaks after it


@pytest.fixture
def lab() -> Iterator[HomeLan]:
    with lan_or_skip() as lan:
        lan.run(lan.speaker, "ip", "link", "set", "dev", "eth0", "address", SPEAKER_MAC)
        yield lan


def test_an_op_not_taken_up_in_time_never_runs() -> None:
    agent = Agent(AgentConfig(interface="lo"))  # its capture loop is not running
    ran: list[str] = []
    with pytest.raises(TimeoutError, match="nothing was changed"):
        agent._call(lambda: ran.append("watch"), timeout_s=0.05)
    agent._run_commands()  # the loop comes back: the op its caller gave up on stays undone
    assert ran == []
    # The next op goes through as usual once the loop runs.
    done: list[Any] = []
    caller = threading.Thread(target=lambda: done.append(agent._call(lambda: "ok", 30.0)))
    caller.start()
    while caller.is_alive():
        agent._run_commands()
        caller.join(0.01)
    assert done == ["ok"] and ran == []


def test_an_op_taken_up_in_time_answers_with_its_outcome_however_long_it_runs() -> None:
    agent = Agent(AgentConfig(interface="lo"))
    halt = threading.Event()

    def capture_loop() -> None:
        while not halt.is_set():
            agent._run_commands()
            time.sleep(0.005)

    loop = threading.Thread(target=capture_loop)
    loop.start()
    started, release = threading.Event(), threading.Event()

    def slow_op() -> str:
        started.set()
        release.wait()
        return "intercepting"

    outcome: list[Any] = []

    def caller() -> None:
        try:
            outcome.append(agent._call(slow_op, timeout_s=1.0))
        except Exception as exc:  # noqa: BLE001 - what the API would have answered
            outcome.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    try:
        assert started.wait(30)
        time.sleep(1.5)  # the caller's time is up while the op runs: it happens all the same
        release.set()
        t.join(30)
        assert outcome == ["intercepting"]
    finally:
        release.set()
        halt.set()
        loop.join()
        t.join()


@pytest.mark.root
def test_a_watch_that_timed_out_while_the_interface_was_gone_is_not_applied_later(
    lab: HomeLan, tmp_path: Path
) -> None:
    proc, sock = start_agent(lab, tmp_path)
    lab.delete_link(lab.gateway, GATEWAY_LAN_IF)  # the capture thread now waits for it
    with AgentClient(str(sock), timeout=30) as c:
        wait_for(lambda: [p for p in c.status()["problems"] if p["kind"] == "interface"], 10,
                 "the vanished interface reported")  # fmt: skip
        with pytest.raises(AgentError, match="nothing was changed"):
            c.watch(LATE_MAC)
        assert LATE_MAC not in c.status()["watched"]
        # It comes back (a new veth by the same name): the capture loop resumes.
        lab.run(lab.gateway, "ip", "link", "add", GATEWAY_LAN_IF, "type", "veth", "peer", "name",
                "back0")  # fmt: skip
        for ifname in (GATEWAY_LAN_IF, "back0"):
            lab.run(lab.gateway, "ip", "link", "set", ifname, "up")
        wait_for(lambda: not [p for p in c.status()["problems"] if p["kind"] == "interface"],
                 15, "the capture resumed")  # fmt: skip
        # Ops run in order: once this one is done, the one that timed out would have run.
        assert c.watch(SYNC_MAC) == {"device": SYNC_MAC, "watched": True}
        watched = c.status()["watched"]
        assert SYNC_MAC in watched and LATE_MAC not in watched
    stop(proc)
    with Store.open(tmp_path / "agent.db") as store:
        assert store.get_setting("watch") == f'["{SYNC_MAC}"]'


def udp_from(lab: HomeLan, mac: str, count: int = 20) -> list[bytes]:
    """Frames from ``mac`` (10.77.0.<its last byte>) to a blackholed address via the gateway."""
    dst = mac_of(lab, lab.gateway, GATEWAY_LAN_IF)
    src = bytes.fromhex(mac.replace(":", ""))
    ip = f"10.77.0.{src[-1]}"
    return [dst + src + b"\x08\x00" + ipv4(ip, SINK, 17, udp(40000, 7777, b"x" * 64))
            for _ in range(count)]  # fmt: skip


@pytest.mark.root
def test_a_watch_in_the_discovery_window_does_not_end_it(lab: HomeLan, tmp_path: Path) -> None:
    proc, sock = start_agent(lab, tmp_path)
    lab.run(lab.gateway, "ip", "route", "add", "blackhole", f"{SINK}/32")
    with AgentClient(str(sock), timeout=30) as c:

        def devices() -> set[str]:
            return {d.mac for d in c.devices()}

        assert c.watch(CHOSEN_MAC) == {"device": CHOSEN_MAC, "watched": True}
        st = c.status()
        assert CHOSEN_MAC in st["watched"]  # the choice shows at once...
        assert st["discovery_until"] is not None, "the test came after the window"
        # ...and the window goes on capturing everything: a host nobody watches is still seen.
        assert send_raw(lab, udp_from(lab, EARLY_MAC), 0.2) == 20
        wait_for(lambda: EARLY_MAC in devices(), 10, "the unwatched host seen in the window")
        # When the window ends the capture narrows to the watched devices, the choice included.
        wait_for(lambda: c.status()["discovery_until"] is None, DISCOVERY_WINDOW_S + 20,
                 "the discovery window's end")  # fmt: skip
        assert send_raw(lab, udp_from(lab, AFTER_MAC), 0.2) == 20
        assert send_raw(lab, udp_from(lab, CHOSEN_MAC), 0.2) == 20
        wait_for(lambda: CHOSEN_MAC in devices(), 10, "the watched host seen")
        assert AFTER_MAC not in devices()  # it spoke first, and was filtered out
        assert CHOSEN_MAC in c.status()["watched"]
    stop(proc)


# Hosts of the replug test, sending the same UDP as the ones above.
REPLUG_WATCHED_MAC = "02:00:00:00:00:84"  # watched: seen again once the interface is back
REPLUG_SYNC_MAC = "02:00:00:00:00:85"  # watched: speaks after the unwatched one
REPLUG_UNWATCHED_MAC = "02:00:00:00:00:86"  # never watched: speaks only after the replug


@pytest.mark.root
def test_the_narrowed_filter_survives_the_interface_going_down_and_up(
    lab: HomeLan, tmp_path: Path
) -> None:
    proc, sock = start_agent(lab, tmp_path)
    lab.run(lab.gateway, "ip", "route", "add", "blackhole", f"{SINK}/32")
    with AgentClient(str(sock), timeout=30) as c:

        def devices() -> set[str]:
            return {d.mac for d in c.devices()}

        def interface_problems() -> list[dict[str, Any]]:
            return [p for p in c.status()["problems"] if p["kind"] == "interface"]

        for mac in (REPLUG_WATCHED_MAC, REPLUG_SYNC_MAC):
            assert c.watch(mac)["watched"] is True
        wait_for(lambda: c.status()["discovery_until"] is None, DISCOVERY_WINDOW_S + 20,
                 "the discovery window's end")  # fmt: skip
        # The cable is pulled and put back: the agent reopens its capture.
        lab.run(lab.gateway, "ip", "link", "set", GATEWAY_LAN_IF, "down")
        wait_for(interface_problems, 10, "the interface going down reported")
        lab.run(lab.gateway, "ip", "link", "set", GATEWAY_LAN_IF, "up")
        wait_for(lambda: not interface_problems(), 15, "the capture resumed")

        def watched_seen() -> bool:
            # Sent until seen: the capture may take a retry or two to find the link up again.
            send_raw(lab, udp_from(lab, REPLUG_WATCHED_MAC, 5), 0.05)
            return REPLUG_WATCHED_MAC in devices()

        wait_for(watched_seen, 20, "a watched host seen after the replug")
        # Now capturing for sure: an unwatched host speaks, then a watched one. Frames are
        # taken in order, so once the second is seen the first would have been too.
        assert send_raw(lab, udp_from(lab, REPLUG_UNWATCHED_MAC), 0.2) == 20
        assert send_raw(lab, udp_from(lab, REPLUG_SYNC_MAC), 0.2) == 20
        wait_for(lambda: REPLUG_SYNC_MAC in devices(), 10, "the second watched host seen")
        assert REPLUG_UNWATCHED_MAC not in devices(), "captured unfiltered after the replug"
    stop(proc)
