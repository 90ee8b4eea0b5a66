"""On-demand ARP sweep: who is on this interface's subnet, and with which MAC.

One who-has per address at a bounded rate, replies collected until a timeout after the last
request. Only on-link subnets of at most 1022 hosts (/22): a sweep is for finding the speakers on a
home LAN, not for scanning networks.
"""

from __future__ import annotations

import ipaddress
import os
import time

from spyglass.capture.arp import OP_REPLY, ArpSocket, who_has

MAX_PREFIX = 22  # refuse anything larger than a /22
DEFAULT_RATE = 200.0  # requests per second: a /24 takes 1.3 s
DEFAULT_TIMEOUT_S = 1.0


def sweep_all(
    ifname: str,
    subnet: str | None = None,
    *,
    netns: str | None = None,
    rate: float = DEFAULT_RATE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, list[str]]:
    """Every MAC that answered for each address (more than one means a conflict or an
    interceptor). ``subnet`` defaults to the interface's own network; ``netns`` names an
    ``ip netns`` namespace holding the interface."""
    if rate <= 0:
        raise ValueError(f"sweep rate must be positive, not {rate}")
    netns_fd = _open_netns(netns)
    try:
        with ArpSocket(ifname, netns_fd=netns_fd) as sock:
            return _sweep(sock, subnet, rate, timeout_s)
    finally:
        if netns_fd is not None:
            os.close(netns_fd)


def sweep(
    ifname: str,
    subnet: str | None = None,
    *,
    netns: str | None = None,
    rate: float = DEFAULT_RATE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, str]:
    """{ip: mac} of the hosts that answered (the first MAC when an address answered twice)."""
    found = sweep_all(ifname, subnet, netns=netns, rate=rate, timeout_s=timeout_s)
    return {ip: macs[0] for ip, macs in found.items()}


def _open_netns(netns: str | None) -> int | None:
    if netns is None:
        return None
    if "/" in netns or netns in ("", ".", ".."):
        raise ValueError(f"not a network namespace name: {netns!r}")
    try:
        return os.open(f"/var/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"no network namespace named {netns!r}") from None


def sweep_targets(subnet: str, own: ipaddress.IPv4Network, own_ip: str) -> list[str]:
    """The addresses to ask for; ValueError when the subnet is too large or not on-link."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError:
        raise ValueError(f"not an IPv4 subnet: {subnet!r}") from None
    if net.prefixlen < MAX_PREFIX:
        raise ValueError(
            f"refusing to sweep {net}: {net.num_addresses} addresses; at most a /{MAX_PREFIX}"
        )
    if not net.subnet_of(own):
        raise ValueError(f"{net} is not on the interface's network {own}: ARP cannot reach it")
    hosts = net.hosts() if net.prefixlen < 31 else iter(net)
    skip = {own.network_address, own.broadcast_address, ipaddress.IPv4Address(own_ip)}
    return [str(ip) for ip in hosts if ip not in skip]


def _sweep(
    sock: ArpSocket, subnet: str | None, rate: float, timeout_s: float
) -> dict[str, list[str]]:
    own_ip = sock.require_ip()
    own = sock.network()
    targets = sweep_targets(subnet or str(own), own, own_ip)
    wanted = set(targets)
    found: dict[str, list[str]] = {}

    def collect(until: float) -> None:
        while (remaining := until - time.monotonic()) > 0:
            frame = sock.recv(remaining)
            if frame is None:
                return
            a = frame.arp
            if a.op == OP_REPLY and a.sender_ip in wanted and a.target_ip == own_ip:
                macs = found.setdefault(a.sender_ip, [])
                if a.sender_mac not in macs:
                    macs.append(a.sender_mac)

    interval = 1.0 / rate
    start = time.monotonic()
    for i, ip in enumerate(targets):
        collect(start + i * interval)
        sock.send(who_has(sock.mac, own_ip, ip))
    collect(time.monotonic() + timeout_s)
    return dict(sorted(found.items(), key=lambda kv: ipaddress.IPv4Address(kv[0])))
