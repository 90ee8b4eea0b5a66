"""Live capture under load: RingCapture and LiveCapture next to tcpdump on the lab gateway.

Senders in the speaker namespace (several processes, each pacing its share) push UDP datagrams
through the gateway (which blackholes them right after the capture point, so nothing else burns
CPU); the capture runs in the gateway namespace on lan0. For each rate it prints what was sent,
what reached lan0, what each capture got, the kernel drops each reported, and the capture
process's CPU time per packet (user + system; the kernel's copy into the socket or ring happens
in the sender's softirq and is not counted, for tcpdump neither).

    sudo .venv/bin/python tests/benchmarks/live_capture.py [--rates 50000,100000,200000]
        [--seconds 2] [--size 200] [--senders 2] [--tools ring,live,live-user,tcpdump,tcpdump-B]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.netlab.lan import GATEWAY_LAN_IF, HomeLan  # noqa: E402

SINK = "10.78.9.1"  # blackholed by the gateway: seen on lan0, then dropped
PORT = 5001
FILTER = f"udp and dst port {PORT}"
SETTLE_S = 1.5  # > tcpdump's 1 s ring-block timeout, so its last block is counted too


# -- children (run inside a namespace through `ip netns exec`) ------------------------------


def send_child(dst: str, rate: int, count: int, size: int, max_s: float) -> None:
    """Pace ``count`` datagrams at ``rate``/s (bounded by ``max_s``), in bursts of at most
    64 so that a late sender catches up without one huge burst."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.connect((dst, PORT))
    payload = b"s" * size
    send = sock.send
    sent = 0
    t0 = time.perf_counter()
    while sent < count:
        elapsed = time.perf_counter() - t0
        if elapsed > max_s:
            break
        due = min(count, int(elapsed * rate) + 1, sent + 64) - sent
        if due <= 0:
            time.sleep(0.0002)
            continue
        for _ in range(due):
            try:
                send(payload)
            except (BlockingIOError, ConnectionRefusedError):
                break  # the gateway's ICMP unreachable bounced back: not counted, try again
            sent += 1
    wall = time.perf_counter() - t0
    print(json.dumps({"sent": sent, "wall_s": wall}), flush=True)


def capture_child(ifname: str, mode: str) -> None:
    from spyglass.capture import LiveCapture
    from spyglass.capture.ring import RingCapture

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    frames = nbytes = batches = 0
    cap: LiveCapture | RingCapture
    if mode == "ring":
        cap = RingCapture(ifname, FILTER)
    else:
        cap = LiveCapture(ifname, FILTER, kernel_timestamps=mode == "kernel")
    with cap:
        print("ready", flush=True)
        cpu0 = time.process_time()
        while True:
            batch = cap.read_batch(timeout_s=0.05)
            if len(batch):
                frames += len(batch)
                nbytes += int(batch.wirelen.sum())
                batches += 1
            elif stop.is_set():
                break
        cpu = time.process_time() - cpu0
        stats = cap.stats()
    out = {"frames": frames, "bytes": nbytes, "batches": batches, "cpu_s": cpu}
    out |= {"kernel_packets": stats.packets, "kernel_drops": stats.drops}
    print(json.dumps(out), flush=True)


# -- the run ---------------------------------------------------------------------------------


def lan0_rx(lan: HomeLan) -> int:
    out = lan.run(lan.gateway, "ip", "-j", "-s", "link", "show", GATEWAY_LAN_IF).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


@dataclass(frozen=True)
class Load:
    rate: int  # datagrams/s, all senders together
    seconds: float
    size: int  # UDP payload bytes
    senders: int  # processes sharing the rate


