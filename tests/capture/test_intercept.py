"""Intercept mode in a real flat LAN of namespaces: the ARP caches of the speaker and the router
(read with ``ip -j neigh``) point at the spyglass host while it runs, and at the true MACs again
after every way of stopping: stop(), an exception, remove(), SIGTERM, SIGINT, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from spyglass.capture.arp import (
    OP_REPLY,
    OP_REQUEST,
    ArpSocket,
    build_arp,
    claim,
    correction_frames,
    parse_frame,
    poison_frames,
)
from spyglass.capture.intercept import Interceptor
from spyglass.capture.live import LiveCapture
from spyglass.capture.preflight import InterceptConflict, InterceptError
from spyglass.capture.watchdog import (
    AgentWatch,
    InterceptState,
    read_state,
    start_watchdog,
    write_state,
)
from tests.netlab.flatlan import (
    IF,
    OTHER_IP,
    OTHER_MAC,
    ROUTER_IP,
    ROUTER_MAC,
    SPEAKER_IP,
    SPEAKER_MAC,
    SPY_MAC,
    FlatLan,
    flat_lan_or_skip,
)

REPO = Path(__file__).resolve().parents[2]
ECHO_PORT = 7007
# The spyglass namespace's defaults (a fresh netns): forwarding off, redirects on.
SYSCTLS = {
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.send_redirects": "1",
    f"net.ipv4.conf.{IF}.send_redirects": "1",
    "net.ipv4.conf.all.accept_redirects": "1",
}


def wait_for(cond: Callable[[], bool], timeout_s: float = 6.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


# -- frames (no lab needed) ---------------------------------------------------------------------


def test_build_arp_matches_scapy() -> None:
    frame = build_arp(
        OP_REPLY, SPY_MAC, ROUTER_IP, SPEAKER_MAC, SPEAKER_IP, eth_src=SPY_MAC, eth_dst=SPEAKER_MAC
    )
    ref = Ether(src=SPY_MAC, dst=SPEAKER_MAC) / ARP(
        op=2, hwsrc=SPY_MAC, psrc=ROUTER_IP, hwdst=SPEAKER_MAC, pdst=SPEAKER_IP
    )
    assert len(frame) == 60
    assert frame[:42] == bytes(ref)
    parsed = parse_frame(frame)
    assert parsed is not None
    assert (parsed.eth_src, parsed.eth_dst) == (SPY_MAC, SPEAKER_MAC)
    assert (parsed.arp.op, parsed.arp.sender_mac, parsed.arp.sender_ip) == (2, SPY_MAC, ROUTER_IP)
    assert (parsed.arp.target_mac, parsed.arp.target_ip) == (SPEAKER_MAC, SPEAKER_IP)


def test_poison_and_correction_frames_say_the_right_things() -> None:
    poison = [parse_frame(f) for f in poison_frames(SPY_MAC, ROUTER_IP, ROUTER_MAC, SPEAKER_IP,
                                                    SPEAKER_MAC)]  # fmt: skip
    # To the speaker: the router is at us; to the router: the speaker is at us. Always from us.
    assert [(p.eth_dst, p.arp.sender_ip, p.arp.sender_mac) for p in poison if p] == [
        (SPEAKER_MAC, ROUTER_IP, SPY_MAC),
        (ROUTER_MAC, SPEAKER_IP, SPY_MAC),
    ]
    fixes = [parse_frame(f) for f in correction_frames(SPY_MAC, ROUTER_IP, ROUTER_MAC, SPEAKER_IP,
                                                       SPEAKER_MAC)]  # fmt: skip
    assert all(f is not None and f.eth_src == SPY_MAC for f in fixes)
    claims = {(f.eth_dst, f.arp.op, f.arp.sender_ip, f.arp.sender_mac) for f in fixes if f}
    assert claims == {
        (SPEAKER_MAC, OP_REPLY, ROUTER_IP, ROUTER_MAC),
        (ROUTER_MAC, OP_REPLY, SPEAKER_IP, SPEAKER_MAC),
        (SPEAKER_MAC, OP_REQUEST, ROUTER_IP, ROUTER_MAC),
        (ROUTER_MAC, OP_REQUEST, SPEAKER_IP, SPEAKER_MAC),
    }


def _ref(ether_type: int = 0x0806, ptype: int = 0x0800, plen: int = 4) -> bytes:
    eth = Ether(src=SPY_MAC, dst=SPEAKER_MAC, type=ether_type)
    arp = ARP(hwsrc=SPY_MAC, psrc=ROUTER_IP, hwdst=SPEAKER_MAC, pdst=SPEAKER_IP, ptype=ptype,
              plen=plen)  # fmt: skip
    return bytes(eth / arp)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x00" * 41, _ref()[:41], _ref(ether_type=0x0800), _ref(ptype=0x86DD), _ref(plen=16)],
)
def test_parse_frame_rejects_what_is_not_ipv4_arp(frame: bytes) -> None:
    assert parse_frame(frame) is None


def test_bad_macs_and_addresses_are_named() -> None:
    with pytest.raises(ValueError, match="not a MAC address: 'zz'"):
        build_arp(1, "zz", ROUTER_IP, SPY_MAC, SPEAKER_IP, eth_src=SPY_MAC, eth_dst=SPY_MAC)
    with pytest.raises(ValueError, match="router address '10.79.0' is not an IPv4 address"):
        Interceptor(IF, "10.79.0")
    with pytest.raises(ValueError, match="no network namespace named 'sg-nope-1'"):
        Interceptor(IF, ROUTER_IP, netns="sg-nope-1")
    it = Interceptor(IF, ROUTER_IP)
    with pytest.raises(ValueError, match="10.79.0.1 is the router"):
        it.add(ROUTER_IP)
    with pytest.raises(InterceptError, match="no devices chosen"):
        it.start()
    it.close()


# -- the watchdog on its own (no lab: nothing to restore but sysctls it is not given) -----------


def _state(pid: int, clean: bool = False) -> InterceptState:
    return InterceptState(pid, "lo", SPY_MAC, ROUTER_IP, ROUTER_MAC, clean=clean)


def test_state_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = _state(1234)
    state.targets = {SPEAKER_IP: SPEAKER_MAC}
    state.sysctls = {"net/ipv4/ip_forward": "0"}
    write_state(path, state)
    assert read_state(path) == state
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary left behind
    path.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_state(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a Spyglass intercept state file"):
        read_state(path)
    bad = state.to_json() | {"sysctls": {"kernel/core_pattern": "|/bin/sh"}}
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="outside net/ipv4"):
        read_state(path)


def test_watchdog_exits_quietly_when_the_state_turns_clean(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / "state.json"
        write_state(path, _state(sleeper.pid))
        dog = start_watchdog(path, sleeper.pid)
        assert dog.poll() is None
        write_state(path, _state(sleeper.pid, clean=True))
        assert dog.wait(timeout=5) == 0
        assert read_state(path).restored_by is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_watchdog_exits_quietly_when_the_agent_exits_clean(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    agent = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    write_state(path, _state(agent.pid))
    dog = start_watchdog(path, agent.pid)
    write_state(path, _state(agent.pid, clean=True))
    assert agent.stdin is not None
    agent.stdin.close()
    agent.wait()
    assert dog.wait(timeout=5) == 0
    assert read_state(path).restored_by is None


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_agent_watch_sees_the_agent_go_even_before_it_is_reaped(use_pidfd: bool) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watch = AgentWatch(sleeper.pid, use_pidfd=use_pidfd)
    try:
        assert not watch.wait(0.05)
        sleeper.kill()
        assert wait_for(lambda: watch.wait(0.05), 5)  # a zombie counts as gone
    finally:
        watch.close()
        sleeper.wait()
    assert AgentWatch(sleeper.pid).wait(0)  # reaped (and not reused): gone at once


def test_watchdog_refuses_a_bad_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("nonsense")
    with pytest.raises(RuntimeError, match="watchdog did not start"):
        start_watchdog(path, os.getpid())


# -- in the flat lab -----------------------------------------------------------------------------


def host_sysctls() -> dict[str, str]:
    names = [n for n in SYSCTLS if f".{IF}." not in n]
    return {n: Path("/proc/sys", n.replace(".", "/")).read_text() for n in names}


@pytest.fixture(scope="module")
def lan() -> Iterator[FlatLan]:
    before = host_sysctls()
    with flat_lan_or_skip() as lab:
        lab.start_tcp_echo(lab.router, ROUTER_IP, ECHO_PORT)
        yield lab
    assert host_sysctls() == before, "the host's own forwarding settings were touched"


@pytest.fixture
def fresh(lan: FlatLan) -> FlatLan:
    """True ARP entries both ways, the spyglass host's sysctls at their defaults."""
    lan.flush_neigh()
    assert lan.ping(lan.speaker, ROUTER_IP)
    assert lan.ping(lan.router, SPEAKER_IP)
    assert lan.ping(lan.router, OTHER_IP)
    assert true_entries(lan)
    assert spy_sysctls(lan) == SYSCTLS
    return lan


