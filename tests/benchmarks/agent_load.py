"""The whole live agent under load: capture → pipeline → store → API, next to tcpdump.

    sudo .venv/bin/python tests/benchmarks/agent_load.py [--rates 50000,100000,200000]
        [--seconds 3] [--tcpdump separate|together|off] [--agent-cpu N] [--senders 1]

Builds the namespace home LAN and starts `spyglass agent --watch-all` on the gateway's lan0,
pinned to one CPU (--agent-cpu, default the last): the issue's "full pipeline on one core". This
script, the senders, tcpdump and the kernel's receive path (it runs in the senders' softirqs)
share the other CPU. For each rate, a sender in the speaker namespace pushes UDP datagrams of
mixed sizes (64 to 1200 payload bytes, several flows) through the gateway, which blackholes them
right after lan0. Each rate runs twice: the agent alone, then again with `tcpdump -i lan0 -w
/dev/null` capturing beside it (--tcpdump together: one trial with both; off: agent only).
Printed per trial: what was sent and reached lan0, what the agent captured and its kernel drops
(from its status), its CPU time per packet (utime + stime from /proc over the trial, all its
threads) and CPU share, its RSS, and tcpdump's captured / dropped-by-kernel counts.

On a 2-core machine one Python sender reaches about 200k/s with the other core to itself; with
tcpdump on that core too it reaches 190k/s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spyglass.api.client import AgentClient  # noqa: E402
from tests.agent import running  # noqa: E402
from tests.netlab.lan import GATEWAY_LAN_IF, SPEAKER_IP, HomeLan  # noqa: E402

SINK = "10.78.9.1"  # blackholed by the gateway: captured on lan0, then discarded
BASE_PORT = 6000
SIZES = (64, 120, 200, 576, 1200, 90, 300, 1000)  # UDP payload bytes, sent in turn
SETTLE_S = 2.5  # the agent's ring retires a block within 1 s and writes status once a second


# -- children: senders (run in the speaker namespace through `ip netns exec`) -----------------


def paced(rate: int, count: int, max_s: float, burst: int) -> Iterator[int]:
    """How many to send now, again and again, to send ``count`` at ``rate``/s within ``max_s``
    (a late sender catches up in bursts of at most ``burst``)."""
    done = 0
    t0 = time.perf_counter()
    while done < count:
        elapsed = time.perf_counter() - t0
        if elapsed > max_s:
            return
        due = min(count, int(elapsed * rate) + 1, done + burst) - done
        if due <= 0:
            time.sleep(0.0002)
            continue
        done += due
        yield due


def send_child_socket(rate: int, count: int, flows: int, max_s: float, seed: int,
                      _gw_mac: str) -> None:  # fmt: skip
    """UDP sockets through the speaker's own IP stack: one send() per datagram."""
    import socket

    socks = []
    for i in range(flows):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect((SINK, BASE_PORT + (seed * flows + i) % 1000))
        socks.append(s.send)
    payloads = [bytes([65 + i]) * n for i, n in enumerate(SIZES)]
    np_, nf = len(payloads), len(socks)
    sent = 0
    t0 = time.perf_counter()
    for due in paced(rate, count, max_s, 64):
        for _ in range(due):
            try:
                socks[sent % nf](payloads[sent % np_])
            except (BlockingIOError, ConnectionRefusedError):
                break
            sent += 1
    print(json.dumps({"sent": sent, "wall_s": time.perf_counter() - t0}), flush=True)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def udp_frames(src_mac: bytes, dst_mac: bytes, flows: int, seed: int) -> list[bytes]:
    """Ethernet + IPv4 + UDP frames from the speaker to SINK, every size on every flow."""
    import socket

    out = []
    for i in range(flows):
        sport, dport = 40000 + seed * flows + i, BASE_PORT + (seed * flows + i) % 1000
        for j, n in enumerate(SIZES):
            udp = struct.pack("!HHHH", sport, dport, 8 + n, 0) + bytes([65 + j]) * n
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                             socket.inet_aton(SPEAKER_IP), socket.inet_aton(SINK))  # fmt: skip
            total = sum(struct.unpack("!10H", ip))
            while total >> 16:
                total = (total & 0xFFFF) + (total >> 16)
            ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
            out.append(dst_mac + src_mac + b"\x08\x00" + ip + udp)
    return out


