"""RingCapture on the lab's gateway: the TPACKET_V3 ring sees exactly what LiveCapture sees."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from collections.abc import Iterator

import numpy as np
import pytest

from spyglass.capture import CaptureStats, InterfaceGone, LiveCapture
from spyglass.capture.live import open_capture_source
from spyglass.capture.ring import RingCapture, RingUnavailable
from spyglass.core.frames import FrameBatch
from tests.capture.test_live import (
    APPLE,
    GOOGLE,
    check_filter_one_host,
    check_missing_and_non_ethernet,
    check_set_filter_survives_reopen,
    check_tcp_bytes_seen,
    check_unplug_and_reopen,
    count,
    ipv4_frames,
    read_until,
    veth_pair,
)
from tests.netlab.lan import (
    CLOUD_IP,
    GATEWAY_LAN_IF,
    SPEAKER_IP,
    HomeLan,
    lan_or_skip,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lan() -> Iterator[HomeLan]:
    with lan_or_skip() as lab:
        yield lab


def ring_on_gateway(
    lan: HomeLan, bpf: str | None, ifname: str = GATEWAY_LAN_IF, **kw: object
) -> RingCapture:
    return lan.call(lan.gateway, RingCapture, ifname, bpf, block_count=8, **kw)


def frames_of(batches: list[FrameBatch]) -> list[tuple[bytes, int, int]]:
    return [
        (b.buf[o : o + c], c, w)
        for b in batches
        for o, c, w in zip(b.offset.tolist(), b.caplen.tolist(), b.wirelen.tolist(), strict=True)
    ]


def stamps(batches: list[FrameBatch]) -> list[float]:
    return [t for b in batches for t in b.ts.tolist()]


def test_udp_exact_counts_sizes_order_and_stats(lan: HomeLan) -> None:
    port = 4440
    sink = lan.start_udp_sink(host="0.0.0.0", port=port)
    sizes = [1 + (i * 37) % 1400 for i in range(3000)]
    with ring_on_gateway(lan, f"udp and dst port {port}") as cap:
        before = time.time()
        with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for n in sizes:
                sender.sendto(b"q" * n, (GOOGLE, port))
        assert sink.wait_bytes(sum(sizes))
        batches = read_until(cap, lambda bs: count(bs) >= len(sizes))
        batches += read_until(cap, None, seconds=0.2)  # nothing more may come
        after = time.time()
        frames = [f for b in batches for f in ipv4_frames(b)]
        assert [f[5] for f in frames] == sizes  # same order, same payloads
        assert all(f[:2] == (SPEAKER_IP, GOOGLE) for f in frames)
        assert sum(int(b.wirelen.sum()) for b in batches) == sum(sizes) + 42 * len(sizes)
        for b in batches:
            assert (b.caplen == b.wirelen).all() and (b.linktype == 1).all()
            assert b.offset.dtype == np.int64 and b.ts.dtype == np.float64
        when = stamps(batches)
        assert when == sorted(when)
        assert before - 1 <= when[0] and when[-1] <= after + 1
        assert cap.stats() == CaptureStats(packets=len(sizes), drops=0)
        assert cap.stats() == CaptureStats(packets=len(sizes), drops=0)  # accumulates


@pytest.mark.parametrize("spoof", [False, True], ids=["plain", "spoofed-headers"])
def test_small_frames_exact_with_payloads_that_look_like_ring_headers(
    lan: HomeLan, spoof: bool
) -> None:
    """Dense blocks are indexed by scanning for the sockaddr_ll of each ring header; payloads
    full of our ifindex (where a header's would sit) must not change what comes out."""
    port = 4447 + spoof
    sink = lan.start_udp_sink(host="0.0.0.0", port=port)
    ifindex = lan.call(lan.gateway, socket.if_nametoindex, GATEWAY_LAN_IF)
    fake = struct.pack("<II", ifindex, ifindex) * 40
    payloads = [
        (fake[: 8 * (i % 40)] if spoof and i % 2 else bytes([i % 256]) * (i % 97))
        for i in range(2000)
    ]
    with ring_on_gateway(lan, f"udp and dst port {port}") as cap:
        with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in payloads:
                sender.sendto(data, (CLOUD_IP, port))
        assert sink.wait_bytes(sum(map(len, payloads)))
        batches = read_until(cap, lambda bs: count(bs) >= len(payloads))
        got = [frame[42:] for frame, _c, _w in frames_of(batches)]
        assert got == payloads
        assert cap.stats() == CaptureStats(packets=len(payloads), drops=0)


def test_tcp_bytes_seen_match_bytes_sent(lan: HomeLan) -> None:
    check_tcp_bytes_seen(lan, lambda bpf: ring_on_gateway(lan, bpf), 9011)


def test_filter_restricts_to_one_host(lan: HomeLan) -> None:
    check_filter_one_host(lan, lambda bpf: ring_on_gateway(lan, bpf), 4441)


@pytest.mark.parametrize("port,bpf", [(4442, "udp and dst port 4442"), (4446, None)],
                         ids=["filter", "no-filter"])  # fmt: skip
def test_snaplen_cuts_frames_but_keeps_wire_length(
    lan: HomeLan, port: int, bpf: str | None
) -> None:
    lan.start_udp_sink(host="0.0.0.0", port=port)
    with ring_on_gateway(lan, bpf, snaplen=64) as cap:
        with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"w" * 1000, (CLOUD_IP, port))

        def ours(batches: list[FrameBatch]) -> list[tuple[int, int]]:
            return [
                (c, w)
                for b in batches
                for (_s, _d, _p, _sp, dp, _n, _f), c, w in zip(
                    ipv4_frames(b), b.caplen.tolist(), b.wirelen.tolist(), strict=False
                )
                if dp == port
            ]

        batches = read_until(cap, lambda bs: bool(ours(bs)), seconds=5)
        assert ours(batches) == [(64, 1042)]
        # The kernel cut every frame (the filter's return is the snaplen): the ring held less.
        assert all((b.caplen <= 64).all() for b in batches)