def entries(lan: FlatLan) -> tuple[str | None, str | None]:
    return lan.neigh(lan.speaker, ROUTER_IP), lan.neigh(lan.router, SPEAKER_IP)


def true_entries(lan: FlatLan) -> bool:
    return entries(lan) == (ROUTER_MAC, SPEAKER_MAC)


def poisoned(lan: FlatLan) -> bool:
    return entries(lan) == (SPY_MAC, SPY_MAC)


def spy_sysctls(lan: FlatLan) -> dict[str, str]:
    return {name: lan.sysctl(lan.spy, name) for name in SYSCTLS}


def frames_through_spy(cap: LiveCapture) -> set[tuple[str, int]]:
    """(direction, IP protocol) of speaker<->router packets the spyglass host received."""
    seen = set()
    batch = cap.read_batch(timeout_s=0.5)
    spk, rtr = bytes(map(int, SPEAKER_IP.split("."))), bytes(map(int, ROUTER_IP.split(".")))
    spy = bytes.fromhex(SPY_MAC.replace(":", ""))
    for off, n in zip(batch.offset.tolist(), batch.caplen.tolist(), strict=True):
        f = batch.buf[off : off + n]
        if len(f) < 34 or f[12:14] != b"\x08\x00" or f[0:6] != spy:
            continue
        src, dst, proto = f[26:30], f[30:34], f[23]
        if (src, dst) == (spk, rtr):
            seen.add(("up", proto))
        elif (src, dst) == (rtr, spk):
            seen.add(("down", proto))
    return seen


