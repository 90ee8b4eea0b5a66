"""Live frames through a memory-mapped TPACKET_V3 receive ring, the way libpcap reads them.

The kernel writes frames into blocks of a ring shared with us and hands a block over when it is
full or its retire timeout expires. A batch is one bytes copy of the ready blocks (ring headers
included, so no per-frame copy) plus numpy arrays gathered from the headers; the blocks go back
to the kernel as soon as they are copied and indexed. No system call per frame, none at all
while blocks are ready, and for dense blocks no Python loop per frame either.

The reader relies on x86-64's load ordering (or a Python interpreter's worth of delay) between
seeing a block's status flip and reading its frames, as there is no barrier to call from Python.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import select
import socket
import struct
import time

import numpy as np

from spyglass.capture.bpf import BpfProgram, compile_optional
from spyglass.capture.live import DEFAULT_SNAPLEN, CaptureStats
from spyglass.capture.netns import in_netns, own_netns_fd
from spyglass.capture.packetsock import (
    GONE_ERRNOS,
    PACKET_STATISTICS,
    SOL_PACKET,
    InterfaceGone,
    attach_filter,
    bind_ethernet,
    check_capture_args,
    open_packet_socket,
    open_retrying,
    replace_filter,
    require_ifindex,
    why_down,
)
from spyglass.core.frames import I64, LINKTYPE_ETHERNET, FrameBatch

# linux/if_packet.h
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
_REQ3 = struct.Struct("7I")  # struct tpacket_req3
_STATS3 = struct.Struct("III")  # struct tpacket_stats_v3

# Offsets (in 32-bit words) in struct tpacket_block_desc / tpacket_hdr_v1.
_BLK_STATUS, _BLK_NUM_PKTS, _BLK_FIRST, _BLK_LEN = 2, 3, 4, 5
# struct tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status (u32), then tp_mac (u16).
_SEC, _NSEC, _SNAPLEN, _LEN = 1, 2, 3, 4  # in 32-bit words
_MAC_HALF = 12  # in 16-bit words
_SLL_IFINDEX = 52  # bytes: the struct sockaddr_ll after the header, its sll_ifindex
# Above this many bytes per frame, following the chain in Python beats scanning the block.
_SCAN_MAX_BYTES = 768

DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_BLOCK_COUNT = 32  # 32 MiB: about 0.5 s of 200-byte datagrams at 200k/s
MIN_BLOCK_COUNT = 4
DEFAULT_RETIRE_MS = 50  # a quiet network still delivers within this
FRAME_SIZE = 2048  # nominal: TPACKET_V3 packs frames of any size into a block


class RingUnavailable(OSError):
    """The kernel would not give this socket a TPACKET_V3 ring (old kernel, no memory)."""


class _Ring:
    """One open socket with its mapped ring, and the views the reader walks it through."""

    def __init__(self, sock: socket.socket, ifindex: int, block_size: int, block_count: int):
        self.sock = sock
        self.ifindex = ifindex
        self.block_size = block_size
        self.block_count = block_count
        size = block_size * block_count
        # Python's mmap dup()s the fd: close() below must close the map as well as the socket.
        self.mm = mmap.mmap(sock.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.mv = memoryview(self.mm)
        self.mv32 = self.mv.cast("I")
        self.a32 = np.frombuffer(self.mm, dtype=np.uint32)
        self.a16 = np.frombuffer(self.mm, dtype=np.uint16)
        self.cur = 0  # the next block to hand out, in the kernel's order

    def close(self) -> None:
        # Every export of the map must be gone before it can be unmapped.
        empty = np.empty(0, dtype=np.uint32)
        self.a32, self.a16 = empty, empty.view(np.uint16)
        self.mv32.release()
        self.mv.release()
        with contextlib.suppress(BufferError):  # a view escaped: unmapped once collected
            self.mm.close()
        self.sock.close()


class RingCapture:
    """AF_PACKET capture of one interface through a TPACKET_V3 ring; LiveCapture's interface.

    The socket lives in the network namespace of the thread that created the capture;
    reopen() reopens in that same namespace whichever thread calls it, with the filter in
    force (the last set_filter()'s, else the one it was opened with). When the kernel
    cannot allocate ``block_count`` blocks, fewer are tried down to ``MIN_BLOCK_COUNT``,
    then RingUnavailable is raised (``open_capture_source`` falls back to LiveCapture).
    """

    def __init__(
        self,
        ifname: str,
        bpf_filter: str | None = None,
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        promisc: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        block_count: int = DEFAULT_BLOCK_COUNT,
        retire_ms: int = DEFAULT_RETIRE_MS,
    ) -> None:
        check_capture_args(ifname, snaplen)
        if block_size < FRAME_SIZE or block_size % mmap.PAGESIZE:
            raise ValueError(
                f"ring block size {block_size} must be a multiple of the page size "
                f"({mmap.PAGESIZE}) and at least {FRAME_SIZE}"
            )
        if block_count < 1 or not 1 <= retire_ms <= 60_000:
            raise ValueError(f"bad ring shape: {block_count} blocks, {retire_ms} ms timeout")
        self.ifname = ifname
        self.snaplen = snaplen
        self.promisc = promisc
        self.block_size = block_size
        self.block_count = block_count
        self.retire_s = retire_ms / 1000
        self.program = _truncating(compile_optional(bpf_filter), snaplen)
        self._packets = self._drops = self._freezes = 0
        self._gone: InterfaceGone | None = None
        self._pending: InterfaceGone | None = None
        self._pending_until = 0.0
        self._leftover: FrameBatch | None = None
        self._netns_fd = own_netns_fd()
        try:
            self._ring = self._open()
        except BaseException:
            os.close(self._netns_fd)
            raise
        self._poll = self._make_poll()

    @property
    def ring_bytes(self) -> int:
        """Size of the mapped ring actually obtained (smaller than asked after ENOMEM)."""
        return self._ring.block_size * self._ring.block_count

    # -- lifecycle -------------------------------------------------------------------------

    def _open(self) -> _Ring:
        return in_netns(self._netns_fd, self._open_here)

    def _open_here(self) -> _Ring:
        # Ring and filter are in place before bind(), so before the first frame.
        sock = open_packet_socket()
        ring: _Ring | None = None
        try:
            try:
                sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            except OSError as exc:
                raise RingUnavailable(exc.errno, f"TPACKET_V3 not supported: {exc}") from None
            blocks = self._request_ring(sock)
            attach_filter(sock, self.program)
            ifindex = require_ifindex(sock, self.ifname)
            ring = _Ring(sock, ifindex, self.block_size, blocks)
            bind_ethernet(sock, self.ifname, ifindex, promisc=self.promisc)
        except BaseException:
            if ring is not None:
                ring.close()
            else:
                sock.close()
            raise
        return ring

    def _request_ring(self, sock: socket.socket) -> int:
        """Set up the ring, halving the block count on ENOMEM; the count obtained."""
        count = self.block_count
        tov = round(self.retire_s * 1000)
        while True:
            frames = self.block_size // FRAME_SIZE * count
            req = _REQ3.pack(self.block_size, count, FRAME_SIZE, frames, tov, 0, 0)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
                return count
            except OSError as exc:
                if exc.errno == errno.ENOMEM and count > MIN_BLOCK_COUNT:
                    count = max(MIN_BLOCK_COUNT, count // 2)
                    continue
                size = self.block_size * count >> 20
                raise RingUnavailable(
                    exc.errno, f"cannot set up a {size} MiB receive ring: {exc.strerror}"
                ) from None

    def _make_poll(self) -> select.poll:
        poll = select.poll()
        poll.register(self._ring.sock.fileno(), select.POLLIN | select.POLLERR)
        return poll

    def set_filter(self, bpf_filter: str | None) -> None:
        """Replace the capture filter (None or blank: everything) on the open socket in one
        step; reopen() attaches it from then on. ValueError when it does not compile, and
        the filter in force stays. While the socket is closed (a reopen that gave up) it is
        only kept, for the next reopen(). Frames already in the ring stay as they came."""
        program = _truncating(compile_optional(bpf_filter), self.snaplen)
        if self._ring.sock.fileno() >= 0:
            replace_filter(self._ring.sock, program)
        self.program = program  # only once in force: a failed swap leaves the old one

    def reopen(self, attempts: int = 10, delay_s: float = 0.5) -> None:
        """Close and open again (same interface, filter in force, ring and namespace),
        retrying while the interface is absent; InterfaceGone after ``attempts`` tries.
        Counters carry over."""
        self._collect_stats()
        self._ring.close()
        self._leftover = None
        self._ring = open_retrying(self.ifname, self._open, attempts, delay_s)
        self._gone = self._pending = None
        self._poll = self._make_poll()

    def close(self) -> None:
        self._leftover = None
        if self._ring.sock.fileno() >= 0:
            self._ring.close()
        if self._netns_fd >= 0:
            os.close(self._netns_fd)
            self._netns_fd = -1

    def __enter__(self) -> RingCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._ring.sock.fileno()

    # -- reading ---------------------------------------------------------------------------

    def read_batch(self, max_frames: int = 4096, timeout_s: float = 0.2) -> FrameBatch:
        """Frames received so far, up to ``max_frames``; waits at most ``timeout_s`` for the
        first one (an empty batch when none came). Raises InterfaceGone when the interface
        disappeared, after handing out the frames that arrived before.

        Frames come a block at a time, so a batch may hold fewer than ``max_frames`` although
        more have arrived; the kernel hands a block over when it fills or after the retire
        timeout, which bounds how late a frame can be."""
        ring = self._ring
        if ring.sock.fileno() < 0:
            raise ValueError(f"capture on {self.ifname!r} is closed")
        if self._gone is not None:
            raise self._gone
        if max_frames < 1:
            return _empty_batch()
        if self._leftover is not None:
            return self._take_leftover(max_frames)
        mv32, bs = ring.mv32, ring.block_size
        deadline = -1.0
        while True:
            if mv32[(ring.cur * bs >> 2) + _BLK_STATUS] & TP_STATUS_USER:
                return self._harvest(max_frames)
            if self._pending is not None:
                # The block the kernel was filling still holds frames: its timer will hand
                # it over. Raise once it has, or it was empty, or it took too long.
                filling = mv32[(ring.cur * bs >> 2) + _BLK_NUM_PKTS]
                if not filling or time.monotonic() > self._pending_until:
                    self._gone, self._pending = self._pending, None
                    raise self._gone
                time.sleep(self.retire_s / 5)
                continue
            now = time.monotonic()
            if deadline < 0:
                deadline = now + max(0.0, timeout_s)
            if now >= deadline:
                return _empty_batch()
            for _fd, events in self._poll.poll(math.ceil((deadline - now) * 1000)):
                if events & select.POLLERR:
                    self._check_error()

    def _check_error(self) -> None:
        err = self._ring.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err in GONE_ERRNOS:
            self._pending = InterfaceGone(self.ifname, self._why_down())
            self._pending_until = time.monotonic() + 4 * self.retire_s + 0.5
        elif err:
            raise OSError(err, f"capture on {self.ifname!r}: {os.strerror(err)}")

    def _harvest(self, max_frames: int) -> FrameBatch:
        """Copy out the ready block at the ring's cursor, index its frames and hand it back to
        the kernel; what exceeds ``max_frames`` waits for the next calls."""
        ring = self._ring
        mv32, bs = ring.mv32, ring.block_size
        base = ring.cur * bs
        word = base >> 2
        n = mv32[word + _BLK_NUM_PKTS]
        start, end = base + mv32[word + _BLK_FIRST], base + mv32[word + _BLK_LEN]
        try:
            w = self._heads(start, end, n)
            # One block per batch: copies of several blocks at once are big enough for
            # malloc to map fresh pages for each, and the page faults cost more than the copy.
            buf = bytes(ring.mv[start:end])
            batch = self._index(w, start, buf)
        finally:
            # Copied and indexed: the block is the kernel's again.
            mv32[word + _BLK_STATUS] = TP_STATUS_KERNEL
            ring.cur = (ring.cur + 1) % ring.block_count
        if len(batch) > max_frames:
            self._leftover = batch
            return self._take_leftover(max_frames)
        return batch

    def _heads(self, start: int, end: int, n: int) -> I64:
        """Word positions in the map of the ``n`` frame headers packed in ``start:end``."""
        ring = self._ring
        if n and end - start <= n * _SCAN_MAX_BYTES:
            # Dense block: rather than follow tp_next_offset in Python, find every 8-aligned
            # position whose sockaddr_ll carries our ifindex, then check that they chain
            # exactly through tp_next_offset (payload bytes that happen to match spoil the
            # count and send us to the walk below).
            a32 = ring.a32
            found = np.flatnonzero(
                a32[(start + _SLL_IFINDEX) >> 2 : (end + _SLL_IFINDEX) >> 2 : 2] == ring.ifindex
            )
            w = (found << 1) + (start >> 2)
            if len(w) == n and w[0] == start >> 2 and np.array_equal(np.diff(w) << 2, a32[w[:-1]]):
                return w
        # Follow tp_next_offset (in 32-bit words; headers are 8-byte aligned).
        mv32 = ring.mv32
        heads: list[int] = []
        append = heads.append
        pos = start >> 2
        for _ in range(n):
            append(pos)
            pos += mv32[pos] >> 2
        return np.fromiter(heads, dtype=np.int64, count=n)

    def _index(self, w: I64, start: int, buf: bytes) -> FrameBatch:
        """The batch for frames whose headers sit at words ``w`` of the map; ``buf`` is the
        copy of the map from ``start`` on."""
        a32 = self._ring.a32
        offset = (w << 2) - start + self._ring.a16[(w << 1) + _MAC_HALF]
        caplen = np.minimum(a32[w + _SNAPLEN], self.snaplen).astype(np.int32)
        if len(w) and (offset.min() < 0 or int((offset + caplen).max()) > len(buf)):
            raise RuntimeError(f"capture ring of {self.ifname!r} holds a frame outside its block")
        return FrameBatch(
            buf=buf,
            offset=offset,
            caplen=caplen,
            wirelen=a32[w + _LEN].astype(np.int32),
            ts=a32[w + _SEC].astype(np.float64) + a32[w + _NSEC].astype(np.float64) * 1e-9,
            linktype=np.full(len(w), LINKTYPE_ETHERNET, dtype=np.uint16),
        )

    def _take_leftover(self, max_frames: int) -> FrameBatch:
        rest = self._leftover
        assert rest is not None
        if len(rest) <= max_frames:
            self._leftover = None
            return rest
        self._leftover = _slice(rest, max_frames, len(rest))
        return _slice(rest, 0, max_frames)

    def stats(self) -> CaptureStats:
        """Cumulative kernel counters since this capture was opened (across reopen())."""
        self._collect_stats()
        return CaptureStats(self._packets, self._drops)

    def _collect_stats(self) -> None:
        sock = self._ring.sock
        if sock.fileno() < 0:
            return
        # Reading PACKET_STATISTICS resets the kernel's counters: accumulate here.
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size)
        packets, drops, freezes = _STATS3.unpack(raw)
        self._packets += packets
        self._drops += drops
        self._freezes += freezes

    # -- interface state -------------------------------------------------------------------

    def _why_down(self) -> str:
        return why_down(self._ring.sock, self.ifname, self._ring.ifindex)


def _truncating(program: BpfProgram | None, snaplen: int) -> BpfProgram | None:
    """The filter with its accepting returns set to ``snaplen``: the kernel then copies at
    most that much into the ring (a ring has no per-frame user-space cut to rely on)."""
    ret_k = 0x06  # BPF_RET | BPF_K
    if program is None:
        if snaplen >= DEFAULT_SNAPLEN:
            return None
        return BpfProgram("", ((ret_k, 0, 0, snaplen),))
    insns = tuple(
        (c, jt, jf, snaplen) if c == ret_k and k != 0 else (c, jt, jf, k)
        for c, jt, jf, k in program.insns
    )
    return BpfProgram(program.expression, insns)


def _slice(batch: FrameBatch, a: int, b: int) -> FrameBatch:
    return FrameBatch(
        buf=batch.buf,
        offset=batch.offset[a:b],
        caplen=batch.caplen[a:b],
        wirelen=batch.wirelen[a:b],
        ts=batch.ts[a:b],
        linktype=batch.linktype[a:b],
    )


def _empty_batch() -> FrameBatch:
    return FrameBatch(
        buf=b"",
        offset=np.empty(0, dtype=np.int64),
        caplen=np.empty(0, dtype=np.int32),
        wirelen=np.empty(0, dtype=np.int32),
        ts=np.empty(0, dtype=np.float64),
        linktype=np.empty(0, dtype=np.uint16),
    )
