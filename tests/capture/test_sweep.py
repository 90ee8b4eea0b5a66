"""ARP sweep: finds the hosts of the flat namespace LAN with their MACs; refuses big subnets."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator

import pytest

from spyglass.capture.arp import OP_REPLY, OP_REQUEST, ArpSocket, build_arp
from spyglass.capture.sweep import sweep, sweep_all, sweep_targets
from tests.netlab.flatlan import (
    IF,
    OTHER_IP,
    OTHER_MAC,
    ROUTER_IP,
    ROUTER_MAC,
    SPEAKER_IP,
    SPEAKER_MAC,
    SPY_IP,
    FlatLan,
    flat_lan_or_skip,
)

OWN = ipaddress.IPv4Network("10.79.0.0/24")


def test_targets_are_the_hosts_minus_our_own_address() -> None:
    targets = sweep_targets("10.79.0.0/24", OWN, SPY_IP)
    assert len(targets) == 253
    assert targets[0] == "10.79.0.1" and targets[-1] == "10.79.0.254"
    assert SPY_IP not in targets
    assert sweep_targets("10.79.0.16/30", OWN, SPY_IP) == ["10.79.0.17", "10.79.0.18"]
    assert sweep_targets("10.79.0.20/32", OWN, SPY_IP) == ["10.79.0.20"]


def test_a_22_is_allowed_a_21_or_16_is_refused() -> None:
    wide = ipaddress.IPv4Network("10.76.0.0/14")
    assert len(sweep_targets("10.79.0.0/22", wide, "10.79.0.5")) == 1021
    for subnet in ("10.79.0.0/21", "10.79.0.0/16", "0.0.0.0/0"):
        with pytest.raises(ValueError, match=r"refusing to sweep .*at most a /22"):
            sweep_targets(subnet, wide, "10.79.0.5")


def test_bad_and_off_link_subnets_are_named() -> None:
    with pytest.raises(ValueError, match="not an IPv4 subnet: 'fd00::/120'"):
        sweep_targets("fd00::/120", OWN, SPY_IP)
    with pytest.raises(ValueError, match="not an IPv4 subnet: 'kitchen'"):
        sweep_targets("kitchen", OWN, SPY_IP)
    with pytest.raises(ValueError, match=r"192\.168\.1\.0/24 is not on the interface's network"):
        sweep_targets("192.168.1.0/24", OWN, SPY_IP)
    with pytest.raises(ValueError, match="sweep rate must be positive"):
        sweep(IF, rate=0)


@pytest.fixture(scope="module")
def lan() -> Iterator[FlatLan]:
    with flat_lan_or_skip() as lab:
        yield lab


@pytest.mark.root
def test_sweep_finds_router_speaker_and_other_host(lan: FlatLan) -> None:
    found = sweep(IF, netns=lan.spy, rate=2000, timeout_s=0.5)
    assert found == {ROUTER_IP: ROUTER_MAC, SPEAKER_IP: SPEAKER_MAC, OTHER_IP: OTHER_MAC}


@pytest.mark.root
def test_sweep_of_a_small_subnet_and_a_refused_16(lan: FlatLan) -> None:
    assert sweep(IF, "10.79.0.16/28", netns=lan.spy, timeout_s=0.3) == {SPEAKER_IP: SPEAKER_MAC}
    with pytest.raises(ValueError, match=r"refusing to sweep 10\.79\.0\.0/16: 65536 addresses"):
        sweep(IF, "10.79.0.0/16", netns=lan.spy)
    with pytest.raises(ValueError, match="no network namespace named 'sg-nope-1'"):
        sweep(IF, netns="sg-nope-1")


@pytest.mark.root
def test_sweep_all_reports_an_address_answering_twice(lan: FlatLan) -> None:
    sock = lan.call(lan.other, ArpSocket, IF)
    halt = threading.Event()

    def spoof() -> None:
        while not halt.is_set():
            f = sock.recv(0.1)
            if f is not None and f.arp.op == OP_REQUEST and f.arp.target_ip == ROUTER_IP:
                sock.send(build_arp(OP_REPLY, OTHER_MAC, ROUTER_IP, f.arp.sender_mac,
                                    f.arp.sender_ip, eth_src=OTHER_MAC,
                                    eth_dst=f.arp.sender_mac))  # fmt: skip

    t = threading.Thread(target=spoof, daemon=True)
    t.start()
    try:
        found = sweep_all(IF, "10.79.0.0/29", netns=lan.spy, timeout_s=0.3)
    finally:
        halt.set()
        t.join()
        sock.close()
    assert sorted(found[ROUTER_IP]) == [ROUTER_MAC, OTHER_MAC]
