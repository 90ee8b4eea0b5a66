"""Before intercepting: are the addresses on the link, which are their true MACs, and does
another host already intercept them? Nothing here poisons: it only asks (who-has) and listens.

Intercept mode's errors live here too, as this is the first step that raises them.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable

from spyglass.capture.arp import OP_CLAIM, OP_REPLY, OP_REQUEST, ArpSocket, who_has


class InterceptError(RuntimeError):
    """Interception cannot start or continue; the message says why."""


class InterceptConflict(InterceptError):
    """Another host already intercepts (or claims) an address we were asked to intercept."""


def check_on_link(sock: ArpSocket, ifname: str, ips: Iterable[str]) -> None:
    """ValueError unless every address is on ``sock``'s network and is not ours."""
    net = sock.network()
    for ip in ips:
        if ipaddress.IPv4Address(ip) not in net:
            raise ValueError(f"{ip} is not on {ifname}'s network {net}")
        if ip == sock.ip:
            raise ValueError(f"{ip} is this host's own address on {ifname}")


def resolve_macs(ifname: str, netns_fd: int, ips: list[str], window_s: float) -> dict[str, str]:
    """The true MAC of each address, by ARP request; InterceptConflict when an address
    answers from more than one MAC, or another Spyglass claims it."""
    seen: dict[str, set[str]] = {ip: set() for ip in ips}
    claims: dict[str, set[str]] = {ip: set() for ip in ips}
    forged: list[str] = []
    with ArpSocket(ifname, netns_fd=netns_fd) as sock:
        our_ip = sock.require_ip()
        start = time.monotonic()
        deadline = start + window_s
        sends = [start + i * window_s / 3 for i in range(3)]
        while True:
            now = time.monotonic()
            while sends and sends[0] <= now:
                sends.pop(0)
                sock.send_all(who_has(sock.mac, our_ip, ip) for ip in ips)
            if now >= deadline:
                break
            frame = sock.recv(min(deadline, sends[0] if sends else deadline) - now)
            if frame is None or frame.arp.sender_ip not in seen:
                continue
            a = frame.arp
            if a.op == OP_CLAIM:
                claims[a.sender_ip].add(a.sender_mac)
            elif a.op in (OP_REQUEST, OP_REPLY):
                seen[a.sender_ip].add(a.sender_mac)
                if a.op == OP_REPLY and frame.eth_src != a.sender_mac:
                    forged.append(
                        f"the ARP answer for {a.sender_ip} says {a.sender_mac} but was "
                        f"sent by {frame.eth_src}"
                    )
    problems = []
    for ip in ips:
        if claims[ip]:
            true = ", ".join(sorted(seen[ip])) or "unknown"
            problems.append(
                f"{ip} is already being intercepted by another Spyglass at "
                f"{', '.join(sorted(claims[ip]))} (its own MAC: {true})"
            )
        elif len(seen[ip]) > 1:
            problems.append(
                f"{ip} answers ARP from {len(seen[ip])} MACs ({', '.join(sorted(seen[ip]))}):"
                " another host is already intercepting it (or the address is in use twice)"
            )
    problems += forged
    if problems:
        raise InterceptConflict("refusing to intercept: " + "; ".join(problems))
    missing = [ip for ip in ips if not seen[ip]]
    if missing:
        raise InterceptError(
            f"no ARP answer from {', '.join(missing)} on {ifname} (is it online?)"
        )
    return {ip: next(iter(seen[ip])) for ip in ips}
