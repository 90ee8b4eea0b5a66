"""Live frames from one network interface through an AF_PACKET socket, in batches.

One recvmsg per frame lands directly in a preallocated buffer; the batch is handed out as one
bytes copy plus numpy arrays, the same FrameBatch a file reader produces.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import select
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from spyglass.capture.bpf import BpfProgram, compile_optional
from spyglass.capture.netns import in_netns, own_netns_fd
from spyglass.capture.packetsock import (
    GONE_ERRNOS,
    PACKET_STATISTICS,
    SOL_PACKET,
    attach_filter,
    bind_ethernet,
    check_capture_args,
    open_packet_socket,
    open_retrying,
    replace_filter,
    require_ifindex,
    why_down,
)
from spyglass.capture.packetsock import (
    InterfaceGone as InterfaceGone,  # imported from here by the agent and spyglass.capture
)
from spyglass.core.frames import LINKTYPE_ETHERNET, FrameBatch

if TYPE_CHECKING:
    from spyglass.capture.ring import RingCapture

log = logging.getLogger(__name__)

# Linux ABI numbers the socket module does not export (the shared ones are in packetsock).
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # also the cmsg type SCM_TIMESTAMPNS

DEFAULT_SNAPLEN = 262_144  # tcpdump's default: whole frames, including GSO super-frames
DEFAULT_RCVBUF = 32 << 20  # the default ~200 KB drops 0.4-7 % at 100k pps
DEFAULT_BATCH_BYTES = 8 << 20

MSG_TRUNC = socket.MSG_TRUNC
_TIMESPEC = struct.Struct("@qq")


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Kernel counters since open, as libpcap reports them.

    ``packets`` counts every frame that passed the filter, including the ``drops`` that did
    not fit in the receive buffer.
    """

    packets: int
    drops: int


class LiveCapture:
    """AF_PACKET capture of one interface (both directions), optionally BPF-filtered.

    The socket lives in the network namespace of the thread that created the capture;
    reopen() reopens in that same namespace whichever thread calls it, with the filter in
    force (the last set_filter()'s, else the one it was opened with).
    """

    def __init__(
        self,
        ifname: str,
        bpf_filter: str | None = None,
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        rcvbuf: int = DEFAULT_RCVBUF,
        promisc: bool = False,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        kernel_timestamps: bool = True,
    ) -> None:
        check_capture_args(ifname, snaplen)
        self.ifname = ifname
        self.snaplen = snaplen
        self.rcvbuf = rcvbuf
        self.promisc = promisc
        # Kernel timestamps need recvmsg, whose source address costs CPython an extra ioctl
        # per frame; without them frames are stamped on arrival in user space.
        self.kernel_timestamps = kernel_timestamps
        self.program: BpfProgram | None = compile_optional(bpf_filter)
        self._buf = bytearray(max(batch_bytes, 2 * snaplen))
        self._mv = memoryview(self._buf)
        self._ancsize = socket.CMSG_SPACE(_TIMESPEC.size)
        self._packets = 0
        self._drops = 0
        self._gone: InterfaceGone | None = None
        self._pending: InterfaceGone | None = None
        self._netns_fd = own_netns_fd()
        try:
            self._sock, self._ifindex = self._open()
        except BaseException:
            os.close(self._netns_fd)
            raise
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLERR)

    # -- lifecycle -------------------------------------------------------------------------

    def _open(self) -> tuple[socket.socket, int]:
        return in_netns(self._netns_fd, self._open_here)

    def _open_here(self) -> tuple[socket.socket, int]:
        sock = open_packet_socket()
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except PermissionError:  # no CAP_NET_ADMIN: capped by net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            if self.kernel_timestamps:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            attach_filter(sock, self.program)
            ifindex = require_ifindex(sock, self.ifname)
            bind_ethernet(sock, self.ifname, ifindex, promisc=self.promisc)
        except BaseException:
            sock.close()
            raise
        return sock, ifindex

    def set_filter(self, bpf_filter: str | None) -> None:
        """Replace the capture filter (None or blank: everything) on the open socket in one
        step; reopen() attaches it from then on. ValueError when it does not compile, and
        the filter in force stays. While the socket is closed (a reopen that gave up) it is
        only kept, for the next reopen()."""
        program = compile_optional(bpf_filter)
        if self._sock.fileno() >= 0:
            replace_filter(self._sock, program)
        self.program = program  # only once in force: a failed swap leaves the old one

    def reopen(self, attempts: int = 10, delay_s: float = 0.5) -> None:
        """Close and open again (same interface, filter in force and namespace), retrying
        while the interface is absent; InterfaceGone after ``attempts`` tries. Counters carry
        over."""
        self._collect_stats()
        self._close_socket()
        self._sock, self._ifindex = open_retrying(self.ifname, self._open, attempts, delay_s)
        self._gone = self._pending = None
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLERR)

    def close(self) -> None:
        self._close_socket()
        if self._netns_fd >= 0:
            os.close(self._netns_fd)
            self._netns_fd = -1

    def _close_socket(self) -> None:
        if self._sock.fileno() >= 0:
            self._sock.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- reading ---------------------------------------------------------------------------

    def read_batch(self, max_frames: int = 4096, timeout_s: float = 0.2) -> FrameBatch:
        """Frames received so far, up to ``max_frames``; waits at most ``timeout_s`` for the
        first one (an empty batch when none came). Raises InterfaceGone when the interface
        disappeared, after handing out the frames that arrived before."""
        if self._sock.fileno() < 0:
            raise ValueError(f"capture on {self.ifname!r} is closed")
        if self._gone is not None:
            raise self._gone
        deadline = time.monotonic() + max(0.0, timeout_s)
        mv, snap = self._mv, self.snaplen
        limit = len(self._buf) - snap
        recvmsg, recv_into = self._sock.recvmsg_into, self._sock.recv_into
        kernel_ts = self.kernel_timestamps
        now = time.time
        ancsize = self._ancsize
        unpack_ts = _TIMESPEC.unpack_from
        offsets: list[int] = []
        caplens: list[int] = []
        wirelens: list[int] = []
        stamps: list[float] = []
        used = 0
        while len(offsets) < max_frames and used <= limit:
            try:
                # MSG_TRUNC: the return value is the frame's full length even when cut.
                if kernel_ts:
                    n, anc, _flags, _addr = recvmsg([mv[used : used + snap]], ancsize, MSG_TRUNC)
                else:
                    n, anc = recv_into(mv[used : used + snap], snap, MSG_TRUNC), None
            except BlockingIOError:
                if offsets or self._pending is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._poll.poll(math.ceil(remaining * 1000))
                continue
            except OSError as exc:
                if exc.errno not in GONE_ERRNOS:
                    raise
                # The error comes before any frames still queued: drain them first, and
                # raise on the next call (or now, when there were none).
                self._pending = InterfaceGone(self.ifname, self._why_down())
                continue
            if anc:
                sec, nsec = unpack_ts(anc[0][2])
                stamps.append(sec + nsec * 1e-9)
            else:
                stamps.append(now())
            cap = n if n < snap else snap
            offsets.append(used)
            caplens.append(cap)
            wirelens.append(n)
            used += cap
        count = len(offsets)
        if not count and self._pending is not None:
            self._gone, self._pending = self._pending, None
            raise self._gone
        return FrameBatch(
            buf=bytes(mv[:used]),
            offset=np.array(offsets, dtype=np.int64),
            caplen=np.array(caplens, dtype=np.int32),
            wirelen=np.array(wirelens, dtype=np.int32),
            ts=np.array(stamps, dtype=np.float64),
            linktype=np.full(count, LINKTYPE_ETHERNET, dtype=np.uint16),
        )

    def stats(self) -> CaptureStats:
        """Cumulative kernel counters since this capture was opened (across reopen())."""
        self._collect_stats()
        return CaptureStats(self._packets, self._drops)

    def _collect_stats(self) -> None:
        if self._sock.fileno() < 0:
            return
        # Reading PACKET_STATISTICS resets the kernel's counters: accumulate here.
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        self._packets += packets
        self._drops += drops

    # -- interface state -------------------------------------------------------------------

    def _why_down(self) -> str:
        return why_down(self._sock, self.ifname, self._ifindex)


