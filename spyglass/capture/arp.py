"""ARP frames on one Ethernet interface: build them with struct, send and receive them on a raw
AF_PACKET socket. Used by intercept mode, its watchdog and the ARP sweep.

Stdlib only (plus the pure ARP parser): the watchdog imports this and must start fast.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import select
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from spyglass.capture.netns import in_netns as in_netns  # intercept imports it from here
from spyglass.core.proto import MalformedPayload, mac_str
from spyglass.core.proto.arp import ArpInfo, parse_arp

ETH_P_ARP = 0x0806
ARPHRD_ETHER = 1
OP_REQUEST = 1
OP_REPLY = 2
# RFC 5494's experimental opcode: kernels drop it (no cache changes anywhere), Spyglass reads it
# as "this IP is being intercepted by the sender" so a second interceptor refuses to start.
OP_CLAIM = 25
PACKET_OUTGOING = 4
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B
BROADCAST = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
_MIN_FRAME = 60  # Ethernet minimum without FCS; real NICs pad anyway, veths do not
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


class ArpError(OSError):
    """The interface cannot be used for ARP (missing, down, not Ethernet, no IPv4 address)."""


@dataclass(frozen=True, slots=True)
class ArpFrame:
    """A received ARP frame: the Ethernet addresses it came with and the ARP message."""

    eth_src: str
    eth_dst: str
    arp: ArpInfo


def mac_bytes(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` (or with ``-``) as 6 bytes; ValueError naming the bad value."""
    raw = mac.replace(":", "").replace("-", "")
    try:
        b = bytes.fromhex(raw)
    except ValueError:
        b = b""
    if len(b) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return b


def build_arp(
    op: int,
    sender_mac: str,
    sender_ip: str,
    target_mac: str,
    target_ip: str,
    *,
    eth_src: str,
    eth_dst: str,
) -> bytes:
    """An Ethernet frame carrying one IPv4-over-Ethernet ARP message, padded to 60 bytes."""
    frame = _ETH.pack(mac_bytes(eth_dst), mac_bytes(eth_src), ETH_P_ARP) + _ARP.pack(
        ARPHRD_ETHER,
        0x0800,
        6,
        4,
        op,
        mac_bytes(sender_mac),
        socket.inet_aton(str(ipaddress.IPv4Address(sender_ip))),
        mac_bytes(target_mac),
        socket.inet_aton(str(ipaddress.IPv4Address(target_ip))),
    )
    return frame.ljust(_MIN_FRAME, b"\x00")


def parse_frame(frame: bytes) -> ArpFrame | None:
    """The ARP message in an Ethernet frame, or None when it is not a well-formed one."""
    if len(frame) < _ETH.size + 28:
        return None
    dst, src, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    try:
        info = parse_arp(frame[_ETH.size :])
    except MalformedPayload:
        return None
    return ArpFrame(eth_src=mac_str(src), eth_dst=mac_str(dst), arp=info)


def who_has(our_mac: str, our_ip: str, ip: str) -> bytes:
    """A broadcast request for ``ip``."""
    return build_arp(OP_REQUEST, our_mac, our_ip, ZERO_MAC, ip, eth_src=our_mac, eth_dst=BROADCAST)


def claim(our_mac: str, ip: str, to_mac: str, to_ip: str) -> bytes:
    """Tell ``to_mac`` that ``ip`` is intercepted by us (opcode no kernel acts on)."""
    return build_arp(OP_CLAIM, our_mac, ip, to_mac, to_ip, eth_src=our_mac, eth_dst=to_mac)