@pytest.mark.root
def test_interception_puts_the_host_in_the_path_and_stop_restores(fresh: FlatLan) -> None:
    lan = fresh
    cap = lan.call(lan.spy, LiveCapture, IF, f"icmp or tcp port {ECHO_PORT}")
    it = Interceptor(IF, ROUTER_IP, netns=lan.spy)
    it.add(SPEAKER_IP)
    try:
        with it:
            it.add(SPEAKER_IP)  # already there: nothing changes
            assert it.targets == {SPEAKER_IP: SPEAKER_MAC}
            assert it.router_mac == ROUTER_MAC
            assert wait_for(lambda: poisoned(lan)), entries(lan)
            assert spy_sysctls(lan) == SYSCTLS | {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.send_redirects": "0",
                f"net.ipv4.conf.{IF}.send_redirects": "0",
                # the kernel turns it off with forwarding; it comes back with stop()
                "net.ipv4.conf.all.accept_redirects": "0",
            }
            assert lan.ping(lan.speaker, ROUTER_IP, count=3)
            assert lan.tcp_echo(lan.speaker, ROUTER_IP, ECHO_PORT, b"hello") == b"hello"
            seen = frames_through_spy(cap)
            assert {("up", 1), ("down", 1), ("up", 6), ("down", 6)} <= seen
            assert poisoned(lan)
            watchdog = it.watchdog_pid
            assert watchdog is not None
        assert true_entries(lan)  # stop() returns after its corrections went out
        assert spy_sysctls(lan) == SYSCTLS
        assert lan.tcp_echo(lan.speaker, ROUTER_IP, ECHO_PORT) == b"spyglass"
        assert not os.path.exists(f"/proc/{watchdog}")  # it saw the clean state and left
    finally:
        cap.close()


