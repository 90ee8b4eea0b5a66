"""The AF_PACKET socket plumbing both live readers share (LiveCapture and RingCapture): Linux
ABI numbers, opening, filtering and binding a socket to one Ethernet interface, and telling why
an interface stopped delivering.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import time
from collections.abc import Callable

from spyglass.capture.bpf import BpfProgram, SockFprog
from spyglass.capture.privileges import check_capture_privileges

# Linux ABI numbers the socket module does not export.
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
ETH_P_ALL = 0x0003
SIOCGIFFLAGS = 0x8913
SIOCGIFINDEX = 0x8933
IFF_UP = 0x1
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772  # frames carry a zeroed Ethernet header

GONE_ERRNOS = frozenset({errno.ENETDOWN, errno.ENODEV, errno.ENXIO})


class InterfaceGone(Exception):
    """The captured interface went away (unplugged, deleted) or down; reopen() to retry."""

    def __init__(self, ifname: str, reason: str) -> None:
        super().__init__(f"capture interface {ifname!r} {reason}")
        self.ifname = ifname
        self.reason = reason


def check_capture_args(ifname: str, snaplen: int) -> None:
    """ValueError naming the bad argument of a live capture."""
    if not ifname or len(ifname.encode()) >= 16 or "/" in ifname:
        raise ValueError(f"not a valid interface name: {ifname!r}")
    if snaplen < 64:
        raise ValueError(f"snaplen {snaplen} is too small (at least 64 bytes)")


def open_packet_socket() -> socket.socket:
    """A raw AF_PACKET socket that receives nothing yet; PermissionError saying what is missing.

    Protocol 0 receives nothing until bind(): whatever is set up before (filter, ring) is in
    place before the first frame arrives, so no unfiltered frame slips into the queue.
    """
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        hint = check_capture_privileges() or "permission denied"
        raise PermissionError(errno.EPERM, hint) from None


def attach_filter(sock: socket.socket, program: BpfProgram | None) -> None:
    if program is not None:
        fprog = SockFprog(program)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog.value)


def replace_filter(sock: socket.socket, program: BpfProgram | None) -> None:
    """Swap the filter of a socket that may already be receiving; the kernel swaps it in one
    step, so every frame meets either the old filter or the new one. None: no filter."""
    if program is not None:
        attach_filter(sock, program)
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: there was none
            raise


def ifindex_of(sock: socket.socket, ifname: str) -> int | None:
    # ioctls on the socket resolve names in the socket's namespace, not the caller's.
    ifreq = struct.pack("16si20x", ifname.encode(), 0)
    try:
        res = fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, ifreq)
    except OSError:
        return None
    return int(struct.unpack_from("16si", res)[1])


def require_ifindex(sock: socket.socket, ifname: str) -> int:
    ifindex = ifindex_of(sock, ifname)
    if ifindex is None:
        raise InterfaceGone(ifname, "does not exist")
    return ifindex


def bind_ethernet(sock: socket.socket, ifname: str, ifindex: int, *, promisc: bool) -> None:
    """Bind to ``ifname`` for every protocol, refuse a non-Ethernet one, make non-blocking."""
    try:
        sock.bind((ifname, ETH_P_ALL))
    except OSError as exc:
        if exc.errno in GONE_ERRNOS:
            raise InterfaceGone(ifname, "does not exist") from None
        raise
    hatype = sock.getsockname()[3]
    if hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        raise ValueError(
            f"interface {ifname!r} is not Ethernet (ARPHRD {hatype}); "
            "only Ethernet interfaces can be captured live"
        )
    if promisc:
        mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)


def why_down(sock: socket.socket, ifname: str, ifindex: int) -> str:
    """Why an interface the socket was bound to (as ``ifindex``) stopped delivering."""
    if ifindex_of(sock, ifname) != ifindex:
        return "was removed (unplugged or deleted)"
    ifreq = struct.pack("16sH22x", ifname.encode(), 0)
    try:
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]
    except OSError:
        return "was removed (unplugged or deleted)"
    return "went down" if not flags & IFF_UP else "reported the network down"


def open_retrying[T](ifname: str, open_fn: Callable[[], T], attempts: int, delay_s: float) -> T:
    """``open_fn()``, tried again every ``delay_s`` while the interface is absent; after
    ``attempts`` tries, InterfaceGone saying so."""
    last: InterfaceGone | None = None
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(delay_s)
        try:
            return open_fn()
        except InterfaceGone as exc:
            last = exc
    assert last is not None
    raise InterfaceGone(ifname, f"{last.reason} (gave up after {attempts} tries)")