# linux/if_packet.h
SOL_PACKET, PACKET_VERSION, PACKET_TX_RING, PACKET_QDISC_BYPASS = 263, 10, 13, 20
TPACKET_V2, TP_STATUS_SEND_REQUEST = 1, 1
TX_FRAME, TX_FRAMES = 2048, 512
TX_DATA = 32  # TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where a TX frame's data starts


def send_child_ring(rate: int, count: int, flows: int, max_s: float, seed: int,
                    gw_mac: str) -> None:  # fmt: skip
    """Prebuilt frames through a PACKET_TX_RING on eth0: one send() flushes a whole burst,
    so Python's per-datagram cost stops limiting the rate (the kernel's stays)."""
    import mmap
    import socket

    ifname = "eth0"
    src = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
    frames = udp_frames(_mac(src), _mac(gw_mac), flows, seed)
    if TX_FRAMES % len(frames):
        raise SystemExit(f"{len(frames)} distinct frames must divide the ring's {TX_FRAMES}")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((ifname, 0))
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    block = 1 << 16
    req = struct.pack("IIII", block, TX_FRAME * TX_FRAMES // block, TX_FRAME, TX_FRAMES)
    sock.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
    mm = mmap.mmap(sock.fileno(), TX_FRAME * TX_FRAMES, mmap.MAP_SHARED,
                   mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
    # The whole ring, every slot filled and marked "send", built once: frames repeat with a
    # period dividing the ring, so a burst is one copy of a slice of it and one send().
    hdr = struct.Struct("II")
    image = bytearray(TX_FRAME * TX_FRAMES)
    for i in range(TX_FRAMES):
        frame = frames[i % len(frames)]
        hdr.pack_into(image, i * TX_FRAME, TP_STATUS_SEND_REQUEST, len(frame))
        image[i * TX_FRAME + TX_DATA : i * TX_FRAME + TX_DATA + len(frame)] = frame
    view = memoryview(image)
    slot, sent = 0, 0
    t0 = time.perf_counter()
    for due in paced(rate, count, max_s, TX_FRAMES):
        while due:
            n = min(due, TX_FRAMES - slot)
            a, b = slot * TX_FRAME, (slot + n) * TX_FRAME
            mm[a:b] = view[a:b]
            slot = (slot + n) % TX_FRAMES
            sent += n
            due -= n
        sock.send(b"")  # blocking: returns once the ring's requests went out
    wall = time.perf_counter() - t0
    mm.close()
    sock.close()
    print(json.dumps({"sent": sent, "wall_s": wall}), flush=True)


# -- measuring ---------------------------------------------------------------------------------


def lan0_rx(lan: HomeLan) -> int:
    out = lan.run(lan.gateway, "ip", "-j", "-s", "link", "show", GATEWAY_LAN_IF).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process, all threads."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def agent_status(sock: Path) -> dict[str, Any]:
    with AgentClient(str(sock), timeout=10) as c:
        return c.status()


def settled_status(sock: Path, timeout: float = 15.0) -> dict[str, Any]:
    """The status once its packet count stopped moving (the agent caught up)."""
    time.sleep(SETTLE_S)
    last = agent_status(sock)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.1)
        st = agent_status(sock)
        if st["packets"] == last["packets"]:
            return st
        last = st
    return last


def run_senders(lan: HomeLan, sender: str, rate: int, seconds: float, senders: int,
                flows: int) -> dict[str, Any]:  # fmt: skip
    count, n = int(rate * seconds), max(1, senders)
    gw_mac = lan.run(lan.gateway, "cat", f"/sys/class/net/{GATEWAY_LAN_IF}/address").stdout.strip()
    max_s = seconds * 3
    procs = [
        lan.popen(
            lan.speaker,
            sys.executable,
            __file__,
            "--send-child",
            sender,
            str(rate // n),
            str(count // n + (i < count % n)),
            str(flows),
            str(max_s),
            str(i),
            gw_mac,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    results = [json.loads(p.communicate(timeout=max_s + 30)[0]) for p in procs]
    return {"sent": sum(r["sent"] for r in results), "wall_s": max(r["wall_s"] for r in results)}


def start_tcpdump(lan: HomeLan) -> subprocess.Popen[str]:
    cmd = ["tcpdump", "-i", GATEWAY_LAN_IF, "-n", "-w", "/dev/null"]
    proc: subprocess.Popen[str] = lan.popen(lan.gateway, *cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lan0, ..." once the capture is open
    if "listening" not in line:
        raise SystemExit(f"tcpdump did not start: {line.strip()}")
    return proc


def stop_tcpdump(proc: subprocess.Popen[str]) -> tuple[int, int, float]:
    """(captured, dropped by kernel, CPU seconds) from tcpdump's closing lines."""
    proc.send_signal(signal.SIGINT)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    assert proc.stderr is not None
    err = proc.stderr.read()

    def count(label: str) -> int:
        m = re.search(rf"(\d+) packets? {label}", err)
        return int(m.group(1)) if m else -1

    return count("captured"), count("dropped by kernel"), usage.ru_utime + usage.ru_stime


def renice(pid: int, nice: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):  # each thread has its own nice value
        os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def pin(pid: int, cpus: set[int]) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):  # affinity, like nice, is per thread
        os.sched_setaffinity(int(tid), cpus)


def trial(lan: HomeLan, pid: int, sock: Path, rate: int, args: argparse.Namespace,
          with_tcpdump: bool) -> dict[str, Any]:  # fmt: skip
    dump = start_tcpdump(lan) if with_tcpdump else None
    if dump is not None:
        renice(dump.pid, args.agent_nice)  # the same footing as the agent
    st0 = agent_status(sock)
    cpu0, rx0 = cpu_s(pid), lan0_rx(lan)
    t0 = time.monotonic()
    sent = run_senders(lan, args.sender, rate, args.seconds, args.senders, args.flows)
    st = settled_status(sock)
    cpu = cpu_s(pid) - cpu0
    wall = time.monotonic() - t0
    rx = lan0_rx(lan) - rx0
    tcpdump = stop_tcpdump(dump) if dump is not None else (-1, -1, float("nan"))
    got = st["packets"] - st0["packets"]
    return {
        "rate": rate, **sent, "arrived": rx, "captured": got,
        "drops": st["kernel_drops"] - st0["kernel_drops"], "cpu_s": cpu, "wall_s_all": wall,
        "rss": rss_mib(pid), "malformed": st.get("malformed", 0) - st0.get("malformed", 0),
        "tcpdump": tcpdump, "with_tcpdump": with_tcpdump, "uploads": st["uploads"],
        "devices": st["devices"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rates", default="50000,100000,200000")
    ap.add_argument("--seconds", type=float, default=3.0, help="sending time per rate")
    ap.add_argument(
        "--senders", type=int, default=1, help="sending processes (on the CPUs the agent is not on)"
    )
    ap.add_argument("--flows", type=int, default=8, help="UDP flows per sender")
    ap.add_argument(
        "--sender",
        choices=("ring", "socket"),
        default="ring",
        help="ring: prebuilt frames through a TX ring (reaches 200k/s here); "
        "socket: a UDP send() per datagram",
    )
    ap.add_argument(
        "--tcpdump",
        choices=("separate", "together", "off"),
        default="separate",
        help="separate: each rate once without and once with tcpdump beside the "
        "agent; together: one trial with both; off: the agent alone",
    )
    ap.add_argument(
        "--agent-nice",
        type=int,
        default=0,
        help="the agent's (and tcpdump's) nice value (unpinned, on 2 cores, the "
        "senders would starve it without -10)",
    )
    ap.add_argument(
        "--agent-cpu",
        type=int,
        default=(os.cpu_count() or 1) - 1,
        help="pin the agent (all its threads) to this CPU and everything else to "
        "the others; -1: no pinning",
    )
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with HomeLan() as lan, tempfile.TemporaryDirectory(prefix="sg-load-") as tmp:
        lan.run(lan.gateway, "ip", "route", "add", "blackhole", f"{SINK}/32")
        proc, sock = running.start_agent(
            lan.popen,
            lan.gateway,
            Path(tmp),
            "-i",
            GATEWAY_LAN_IF,
            "--mode",
            "gateway",
            "--watch-all",
        )
        pid = proc.pid  # `ip netns exec` execs the agent: same pid
        renice(pid, args.agent_nice)
        if args.agent_cpu >= 0:
            # The agent alone on one core; this script and what it starts (senders, tcpdump,
            # and the kernel work that runs in the senders' softirqs) on the others.
            pin(pid, {args.agent_cpu})
            rest = set(range(os.cpu_count() or 1)) - {args.agent_cpu}
            if rest:
                os.sched_setaffinity(0, rest)
        rss0 = rss_mib(pid)
        print(f"{os.cpu_count()} CPUs; payloads {'/'.join(map(str, SIZES))} B in turn; "
              f"{args.seconds:g} s per rate; {args.senders} senders x {args.flows} flows; "
              f"agent pid {pid} on CPU {args.agent_cpu}, nice {args.agent_nice}, "
              f"RSS at start {rss0:.1f} MiB")  # fmt: skip
        head = (f"{'rate/s':>7} {'tcpdump':>7} {'sent':>7} {'achieved/s':>10} {'at lan0':>7} "
                f"{'agent got':>9} "
                f"{'drops':>6} {'loss %':>6} {'µs/pkt':>6} {'CPU %':>5} {'RSS MiB':>7} "
                f"{'tcpdump got':>11} {'its drops':>9}")  # fmt: skip
        print(head)
        rows = []
        dumps = {"separate": (False, True), "together": (True,), "off": (False,)}[args.tcpdump]
        for rate, with_dump in ((r, d) for r in rates for d in dumps):
            t = trial(lan, pid, sock, rate, args, with_dump)
            rows.append(t)
            base = min(t["sent"], t["arrived"])
            loss = 100 * (1 - t["captured"] / base) if base else 0.0
            per = 1e6 * t["cpu_s"] / t["captured"] if t["captured"] > 0 else float("nan")
            share = 100 * t["cpu_s"] / t["wall_s"]  # over the sending time
            dump_got, dump_drops, _ = t["tcpdump"]
            print(f"{rate:>7} {'beside' if with_dump else '-':>7} {t['sent']:>7} "
                  f"{t['sent'] / t['wall_s']:>10.0f} {t['arrived']:>7} "
                  f"{t['captured']:>9} {t['drops']:>6} {max(loss, 0):>6.2f} {per:>6.2f} "
                  f"{share:>5.0f} {t['rss']:>7.1f} {dump_got:>11} {dump_drops:>9}",
                  flush=True)  # fmt: skip
        last = rows[-1]
        print(
            f"agent after the run: {last['devices']} devices, {last['uploads']} uploads, "
            f"RSS {last['rss']:.1f} MiB (started at {rss0:.1f})"
        )
        top_rate = max(r["rate"] for r in rows)
        for top in (r for r in rows if r["rate"] == top_rate):
            achieved = top["sent"] / top["wall_s"]
            if top["drops"] or top["captured"] < top["sent"]:
                verdict = "NOT met"
            elif achieved < 0.99 * top["rate"]:
                verdict = f"not reached: the sender managed {achieved:,.0f}/s (no drops there)"
            else:
                verdict = "met"
            beside = "tcpdump beside it" if top["with_tcpdump"] else "agent alone"
            print(f"target (no drops at {top_rate:,} pps, full pipeline, {beside}): {verdict}")
        print(
            "µs/pkt and CPU %: the agent's user+system time over the trial (send + settle), "
            "per packet captured and per second of sending"
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--send-child":
        kind, rate_, count_, flows_, max_s_, seed_, gw_ = sys.argv[2:9]
        child = send_child_ring if kind == "ring" else send_child_socket
        child(int(rate_), int(count_), int(flows_), float(max_s_), int(seed_), gw_)
    else:
        main()