@pytest.mark.root
def test_an_exception_in_the_with_block_restores(fresh: FlatLan) -> None:
    lan = fresh
    it = Interceptor(IF, ROUTER_IP, netns=lan.spy)
    it.add(SPEAKER_IP)
    with pytest.raises(RuntimeError, match="boom"), it:
        assert wait_for(lambda: poisoned(lan))
        raise RuntimeError("boom")
    assert not it.running
    assert wait_for(lambda: true_entries(lan), 3), entries(lan)
    assert spy_sysctls(lan) == SYSCTLS
    it.close()


@pytest.mark.root
def test_remove_restores_that_device_at_once(fresh: FlatLan) -> None:
    lan = fresh
    it = Interceptor(IF, ROUTER_IP, netns=lan.spy)
    it.add(SPEAKER_IP)
    it.add(OTHER_IP)
    with it:
        assert wait_for(lambda: poisoned(lan) and lan.neigh(lan.router, OTHER_IP) == SPY_MAC)
        it.remove(SPEAKER_IP)
        assert it.targets == {OTHER_IP: OTHER_MAC}
        assert wait_for(lambda: true_entries(lan), 3), entries(lan)
        # The other device stays intercepted, the removed one stays restored.
        time.sleep(2.5)
        assert true_entries(lan)
        assert lan.neigh(lan.router, OTHER_IP) == SPY_MAC
        assert spy_sysctls(lan)["net.ipv4.ip_forward"] == "1"
        it.add(SPEAKER_IP)  # chosen again while running: poisoned again
        assert wait_for(lambda: poisoned(lan))
    assert wait_for(lambda: true_entries(lan), 3)
    assert lan.neigh(lan.router, OTHER_IP) == OTHER_MAC
    assert spy_sysctls(lan) == SYSCTLS


@pytest.mark.root
def test_a_device_that_asks_again_is_answered_at_once(fresh: FlatLan) -> None:
    """With a 30-s period only the answer to their own ARP requests can re-poison them."""
    lan = fresh
    it = Interceptor(IF, ROUTER_IP, netns=lan.spy, period_s=30)
    it.add(SPEAKER_IP)
    with it:
        lan.flush_neigh(lan.speaker, lan.router)
        assert lan.ping(lan.speaker, ROUTER_IP)  # both ask by broadcast; the true owners answer
        assert wait_for(lambda: poisoned(lan), 5), entries(lan)
        assert lan.ping(lan.speaker, ROUTER_IP)
    assert wait_for(lambda: true_entries(lan), 3)


@pytest.mark.root
def test_an_offline_device_is_refused_and_nothing_changes(fresh: FlatLan) -> None:
    lan = fresh
    it = Interceptor(IF, ROUTER_IP, netns=lan.spy, resolve_window_s=0.3)
    it.add("10.79.0.99")
    with pytest.raises(InterceptError, match=r"no ARP answer from 10\.79\.0\.99 on eth0"):
        it.start()
    it.remove("10.79.0.99")
    it.add("192.168.1.7")
    with pytest.raises(ValueError, match=r"192\.168\.1\.7 is not on eth0's network"):
        it.start()
    assert not it.running
    assert spy_sysctls(lan) == SYSCTLS
    assert true_entries(lan)
    it.close()


AGENT = textwrap.dedent(
    """
    import sys, time
    from spyglass.capture.intercept import Interceptor, install_exit_handlers

    it = Interceptor("eth0", sys.argv[1], state_file=sys.argv[3])
    it.add(sys.argv[2])
    install_exit_handlers(it)
    it.start()
    print("running", it.watchdog_pid, flush=True)
    while True:
        time.sleep(1)
    """
)


