"""The live agent under bad input and a full disk, in the namespace home LAN.

Broken frames and a flood of unknown MACs on the wire, garbage on the API socket, a disk
with no room: each time the agent stays up, keeps capturing (the speaker's upload streamed
meanwhile is still reported) and its status says what it dropped or what is wrong.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spyglass.api.client import AgentClient, Subscription
from tests.agent import running
from tests.agent.helpers import Raw
from tests.agent.test_agent_live import SPEAKER_MAC, speak, start_agent
from tests.netlab.lan import (
    GATEWAY_LAN_IF,
    SPEAKER_IF,
    SPEAKER_IP,
    HomeLan,
    lan_or_skip,
)

pytestmark = pytest.mark.root

SINK = "10.78.9.1"  # blackholed by the gateway: the flood is captured on lan0, then discarded
ETH_P_ALL = 0x0003


@pytest.fixture
def lab() -> Iterator[HomeLan]:
    with lan_or_skip() as lan:
        lan.run(lan.speaker, "ip", "link", "set", "dev", SPEAKER_IF, "address", SPEAKER_MAC)
        lan.start_dns()
        lan.start_tls_server()
        yield lan


# -- frames ----------------------------------------------------------------------------------


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, vihl: int = 0x45,
         total: int | None = None) -> bytes:  # fmt: skip
    hlen = (vihl & 15) * 4
    length = hlen + len(payload) if total is None else total
    hdr = struct.pack("!BBHHHBBH4s4s", vihl, 0, length, 0x1234, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    hdr += bytes(max(hlen - 20, 0))
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def broken_frames(src: bytes, dst: bytes, rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """(frames whose headers cannot be decoded, frames of ethertypes nobody decodes)."""
    eth = dst + src
    v4 = eth + b"\x08\x00"
    cloud = "10.78.0.2"
    good_ip = ipv4(SPEAKER_IP, cloud, 17, udp(40000, 9, b"x" * 20))
    tcp_bad_offset = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x30, 0x18, 512, 0, 0)
    malformed = [
        v4,  # 14 bytes: an IPv4 ethertype and nothing after it
        v4 + good_ip[:12],  # IPv4 header cut short
        v4 + ipv4(SPEAKER_IP, cloud, 17, b"y" * 30, vihl=0x43),  # IHL 3 (< 5)
        v4 + ipv4(SPEAKER_IP, cloud, 17, b"y" * 30, total=12),  # total length < header
        v4 + ipv4(SPEAKER_IP, cloud, 17, b"y" * 30, total=1400),  # total length > frame
        v4 + ipv4(SPEAKER_IP, cloud, 6, tcp_bad_offset),  # TCP data offset 3 (< 5)
        v4 + b"\x65" + good_ip[1:],  # IP version 6 behind an IPv4 ethertype
        eth + b"\x86\xdd" + bytes(20),  # IPv6 header cut short
    ]
    ethertypes = [0x1234, 0x88B5, 0x88B6, 0xABCD, 0x0101]
    other = [
        eth + struct.pack("!H", et) + rng.randbytes(rng.randrange(0, 80)) for et in ethertypes
    ]
    return malformed, other


def flood_frames(dst: bytes, count: int, rng: random.Random) -> list[bytes]:
    """UDP from ``count`` random unicast MACs with random LAN addresses (never .0/.1/.2/.255)."""
    frames = []
    for i in range(count):
        mac = bytearray(rng.randbytes(6))
        mac[0] = (mac[0] & 0xFC) | 0x02  # unicast, locally administered
        src_ip = f"10.77.0.{rng.randrange(3, 255)}"
        body = udp(20000 + i % 1000, 7777, rng.randbytes(rng.randrange(8, 400)))
        frames.append(dst + bytes(mac) + b"\x08\x00" + ipv4(src_ip, SINK, 17, body))
    return frames


def send_raw(lab: HomeLan, frames: list[bytes], seconds: float) -> int:
    """Send ``frames`` from the speaker's eth0 with an AF_PACKET socket, spread over
    ``seconds``; returns how many the kernel took."""

    def run() -> int:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((SPEAKER_IF, 0))
        sent = 0
        t0 = time.monotonic()
        per = seconds / max(len(frames), 1)
        with sock:
            for i, frame in enumerate(frames):
                lag = t0 + i * per - time.monotonic()
                if lag > 0.001:
                    time.sleep(lag)
                sent += sock.send(frame) == len(frame)
        return sent

    return lab.call(lab.speaker, run)


def mac_of(lab: HomeLan, ns: str, ifname: str) -> bytes:
    out = lab.run(ns, "cat", f"/sys/class/net/{ifname}/address").stdout.strip()
    return _mac(out)


# -- helpers ---------------------------------------------------------------------------------


def in_parallel(*fns: Callable[[], Any]) -> list[Any]:
    """Run each function in its own thread; their results, or the first exception raised."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def wait_for[T](fn: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {value!r})")
        time.sleep(0.25)