def run_sender(lan: HomeLan, load: Load) -> dict[str, Any]:
    """``load.senders`` processes at once, each with its share of the rate; their totals."""
    count, n = int(load.rate * load.seconds), max(1, load.senders)
    max_s = load.seconds * 3
    procs = [
        lan.popen(
            lan.speaker,
            sys.executable,
            __file__,
            "--send-child",
            SINK,
            str(load.rate // n),
            str(count // n + (i < count % n)),
            str(load.size),
            str(max_s),
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(n)
    ]
    results = [json.loads(p.communicate(timeout=max_s + 30)[0]) for p in procs]
    return {"sent": sum(r["sent"] for r in results), "wall_s": max(r["wall_s"] for r in results)}


def trial_capture(lan: HomeLan, load: Load, mode: str) -> dict[str, Any]:
    cap = lan.popen(
        lan.gateway, sys.executable, __file__, "--capture-child", GATEWAY_LAN_IF, mode,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert cap.stdout is not None
    if cap.stdout.readline().strip() != "ready":
        raise SystemExit("the capture child did not start")
    rx0 = lan0_rx(lan)
    sent = run_sender(lan, load)
    time.sleep(SETTLE_S)
    rx = lan0_rx(lan) - rx0
    cap.send_signal(signal.SIGINT)
    out, _ = cap.communicate(timeout=30)
    got = json.loads(out)
    name = {"ring": "RingCapture", "kernel": "LiveCapture", "user": "LiveCapture (user ts)"}[mode]
    return {"tool": name, **sent, "arrived": rx, "captured": got["frames"],
            "drops": got["kernel_drops"], "cpu_s": got["cpu_s"]}  # fmt: skip


def trial_tcpdump(lan: HomeLan, load: Load, buffer_kib: int | None) -> dict[str, Any]:
    extra = ["-B", str(buffer_kib)] if buffer_kib else []
    cmd = ["tcpdump", "-i", GATEWAY_LAN_IF, "-n", "-w", "/dev/null", *extra, FILTER]
    proc = lan.popen(lan.gateway, *cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lan0, ..." once the capture is open
    if "listening" not in line:
        raise SystemExit(f"tcpdump did not start: {line.strip()}")
    rx0 = lan0_rx(lan)
    sent = run_sender(lan, load)
    time.sleep(SETTLE_S)
    rx = lan0_rx(lan) - rx0
    proc.send_signal(signal.SIGINT)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    err = line + proc.stderr.read()
    proc.returncode = 0

    def count(label: str) -> int:
        m = re.search(rf"(\d+) packets? {label}", err)
        return int(m.group(1)) if m else -1

    name = "tcpdump" + (f" -B {buffer_kib}" if buffer_kib else "")
    cpu = usage.ru_utime + usage.ru_stime
    return {"tool": name, **sent, "arrived": rx, "captured": count("captured"),
            "drops": count("dropped by kernel"), "cpu_s": cpu}  # fmt: skip


def run_trial(lan: HomeLan, load: Load, tool: str) -> dict[str, Any]:
    modes = {"ring": "ring", "live": "kernel", "live-user": "user"}
    if tool in modes:
        return trial_capture(lan, load, modes[tool])
    if tool in ("tcpdump", "tcpdump-B"):
        return trial_tcpdump(lan, load, 32768 if tool == "tcpdump-B" else None)
    raise SystemExit(f"unknown tool {tool!r} (ring, live, live-user, tcpdump, tcpdump-B)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rates", default="50000,100000,200000")
    ap.add_argument("--seconds", type=float, default=2.0, help="sending time per trial")
    ap.add_argument("--size", type=int, default=200, help="UDP payload bytes")
    ap.add_argument("--senders", type=int, default=2, help="sending processes")
    ap.add_argument("--tools", default="ring,live,live-user,tcpdump,tcpdump-B")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    tools = args.tools.split(",")
    with HomeLan() as lan:
        lan.run(lan.gateway, "ip", "route", "add", "blackhole", f"{SINK}/32")
        print(
            f"{os.cpu_count()} CPUs, {args.size}-byte UDP payloads, {args.seconds:g} s per "
            f"trial, {args.senders} sender processes"
        )
        head = f"{'rate/s':>8} {'tool':<21} {'sent':>8} {'achieved/s':>10} {'at lan0':>8} "
        head += f"{'captured':>8} {'drops':>7} {'loss %':>7} {'CPU µs/pkt':>10}"
        print(head)
        for rate in rates:
            load = Load(rate, args.seconds, args.size, args.senders)
            for tool in tools:
                t = run_trial(lan, load, tool)
                # lan0 also counts a few ARP/ND frames; the sender's count bounds it.
                base = min(t["sent"], t["arrived"])
                loss = 100 * (1 - t["captured"] / base) if base else 0.0
                per = 1e6 * t["cpu_s"] / t["captured"] if t["captured"] > 0 else float("nan")
                print(
                    f"{rate:>8} {t['tool']:<21} {t['sent']:>8} {t['sent'] / t['wall_s']:>10.0f} "
                    f"{t['arrived']:>8} {t['captured']:>8} {t['drops']:>7} {loss:>7.2f} "
                    f"{per:>10.2f}"
                )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--send-child":
        dst, rate, count, size, max_s = sys.argv[2:7]
        send_child(dst, int(rate), int(count), int(size), float(max_s))
    elif len(sys.argv) > 1 and sys.argv[1] == "--capture-child":
        capture_child(sys.argv[2], sys.argv[3])
    else:
        main()