def start_agent(lan: FlatLan, tmp_path: Path) -> tuple[subprocess.Popen[str], int, Path]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    state = tmp_path / "state.json"
    proc = lan.popen(lan.spy, sys.executable, str(script), ROUTER_IP, SPEAKER_IP, str(state),
                     stdout=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line[:1] == ["running"], line
    return proc, int(line[1]), state


def stop_agent(agent: subprocess.Popen[str], watchdog: int) -> None:
    if agent.poll() is None:
        agent.kill()
    agent.wait()
    assert agent.stdout is not None
    agent.stdout.close()
    if not pid_gone(watchdog):
        os.kill(watchdog, signal.SIGKILL)


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_agent_restores(fresh: FlatLan, tmp_path: Path, sig: int) -> None:
    lan = fresh
    agent, watchdog, state = start_agent(lan, tmp_path)
    try:
        assert wait_for(lambda: poisoned(lan)), entries(lan)
        assert spy_sysctls(lan)["net.ipv4.ip_forward"] == "1"
        agent.send_signal(sig)
        assert agent.wait(timeout=10) == 128 + sig
        assert wait_for(lambda: true_entries(lan), 3), entries(lan)
        assert spy_sysctls(lan) == SYSCTLS
        assert read_state(state).clean
        assert read_state(state).restored_by is None  # the agent did it, not the watchdog
        assert wait_for(lambda: pid_gone(watchdog), 3)
    finally:
        stop_agent(agent, watchdog)


@pytest.mark.root
def test_the_watchdog_restores_after_sigkill(fresh: FlatLan, tmp_path: Path) -> None:
    lan = fresh
    agent, watchdog, state = start_agent(lan, tmp_path)
    try:
        assert wait_for(lambda: poisoned(lan)), entries(lan)
        assert not read_state(state).clean
        agent.kill()
        agent.wait()
        assert wait_for(lambda: true_entries(lan), 3.5), entries(lan)
        # Forwarding stays on until the corrections (2 s) are out: nothing drops meanwhile.
        assert wait_for(lambda: spy_sysctls(lan) == SYSCTLS, 3), spy_sysctls(lan)
        assert wait_for(lambda: pid_gone(watchdog), 3)
        restored = read_state(state)
        assert (restored.clean, restored.restored_by) == (True, "watchdog")
    finally:
        stop_agent(agent, watchdog)


CHOOSING_AGENT = AGENT.replace(
    "while True:\n    time.sleep(1)\n",
    # "add IP" / "remove IP" from stdin, as the agent's intercept op does.
    "for line in sys.stdin:\n    verb, ip = line.split()\n    getattr(it, verb)(ip)\n"
    "    print('done', flush=True)\n",
)
assert CHOOSING_AGENT != AGENT
FORWARDING = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.send_redirects": "0",
    f"net.ipv4.conf.{IF}.send_redirects": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
}
SAVED = {  # what the state file says to put back while they are in force
    "net/ipv4/ip_forward": "0",
    "net/ipv4/conf/all/send_redirects": "1",
    f"net/ipv4/conf/{IF}/send_redirects": "1",
    "net/ipv4/conf/all/accept_redirects": "1",
}


@pytest.mark.root
def test_forwarding_is_off_while_no_device_is_chosen(fresh: FlatLan, tmp_path: Path) -> None:
    lan = fresh
    script = tmp_path / "agent.py"
    script.write_text(CHOOSING_AGENT)
    state = tmp_path / "state.json"
    agent = lan.popen(lan.spy, sys.executable, str(script), ROUTER_IP, SPEAKER_IP, str(state),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                      cwd=REPO)  # fmt: skip
    assert agent.stdin is not None and agent.stdout is not None
    line = agent.stdout.readline().split()
    assert line[:1] == ["running"], line
    watchdog = int(line[1])

    def tell(verb: str) -> None:
        assert agent.stdin is not None and agent.stdout is not None
        agent.stdin.write(f"{verb} {SPEAKER_IP}\n")
        agent.stdin.flush()
        assert agent.stdout.readline() == "done\n"

    try:
        assert wait_for(lambda: poisoned(lan)), entries(lan)
        assert spy_sysctls(lan) == FORWARDING and read_state(state).sysctls == SAVED
        # The last device un-chosen: true entries first, then the sysctls as they were.
        tell("remove")
        assert wait_for(lambda: true_entries(lan), 3), entries(lan)
        assert wait_for(lambda: spy_sysctls(lan) == SYSCTLS, 5), spy_sysctls(lan)
        idle = read_state(state)
        assert (idle.targets, idle.sysctls, idle.clean) == ({}, {}, False)
        assert not pid_gone(watchdog)  # it stays for the next choice
        # Chosen again: forwarding is on before the answer, and saved for the watchdog.
        tell("add")
        assert spy_sysctls(lan) == FORWARDING
        again = read_state(state)
        assert (again.targets, again.sysctls) == ({SPEAKER_IP: SPEAKER_MAC}, SAVED)
        assert wait_for(lambda: poisoned(lan)), entries(lan)
        assert lan.tcp_echo(lan.speaker, ROUTER_IP, ECHO_PORT, b"through") == b"through"
        # Killed outright now: the watchdog still puts everything back.
        agent.kill()
        agent.wait()
        assert wait_for(lambda: true_entries(lan), 3.5), entries(lan)
        assert wait_for(lambda: spy_sysctls(lan) == SYSCTLS, 3), spy_sysctls(lan)
        assert wait_for(lambda: pid_gone(watchdog), 3)
        assert read_state(state).restored_by == "watchdog"
    finally:
        agent.stdin.close()
        stop_agent(agent, watchdog)