def status(sock: Path) -> dict[str, Any]:
    with AgentClient(str(sock), timeout=10) as c:
        return c.status()


def one_upload(sock: Path, timeout: float = 12) -> list[Any]:
    def get() -> list[Any]:
        with AgentClient(str(sock), timeout=10) as c:
            return c.uploads()

    ups = wait_for(get, timeout, "the speaker's upload reported")
    assert len(ups) == 1 and ups[0].device_mac == SPEAKER_MAC, ups
    assert ups[0].destination == "bob-dispatch-prod-na.amazon.com"
    return ups


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def stop(proc: subprocess.Popen[Any]) -> None:
    assert proc.poll() is None, "the agent died"
    proc.terminate()
    assert proc.wait(timeout=15) == 0


# -- the tests -------------------------------------------------------------------------------


def test_broken_frames_are_counted_and_capture_goes_on(lab: HomeLan, tmp_path: Path) -> None:
    proc, sock = start_agent(lab, tmp_path)
    rng = random.Random(1)
    bad, other = broken_frames(_mac(SPEAKER_MAC), mac_of(lab, lab.gateway, GATEWAY_LAN_IF), rng)
    rounds = 40
    malformed, odd = bad * rounds, other * rounds  # 320 + 200 frames
    frames = malformed + odd
    rng.shuffle(frames)
    _, sent = in_parallel(lambda: speak(lab, seconds=3.0),
                          lambda: send_raw(lab, frames, seconds=2.5))  # fmt: skip
    assert sent == len(frames)
    one_upload(sock)
    st = wait_for(lambda: (s := status(sock))["malformed"] >= len(malformed) and s,
                  10, "malformed frames counted")  # fmt: skip
    assert st["malformed"] == len(malformed)
    assert st["dropped"]["malformed"] == len(malformed)
    assert st["non_ip"] >= len(odd)
    assert st["kernel_drops"] == 0 and st["state"] == "capturing"
    stop(proc)


def test_flood_from_unknown_macs(lab: HomeLan, tmp_path: Path) -> None:
    proc, sock = start_agent(lab, tmp_path)
    lab.run(lab.gateway, "ip", "route", "add", "blackhole", f"{SINK}/32")
    pid = proc.pid
    rss0 = rss_kib(pid)
    frames = flood_frames(mac_of(lab, lab.gateway, GATEWAY_LAN_IF), 20_000, random.Random(2))
    _, sent = in_parallel(lambda: speak(lab, seconds=3.0),
                          lambda: send_raw(lab, frames, seconds=2.0))  # fmt: skip
    assert sent == len(frames)
    one_upload(sock, timeout=30)
    # A burst this fast may overrun the ring for a moment: those frames count as drops.
    st = wait_for(lambda: (s := status(sock))["packets"] + s["kernel_drops"] >= len(frames)
                  and s, 20, "the flood captured")  # fmt: skip
    assert st["state"] == "capturing" and st["devices"] > 1
    assert st["dropped"]["kernel"] == st["kernel_drops"]
    grown = (rss_kib(pid) - rss0) / 1024
    # The inventory stops at 4096 devices (~3 KiB each) and counts the rest as turned away.
    assert st["devices"] <= 4096
    assert st["dropped"]["devices_over_cap"] > 0 and st["dropped"]["packets_of_those"] > 0
    assert grown < 40, f"RSS grew {grown:.0f} MiB for {st['devices']} devices"
    print(f"flood: RSS grew {grown:.1f} MiB; {st['devices']} devices kept, "
          f"{st['dropped']['devices_over_cap']} sightings turned away")
    stop(proc)