def test_empty_batch_on_timeout_and_max_frames(lan: HomeLan) -> None:
    lan.start_udp_sink(host="0.0.0.0", port=4443)
    with ring_on_gateway(lan, "udp and dst port 4443") as cap:
        empty = cap.read_batch(timeout_s=0.05)
        assert len(empty) == 0 and empty.buf == b"" and empty.ts.dtype == np.float64
        assert len(cap.read_batch(max_frames=0)) == 0
        with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(25):
                sender.sendto(bytes([i]) * (20 + i), (CLOUD_IP, 4443))
        # One block holds all 25: handed out 3 at a time from a single copy.
        batches = read_until(cap, lambda bs: count(bs) >= 25, max_frames=3)
        assert all(len(b) <= 3 for b in batches)
        assert [f[5] for b in batches for f in ipv4_frames(b)] == [20 + i for i in range(25)]
        assert len(cap.read_batch(timeout_s=0.05)) == 0


def test_same_frames_as_livecapture(lan: HomeLan) -> None:
    """The same mixed traffic captured both ways gives identical frames, sizes and times."""
    udp_sink = lan.start_udp_sink(host="0.0.0.0", port=4444, echo=True)
    tcp_sink = lan.start_tcp_sink(host=APPLE, port=9012)
    bpf = "udp port 4444 or tcp port 9012 or icmp"
    for snaplen in (262_144, 100):
        live = lan.call(lan.gateway, LiveCapture, GATEWAY_LAN_IF, bpf, snaplen=snaplen)
        ring = ring_on_gateway(lan, bpf, snaplen=snaplen)
        with live, ring:
            udp_before, tcp_before = udp_sink.bytes_received, tcp_sink.bytes_received
            with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for i in range(400):
                    udp.sendto(bytes([i % 251]) * (1 + i * 3), (GOOGLE, 4444))
            with lan.socket(lan.speaker) as tcp:
                tcp.settimeout(10)
                tcp.connect((APPLE, 9012))
                tcp.sendall(bytes(range(256)) * 400)
            ping(lan, CLOUD_IP, [b"p" * 1400, b"", b"spyglass"])
            assert udp_sink.wait_bytes(udp_before + sum(1 + i * 3 for i in range(400)))
            assert tcp_sink.wait_bytes(tcp_before + 256 * 400)
            time.sleep(0.3)  # echoes and FIN exchange settle; both keep queueing meanwhile
            got_live = read_until(live, None, seconds=0.5)
            got_ring = read_until(ring, None, seconds=0.5)
            a, b = frames_of(got_live), frames_of(got_ring)
            assert sorted(a) == sorted(b)
            # Each direction in the same order; the two directions are delivered from
            # different CPUs, so how they interleave may differ between two sockets.
            for mac in {f[0][6:12] for f in a}:
                assert [f for f in a if f[0][6:12] == mac] == [f for f in b if f[0][6:12] == mac]
            protos = [f[2] for x in got_ring for f in ipv4_frames(x)]
            assert protos.count(17) == 800 and protos.count(1) >= 3 and protos.count(6) > 10
            # Usually bit-identical (one kernel stamp per skb); at worst stamped a moment apart.
            when_live = dict(zip(a, stamps(got_live), strict=True))
            when_ring = dict(zip(b, stamps(got_ring), strict=True))
            assert max(abs(when_live[f] - when_ring[f]) for f in when_live) < 1.0
            assert live.stats() == ring.stats() == CaptureStats(len(a), 0)


