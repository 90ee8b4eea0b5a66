"""LiveCapture on the lab's gateway: what the speaker sends is what the capture sees."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spyglass.capture import (
    CaptureStats,
    InterfaceGone,
    LiveCapture,
    check_capture_privileges,
    compile_filter,
    interface_subnets,
)
from spyglass.capture.bpf import _compile_with_scapy, _compile_with_tcpdump
from spyglass.capture.privileges import effective_capabilities
from spyglass.capture.ring import RingCapture
from spyglass.core.frames import FrameBatch
from tests.netlab.lan import (
    CLOUD_IP,
    GATEWAY_LAN_IF,
    SPEAKER_IP,
    VENDOR_HOSTS,
    HomeLan,
    lan_or_skip,
)

pytestmark = pytest.mark.root

GOOGLE = VENDOR_HOSTS["www.google.com"]
APPLE = VENDOR_HOSTS["guzzoni.apple.com"]


@pytest.fixture(scope="module")
def lan() -> Iterator[HomeLan]:
    with lan_or_skip() as lab:
        yield lab


def gateway_capture(
    lan: HomeLan, bpf: str | None, ifname: str = GATEWAY_LAN_IF, kernel_ts: bool = True
) -> LiveCapture:
    return lan.call(lan.gateway, LiveCapture, ifname, bpf, kernel_timestamps=kernel_ts)


def ipv4_frames(batch: FrameBatch) -> Iterator[tuple[str, str, int, int, int, int, bytes]]:
    """(src, dst, proto, sport, dport, transport payload length, tcp flags) of IPv4 frames."""
    for i in range(len(batch)):
        off = int(batch.offset[i])
        frame = batch.buf[off : off + int(batch.caplen[i])]
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        ihl = (frame[14] & 0x0F) * 4
        total, proto = struct.unpack_from("!H", frame, 16)[0], frame[23]
        src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
        l4 = 14 + ihl
        sport, dport = struct.unpack_from("!HH", frame, l4)
        if proto == 6:
            hdr, flags = (frame[l4 + 12] >> 4) * 4, frame[l4 + 13 : l4 + 14]
        else:
            hdr, flags = 8, b""
        yield src, dst, proto, sport, dport, total - ihl - hdr, flags


# Shared with test_ring.py: the same checks hold for either capture source.
type Source = LiveCapture | RingCapture


def read_until(
    cap: Source, done: Callable[[list[FrameBatch]], bool] | None, seconds: float = 10, **kw: int
) -> list[FrameBatch]:
    """Batches until ``done(batches)`` holds or the time runs out (a bound, not a measurement)."""
    batches: list[FrameBatch] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        batch = cap.read_batch(timeout_s=0.1, **kw)
        if len(batch):
            batches.append(batch)
        if done is not None and done(batches):
            break
    return batches


def count(batches: list[FrameBatch]) -> int:
    return sum(len(b) for b in batches)


def check_tcp_bytes_seen(lan: HomeLan, open_capture: Callable[[str], Source], port: int) -> None:
    """The bytes the speaker sends over TCP are the bytes the capture sees, FIN included."""
    sink = lan.start_tcp_sink(port=port)
    payload = bytes(range(256)) * 1000  # 256,000 bytes
    with open_capture(f"tcp and port {port}") as cap:
        client = lan.socket(lan.speaker)
        client.settimeout(10)
        client.connect((CLOUD_IP, port))
        client.sendall(payload)
        client.close()
        assert sink.wait_bytes(len(payload))

        def upstream(batches: list[FrameBatch]) -> tuple[int, bool]:
            sent, fin = 0, False
            for b in batches:
                for src, _dst, _p, _sp, _dp, n, flags in ipv4_frames(b):
                    if src == SPEAKER_IP:
                        sent += n
                        fin = fin or bool(flags[0] & 0x01)
            return sent, fin

        batches = read_until(cap, lambda bs: upstream(bs) == (len(payload), True))
        assert upstream(batches) == (len(payload), True)
        # The filter let nothing else through: only this port, only TCP.
        for b in batches:
            assert all(p == 6 and port in (sp, dp) for _s, _d, p, sp, dp, _n, _f in ipv4_frames(b))
            assert len(list(ipv4_frames(b))) == len(b)
            assert (b.wirelen >= b.caplen).all()
            assert (b.linktype == 1).all()


def check_missing_and_non_ethernet(
    lan: HomeLan, open_on: Callable[[str], Source], tun: str
) -> None:
    """No such interface: InterfaceGone; a TUN device (no Ethernet header): ValueError."""
    with pytest.raises(InterfaceGone, match="'nosuch0' does not exist"):
        open_on("nosuch0")
    lan.run(lan.gateway, "ip", "tuntap", "add", "mode", "tun", "name", tun)
    try:
        with pytest.raises(ValueError, match="not Ethernet"):
            open_on(tun)
    finally:
        lan.run(lan.gateway, "ip", "link", "del", tun, check=False)


def veth_pair(lan: HomeLan) -> None:
    """tap0 (to capture on) and tap1 (to inject into) in the gateway namespace, quiet: no
    IPv6 (router solicitations, MLD) of their own, so only injected frames cross them."""
    lan.run(lan.gateway, "ip", "link", "add", "tap0", "type", "veth", "peer", "name", "tap1")
    for ifname in ("tap0", "tap1"):
        lan.run(lan.gateway, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.disable_ipv6=1")
    lan.run(lan.gateway, "ip", "link", "set", "tap0", "up")
    lan.run(lan.gateway, "ip", "link", "set", "tap1", "up")


def inject(lan: HomeLan, frames: int, ethertype: int = 0x88B5) -> None:
    """``frames`` broadcast frames of ``ethertype`` (78 bytes each) sent into tap1."""
    sock = lan.call(lan.gateway, socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind(("tap1", 0))
        kind = struct.pack("!H", ethertype)
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + kind + b"spyglass" * 8
        for _ in range(frames):
            sock.send(frame)


def check_unplug_and_reopen(lan: HomeLan, cap: Source) -> list[FrameBatch]:
    """``cap`` on tap0 (from veth_pair): 5 frames queued, then tap0 unplugged. The 5 are handed
    out, then InterfaceGone on every read; reopen gives up while tap0 is absent and finds it
    once plugged back in. Returns the batches holding the one frame sent after that."""
    inject(lan, 5)
    end = time.monotonic() + 5  # let the veth deliver before the unplug
    while cap.stats().packets < 5 and time.monotonic() < end:
        time.sleep(0.01)
    lan.delete_link(lan.gateway, "tap0")
    seen = 0
    with pytest.raises(InterfaceGone, match="'tap0' was removed") as info:
        for _ in range(10):
            seen += len(cap.read_batch(timeout_s=0.5))
    assert seen == 5  # what was queued before the removal is handed out first
    assert info.value.ifname == "tap0"
    with pytest.raises(InterfaceGone):
        cap.read_batch()
    with pytest.raises(InterfaceGone, match="gave up after 2 tries"):
        cap.reopen(attempts=2, delay_s=0.01)
    # Plugged back in: reopen (from this thread, in the host namespace) finds it in the
    # gateway namespace where the capture was opened.
    veth_pair(lan)
    cap.reopen(attempts=2, delay_s=0.01)
    inject(lan, 1)
    batches = read_until(cap, lambda bs: count(bs) >= 1, seconds=5)
    assert count(batches) == 1
    return batches


def ethertypes(batches: list[FrameBatch]) -> list[int]:
    return [
        struct.unpack_from("!H", b.buf, off + 12)[0] for b in batches for off in b.offset.tolist()
    ]


def check_set_filter_survives_reopen(lan: HomeLan, cap: Source) -> None:
    """``cap`` on tap0 (from veth_pair), opened without a filter. A filter set later is the
    one in force after tap0 is unplugged and plugged back in, also one set while it was out;
    a bad one changes nothing; None lets everything through again."""

    def seen(expected: int) -> list[int]:
        # Frames arrive in order: a frame the filter wrongly let through shows up here or,
        # when it came after the ``expected`` ones, first thing in the next read.
        inject(lan, 3, 0x88B5)
        inject(lan, 2, 0x88B6)
        return ethertypes(read_until(cap, lambda bs: count(bs) >= expected, seconds=5))

    def replug(filter_while_out: str | None = None) -> None:
        lan.delete_link(lan.gateway, "tap0")
        left = 0
        with pytest.raises(InterfaceGone):
            for _ in range(10):
                left += len(cap.read_batch(timeout_s=0.5))
        assert left == 0, "frames the filter should have kept out"
        with pytest.raises(InterfaceGone, match="gave up"):
            cap.reopen(attempts=1)
        if filter_while_out is not None:
            cap.set_filter(filter_while_out)  # the socket is closed: kept for the reopen
        veth_pair(lan)
        cap.reopen(attempts=2, delay_s=0.01)

    cap.set_filter("ether proto 0x88b6")
    assert seen(2) == [0x88B6] * 2
    replug()
    assert seen(2) == [0x88B6] * 2
    replug(filter_while_out="ether proto 0x88b5")
    assert seen(3) == [0x88B5] * 3
    with pytest.raises(ValueError, match="bad capture filter"):
        cap.set_filter("ether proto ((")
    assert seen(3) == [0x88B5] * 3  # the one in force stays
    cap.set_filter(None)
    assert seen(5) == [0x88B5] * 3 + [0x88B6] * 2
    replug()
    assert seen(5) == [0x88B5] * 3 + [0x88B6] * 2


def check_filter_one_host(lan: HomeLan, open_capture: Callable[[str], Source], port: int) -> None:
    """A ``host`` filter lets through the frames to that host and none to another."""
    lan.start_udp_sink(host="0.0.0.0", port=port)
    with open_capture(f"host {GOOGLE}") as cap:
        with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(30):
                sender.sendto(b"x" * 100, (GOOGLE if i % 3 == 0 else APPLE, port))
        batches = read_until(cap, lambda bs: count(bs) >= 10, seconds=5)
        batches += read_until(cap, None, seconds=0.3)  # anything the filter wrongly let in
        frames = [f for b in batches for f in ipv4_frames(b)]
        assert len(frames) == 10
        assert {f[1] for f in frames} == {GOOGLE}


def test_tcp_bytes_seen_match_bytes_sent(lan: HomeLan) -> None:
    check_tcp_bytes_seen(lan, lambda bpf: gateway_capture(lan, bpf), 9001)


@pytest.mark.parametrize("kernel_ts", [True, False], ids=["kernel-ts", "user-ts"])
def test_udp_counts_bytes_and_stats(lan: HomeLan, kernel_ts: bool) -> None:
    port = 4430 if kernel_ts else 4433
    sink = lan.start_udp_sink(host="0.0.0.0", port=port)
    sizes = [40 + (i * 37) % 1200 for i in range(500)]
    with gateway_capture(lan, f"udp and dst port {port}", kernel_ts=kernel_ts) as cap:
        before = time.time()
        sender = lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            for n in sizes:
                sender.sendto(b"q" * n, (GOOGLE, port))
        assert sink.wait_bytes(sum(sizes))
        batches = read_until(cap, lambda bs: sum(len(b) for b in bs) >= len(sizes))
        after = time.time()
        frames = [f for b in batches for f in ipv4_frames(b)]
        assert [f[5] for f in frames] == sizes  # same order, same payloads
        assert sum(int(b.wirelen.sum()) for b in batches) == sum(sizes) + 42 * len(sizes)
        stamps = [t for b in batches for t in b.ts.tolist()]
        assert stamps == sorted(stamps)
        assert before - 1 <= stamps[0] and stamps[-1] <= after + 1
        assert cap.stats() == CaptureStats(packets=len(sizes), drops=0)
        assert cap.stats() == CaptureStats(packets=len(sizes), drops=0)  # accumulates, no reset


def test_filter_restricts_to_one_host(lan: HomeLan) -> None:
    check_filter_one_host(lan, lambda bpf: gateway_capture(lan, bpf), 4431)


def test_read_batch_bounds(lan: HomeLan) -> None:
    lan.start_udp_sink(host="0.0.0.0", port=4432)
    with gateway_capture(lan, "udp and dst port 4432") as cap:
        empty = cap.read_batch(timeout_s=0.05)
        assert len(empty) == 0 and empty.buf == b""
        sender = lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM)
        with sender:
            for _ in range(25):
                sender.sendto(b"z" * 10, (CLOUD_IP, 4432))
        first = read_until(cap, lambda bs: len(bs) >= 1)
        assert sum(len(b) for b in first) >= 1
        rest = cap.read_batch(max_frames=3, timeout_s=1)
        assert len(rest) <= 3


def test_interface_removal_raises_interface_gone(lan: HomeLan) -> None:
    veth_pair(lan)
    cap = gateway_capture(lan, "ether proto 0x88b5", ifname="tap0")
    try:
        check_unplug_and_reopen(lan, cap)
        assert cap.stats().packets == 6
    finally:
        cap.close()
        lan.run(lan.gateway, "ip", "link", "del", "tap0", check=False)


def test_set_filter_is_kept_across_reopen(lan: HomeLan) -> None:
    veth_pair(lan)
    cap = gateway_capture(lan, None, ifname="tap0")
    try:
        check_set_filter_survives_reopen(lan, cap)
    finally:
        cap.close()
        lan.run(lan.gateway, "ip", "link", "del", "tap0", check=False)


def test_missing_and_non_ethernet_interfaces(lan: HomeLan) -> None:
    check_missing_and_non_ethernet(lan, lambda ifname: gateway_capture(lan, None, ifname), "tun7")


def test_interface_subnets(lan: HomeLan) -> None:
    assert interface_subnets(GATEWAY_LAN_IF, netns=lan.gateway) == ["10.77.0.0/24", "fd77::/64"]
    with_ll = interface_subnets(GATEWAY_LAN_IF, netns=lan.gateway, include_link_local=True)
    assert "fe80::/64" in with_ll
    with pytest.raises(ValueError, match="no interface named 'nosuch0'"):
        interface_subnets("nosuch0", netns=lan.gateway)


def test_bad_filter_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match=r"bad capture filter 'hots 10\.0\.0\.1': .*syntax error"):
        compile_filter("hots 10.0.0.1")
    with pytest.raises(ValueError, match="bad capture filter"):
        _compile_with_tcpdump("hots 10.0.0.1", 1)
    with pytest.raises(ValueError, match="empty capture filter"):
        compile_filter("  ")
    with pytest.raises(ValueError, match="not a valid interface name"):
        LiveCapture("x" * 20)


def test_both_compilers_agree() -> None:
    for expr in ("host 10.77.0.2", "tcp port 443 or udp port 443", "ether proto 0x88b5"):
        # Same libpcap code; only the snaplen in the accepting returns differs.
        a, b = _compile_with_scapy(expr, 1), _compile_with_tcpdump(expr, 1)
        assert [(c, jt, jf, k if c != 0x06 else bool(k)) for c, jt, jf, k in a] == [
            (c, jt, jf, k if c != 0x06 else bool(k)) for c, jt, jf, k in b
        ]
    prog = compile_filter("udp")
    assert len(prog.pack()) == 8 * len(prog.insns)
    # Accepting returns are widened so the kernel never cuts frames at libpcap's snaplen.
    assert all(k in (0, 0xFFFF_FFFF) for code, _jt, _jf, k in prog.insns if code == 0x06)


def test_privileges(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        assert check_capture_privileges() is None
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapEff:\t0000000000000000\n")
    msg = check_capture_privileges(status)
    assert msg is not None and "sudo setcap cap_net_raw,cap_net_admin+eip" in msg
    assert "\n" not in msg
    status.write_text("CapEff:\t0000000000002000\n")  # CAP_NET_RAW alone is enough
    assert check_capture_privileges(status) is None
    assert effective_capabilities("CapEff:\tzz\n") == 0
    assert effective_capabilities("") == 0


def test_snaplen_cuts_frames_but_keeps_wire_length(lan: HomeLan) -> None:
    lan.start_udp_sink(host="0.0.0.0", port=4434)
    cap = lan.call(lan.gateway, LiveCapture, GATEWAY_LAN_IF, "udp and dst port 4434", snaplen=64)
    with cap:
        with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"w" * 1000, (CLOUD_IP, 4434))
        (batch,) = read_until(cap, lambda bs: len(bs) >= 1, seconds=5)
        assert batch.caplen.tolist() == [64] and batch.wirelen.tolist() == [1042]
        assert len(batch.buf) == 64