def open_capture_source(
    ifname: str,
    bpf_filter: str | None = None,
    *,
    ring: bool = True,
    snaplen: int = DEFAULT_SNAPLEN,
    promisc: bool = False,
    ring_blocks: int | None = None,
    ring_block_size: int | None = None,
    rcvbuf: int = DEFAULT_RCVBUF,
    kernel_timestamps: bool = True,
) -> LiveCapture | RingCapture:
    """A capture of ``ifname``: the memory-mapped ring when ``ring`` and the kernel allows it,
    else LiveCapture (one recvmsg per frame), with the reason logged as a warning.

    ``ring_blocks`` and ``ring_block_size`` (default 32 of 1 MiB) size the ring; ``rcvbuf``
    and ``kernel_timestamps`` apply to LiveCapture only. Errors that would hit both (no such
    interface, not Ethernet, no privileges, a bad filter) are raised, not fallen back from.
    """
    if ring:
        from spyglass.capture.ring import (
            DEFAULT_BLOCK_COUNT,
            DEFAULT_BLOCK_SIZE,
            RingCapture,
            RingUnavailable,
        )

        try:
            return RingCapture(
                ifname, bpf_filter, snaplen=snaplen, promisc=promisc,
                block_count=ring_blocks or DEFAULT_BLOCK_COUNT,
                block_size=ring_block_size or DEFAULT_BLOCK_SIZE,
            )  # fmt: skip
        except RingUnavailable as exc:
            log.warning(
                "capture on %r: %s; falling back to one recvmsg per frame (slower, drops "
                "packets sooner under load)", ifname, exc.strerror or exc,
            )  # fmt: skip
    return LiveCapture(
        ifname, bpf_filter, snaplen=snaplen, rcvbuf=rcvbuf, promisc=promisc,
        kernel_timestamps=kernel_timestamps,
    )  # fmt: skip


def interface_subnets(
    ifname: str, *, netns: str | None = None, include_link_local: bool = False
) -> list[str]:
    """The networks (CIDR, e.g. ``192.168.1.0/24``) configured on ``ifname``, IPv4 first.

    ``netns`` names an ``ip netns`` namespace to look in. ValueError when there is no such
    interface.
    """
    cmd = ["ip", "-j"] + (["-n", netns] if netns else []) + ["addr", "show", "dev", ifname]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except FileNotFoundError:
        raise RuntimeError(
            "the 'ip' command (iproute2) is needed to list interface addresses"
        ) from None
    if proc.returncode != 0:
        raise ValueError(f"no interface named {ifname!r}: {proc.stderr.strip()}")
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for link in json.loads(proc.stdout or "[]"):
        for addr in link.get("addr_info", []):
            if addr.get("scope") == "host":
                continue
            iface = ipaddress.ip_interface(f"{addr['local']}/{addr['prefixlen']}")
            if iface.is_link_local and not include_link_local:
                continue
            if iface.network not in nets:
                nets.append(iface.network)
    nets.sort(key=lambda n: n.version)
    return [str(n) for n in nets]