def ping(lan: HomeLan, dst: str, payloads: list[bytes]) -> None:
    """ICMP echo requests from the speaker (the lab has no ping binary); the cloud answers."""
    sock = lan.call(
        lan.speaker, socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP
    )
    with sock:
        for seq, data in enumerate(payloads):
            body = struct.pack("!HH", 0x5347, seq) + data
            csum = sum(struct.unpack(f"!{len(body) // 2}H", body[: len(body) // 2 * 2]))
            csum += body[-1] << 8 if len(body) % 2 else 0
            csum = (csum & 0xFFFF) + (csum >> 16)
            csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
            sock.sendto(struct.pack("!BBH", 8, 0, csum) + body, (dst, 0))


def test_interface_removal_raises_interface_gone_and_reopen(lan: HomeLan) -> None:
    veth_pair(lan)
    cap = ring_on_gateway(lan, "ether proto 0x88b5", ifname="tap0")
    try:
        old_fd = cap.fileno()
        batches = check_unplug_and_reopen(lan, cap)
        assert cap.fileno() >= 0 and cap.ring_bytes > 0
        assert batches[0].wirelen.tolist() == [78]
        assert cap.stats() == CaptureStats(packets=6, drops=0)  # carried over the reopen
    finally:
        cap.close()
        lan.run(lan.gateway, "ip", "link", "del", "tap0", check=False)
    assert old_fd >= 0
    with pytest.raises(ValueError, match="closed"):
        cap.read_batch()


def test_set_filter_is_kept_across_reopen(lan: HomeLan) -> None:
    veth_pair(lan)
    # A snaplen below the default: the filter set later cuts frames to it like the first one.
    cap = ring_on_gateway(lan, None, ifname="tap0", snaplen=64)
    try:
        check_set_filter_survives_reopen(lan, cap)
        cap.set_filter("ether proto 0x88b6")
        assert cap.program is not None
        assert {k for code, _jt, _jf, k in cap.program.insns if code == 0x06} == {0, 64}
    finally:
        cap.close()
        lan.run(lan.gateway, "ip", "link", "del", "tap0", check=False)


def test_interface_down_raises_interface_gone(lan: HomeLan) -> None:
    veth_pair(lan)
    try:
        with ring_on_gateway(lan, None, ifname="tap0") as cap:
            lan.run(lan.gateway, "ip", "link", "set", "tap0", "down")
            with pytest.raises(InterfaceGone, match="'tap0' went down"):
                for _ in range(10):
                    cap.read_batch(timeout_s=0.5)
    finally:
        lan.run(lan.gateway, "ip", "link", "del", "tap0", check=False)


def test_promisc_while_open(lan: HomeLan) -> None:
    def promiscuity() -> int:
        out = lan.run(lan.gateway, "ip", "-d", "-j", "link", "show", GATEWAY_LAN_IF).stdout
        return int(json.loads(out)[0]["promiscuity"])

    before = promiscuity()
    with ring_on_gateway(lan, None, promisc=True):
        assert promiscuity() == before + 1
    assert promiscuity() == before


def test_missing_and_non_ethernet_interfaces(lan: HomeLan) -> None:
    check_missing_and_non_ethernet(lan, lambda ifname: ring_on_gateway(lan, None, ifname), "tun8")


def test_bad_arguments_are_clear_value_errors() -> None:
    with pytest.raises(ValueError, match="not a valid interface name"):
        RingCapture("x" * 20)
    with pytest.raises(ValueError, match="snaplen 10 is too small"):
        RingCapture("eth0", snaplen=10)
    with pytest.raises(ValueError, match="multiple of the page size"):
        RingCapture("eth0", block_size=5000)
    with pytest.raises(ValueError, match="bad ring shape"):
        RingCapture("eth0", block_count=0)
    with pytest.raises(ValueError, match="bad capture filter"):
        RingCapture("eth0", "hots 1.2.3.4")


def test_factory_picks_the_ring_and_falls_back(
    lan: HomeLan, caplog: pytest.LogCaptureFixture
) -> None:
    ring = lan.call(lan.gateway, open_capture_source, GATEWAY_LAN_IF, "udp port 4445")
    with ring:
        assert isinstance(ring, RingCapture)
    live = lan.call(lan.gateway, open_capture_source, GATEWAY_LAN_IF, "udp", ring=False)
    with live:
        assert isinstance(live, LiveCapture)
    # A ring the kernel refuses outright (a 2 GiB block): RingUnavailable, then LiveCapture.
    with pytest.raises(RingUnavailable, match="cannot set up a 2048 MiB receive ring"):
        lan.call(lan.gateway, RingCapture, GATEWAY_LAN_IF, block_size=1 << 31, block_count=1)
    with caplog.at_level(logging.WARNING, logger="spyglass.capture.live"):
        fallback = lan.call(
            lan.gateway, open_capture_source, GATEWAY_LAN_IF, ring_block_size=1 << 31
        )
    with fallback:
        assert isinstance(fallback, LiveCapture)
    assert "falling back to one recvmsg per frame" in caplog.text
    assert "MiB receive ring: Invalid argument" in caplog.text