@pytest.mark.root
def test_refuses_when_another_spyglass_intercepts(fresh: FlatLan) -> None:
    lan = fresh
    first = Interceptor(IF, ROUTER_IP, netns=lan.other)
    first.add(SPEAKER_IP)
    with first:
        assert wait_for(lambda: entries(lan) == (OTHER_MAC, OTHER_MAC))
        second = Interceptor(IF, ROUTER_IP, netns=lan.spy)
        second.add(SPEAKER_IP)
        with pytest.raises(InterceptConflict) as err:
            second.start()
        msg = str(err.value)
        assert "10.79.0.1 is already being intercepted by another Spyglass at" in msg
        assert OTHER_MAC in msg and ROUTER_MAC in msg
        assert f"10.79.0.20 is already being intercepted by another Spyglass at {OTHER_MAC}" in msg
        assert not second.running
        assert spy_sysctls(lan) == SYSCTLS
        assert entries(lan) == (OTHER_MAC, OTHER_MAC)  # the second one poisoned nothing
        second.close()
    assert wait_for(lambda: true_entries(lan), 3)


@pytest.mark.root
def test_refuses_when_an_address_answers_from_two_macs(fresh: FlatLan) -> None:
    """A plain ARP spoofer in the fourth namespace answers every who-has for the speaker."""
    lan = fresh
    sock = lan.call(lan.other, ArpSocket, IF)
    halt = threading.Event()

    def spoof() -> None:
        while not halt.is_set():
            f = sock.recv(0.1)
            if f is not None and f.arp.op == OP_REQUEST and f.arp.target_ip == SPEAKER_IP:
                sock.send(build_arp(OP_REPLY, OTHER_MAC, SPEAKER_IP, f.arp.sender_mac,
                                    f.arp.sender_ip, eth_src=OTHER_MAC,
                                    eth_dst=f.arp.sender_mac))  # fmt: skip

    t = threading.Thread(target=spoof, daemon=True)
    t.start()
    try:
        it = Interceptor(IF, ROUTER_IP, netns=lan.spy)
        it.add(SPEAKER_IP)
        with pytest.raises(InterceptConflict, match="10.79.0.20 answers ARP from 2 MACs") as err:
            it.start()
        assert f"({SPEAKER_MAC}, {OTHER_MAC})" in str(err.value)
        assert spy_sysctls(lan) == SYSCTLS
        it.close()
    finally:
        halt.set()
        t.join()
        sock.close()
    lan.flush_neigh(lan.router)  # the spoofer's answers were to the spyglass host only


@pytest.mark.root
def test_claims_change_no_kernel_cache(fresh: FlatLan) -> None:
    """The 'already intercepted' answer uses an opcode kernels ignore: the asker's cache for
    the router stays true."""
    lan = fresh
    assert lan.ping(lan.other, ROUTER_IP)
    sock = lan.call(lan.spy, ArpSocket, IF)
    try:
        for _ in range(3):
            sock.send(claim(SPY_MAC, ROUTER_IP, OTHER_MAC, OTHER_IP))
        time.sleep(0.2)
        assert lan.neigh(lan.other, ROUTER_IP) == ROUTER_MAC
    finally:
        sock.close()