def test_garbage_on_the_socket(lab: HomeLan, tmp_path: Path) -> None:
    proc, sock = start_agent(lab, tmp_path)
    replies: list[dict[str, Any]] = []

    def garbage() -> None:
        rng = random.Random(3)
        for _ in range(5):
            raw = Raw(sock)
            raw.send(rng.randbytes(4000).replace(b"\n", b"") + b"\n")
            replies.append(raw.line())
            raw.send(b"this is not json\n")
            replies.append(raw.line())
            raw.send(b"x" * (1 << 20) + b"\n")
            replies.append(raw.line())
            replies.append(raw.ask({"v": 1, "id": 7, "op": "hello"}))
            raw.send(rng.randbytes(10_000))  # and hang up mid-line
            raw.close()

    in_parallel(lambda: speak(lab, seconds=3.0), garbage)
    codes = [r.get("error", {}).get("code") for r in replies]
    assert codes == ["bad_json", "bad_json", "too_large", None] * 5, codes
    assert all(r["ok"] for r in replies[3::4])
    one_upload(sock)
    assert status(sock)["state"] == "capturing"
    stop(proc)


def with_db(lab: HomeLan, db: Path) -> Callable[..., subprocess.Popen[Any]]:
    """``lab.popen`` for :func:`running.start_agent`, with the agent's store at ``db``."""

    def popen(ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        args = list(cmd)
        args[args.index("--db") + 1] = str(db)
        return lab.popen(ns, *args, **kwargs)

    return popen


def fill(path: Path) -> int:
    """Write ``path`` until the file system has no room left; the bytes written."""
    chunk = bytes(4096)
    written = 0
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written


def upload_started(sock: Path) -> Subscription:
    """upload_started events: announced while the upload streams, whatever the store does."""
    return AgentClient(str(sock), timeout=10).subscribe(["upload_started"], timeout=15)


def store_problem(sock: Path) -> str | None:
    probs = [p["message"] for p in status(sock)["problems"] if p["kind"] == "store"]
    return probs[0] if probs else None


def test_full_disk_stops_writing_and_capture_goes_on(lab: HomeLan, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(disk)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    proc: subprocess.Popen[Any] | None = None
    try:
        db = disk / "agent.db"
        proc, sock = running.start_agent(with_db(lab, db), lab.gateway, tmp_path, "-i",
                                         GATEWAY_LAN_IF, "--mode", "gateway")  # fmt: skip
        filler = disk / "filler"
        assert fill(filler) > 0
        with upload_started(sock) as sub:
            speak(lab, seconds=3.0)
            assert next(sub)["data"]["device"] == SPEAKER_MAC
        message = wait_for(lambda: store_problem(sock), 15, "a store problem in the status")
        assert "disk full" in message and str(db) in message, message
        assert "capture goes on" in message
        before = status(sock)["packets"]
        speak(lab, seconds=1.0)  # still capturing: the packets count moves on
        st = wait_for(lambda: (s := status(sock))["packets"] > before and s, 10, "capture")
        assert st["state"] == "capturing" and st["store_ok"] is False
        with AgentClient(str(sock), timeout=10) as c:
            assert c.uploads() == []  # held in memory: the store takes nothing
        filler.unlink()
        wait_for(lambda: store_problem(sock) is None, 15, "the store problem cleared")
        one_upload(sock)
        stop(proc)
        proc = None
        out = subprocess.run(
            ["sqlite3", str(db), "PRAGMA integrity_check; SELECT device_mac FROM uploads;"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.split()
        assert out == ["ok", SPEAKER_MAC], out
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
        if subprocess.run(["umount", str(disk)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