def _to(eth_src: str, eth_dst: str, op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    return build_arp(op, sha, spa, tha, tpa, eth_src=eth_src, eth_dst=eth_dst)


def poison_frames(
    our_mac: str, router_ip: str, router_mac: str, target_ip: str, target_mac: str
) -> list[bytes]:
    """Unicast replies telling the target the router is at our MAC, and the router the target is.

    The Ethernet source stays ours: claiming another MAC there would teach the switch a wrong port.
    """
    return [
        _to(our_mac, target_mac, OP_REPLY, our_mac, router_ip, target_mac, target_ip),
        _to(our_mac, router_mac, OP_REPLY, our_mac, target_ip, router_mac, router_ip),
    ]


def correction_frames(
    our_mac: str, router_ip: str, router_mac: str, target_ip: str, target_mac: str
) -> list[bytes]:
    """Frames restoring the true entries on both sides.

    A reply is what poisoned the caches; a request in the true owner's name also overrides a
    Linux entry updated less than ``locktime`` (1 s) ago, which a reply does not.
    """
    return [
        _to(our_mac, target_mac, OP_REPLY, router_mac, router_ip, target_mac, target_ip),
        _to(our_mac, router_mac, OP_REPLY, target_mac, target_ip, router_mac, router_ip),
        _to(our_mac, target_mac, OP_REQUEST, router_mac, router_ip, ZERO_MAC, target_ip),
        _to(our_mac, router_mac, OP_REQUEST, target_mac, target_ip, ZERO_MAC, router_ip),
    ]


def _ifreq_ipv4(sock: socket.socket, ifname: str, request: int) -> str | None:
    ifreq = struct.pack("16s16x", ifname.encode())
    try:
        res = fcntl.ioctl(sock.fileno(), request, ifreq)
    except OSError:
        return None
    return socket.inet_ntoa(res[20:24])


class ArpSocket:
    """A raw socket that sends and receives ARP frames on one interface.

    It lives in the network namespace it was opened in (``netns_fd``, else the calling
    thread's), whichever thread uses it afterwards.
    """

    def __init__(self, ifname: str, *, netns_fd: int | None = None) -> None:
        if not ifname or len(ifname.encode()) >= 16 or "/" in ifname:
            raise ValueError(f"not a valid interface name: {ifname!r}")
        self.ifname = ifname
        self._sock, self.mac, self.ip, self.netmask = in_netns(netns_fd, self._open)
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)

    def _open(self) -> tuple[socket.socket, str, str | None, str | None]:
        # Protocol 0 until bind: no frame from another interface slips into the queue.
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise PermissionError(
                errno.EPERM, "ARP needs CAP_NET_RAW (run the agent as root or with capabilities)"
            ) from None
        try:
            try:
                sock.bind((self.ifname, ETH_P_ARP))
            except OSError as exc:
                raise ArpError(
                    exc.errno, f"cannot use interface {self.ifname!r}: {exc.strerror}"
                ) from None
            hatype, hwaddr = sock.getsockname()[3:5]
            if hatype != ARPHRD_ETHER or len(hwaddr) != 6:
                raise ArpError(errno.EINVAL, f"interface {self.ifname!r} is not Ethernet")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                ip = _ifreq_ipv4(probe, self.ifname, SIOCGIFADDR)
                mask = _ifreq_ipv4(probe, self.ifname, SIOCGIFNETMASK)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock, mac_str(hwaddr), ip, mask

    def require_ip(self) -> str:
        if self.ip is None:
            raise ArpError(errno.EADDRNOTAVAIL, f"interface {self.ifname!r} has no IPv4 address")
        return self.ip

    def network(self) -> ipaddress.IPv4Network:
        """The interface's own IPv4 network."""
        ip = self.require_ip()
        return ipaddress.IPv4Network(f"{ip}/{self.netmask or '255.255.255.255'}", strict=False)

    def send(self, frame: bytes) -> None:
        try:
            self._sock.send(frame)
        except BlockingIOError:
            # The device queue is full: wait briefly once, ARP is best effort beyond that.
            self._poll_out()
            self._sock.send(frame)

    def send_all(self, frames: Iterable[bytes]) -> None:
        for frame in frames:
            self.send(frame)

    def _poll_out(self) -> None:
        p = select.poll()
        p.register(self._sock.fileno(), select.POLLOUT)
        p.poll(100)

    def recv(self, timeout_s: float) -> ArpFrame | None:
        """The next ARP frame another host sent (ours are skipped), or None after ``timeout_s``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            try:
                data, addr = self._sock.recvfrom(2048)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._poll.poll(max(1, int(remaining * 1000)))
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            frame = parse_frame(data)
            if frame is not None:
                return frame

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ArpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()


def send_rounds(
    sock: ArpSocket, frames: list[bytes], rounds: int = 5, spacing_s: float = 0.5
) -> None:
    """Send ``frames`` ``rounds`` times, ``spacing_s`` apart (5 x 0.5 s spans 2 s)."""
    for i in range(rounds):
        if i:
            time.sleep(spacing_s)
        sock.send_all(frames)
