"""Live capture under load: LiveCapture next to tcpdump on the lab gateway, same traffic.

A sender in the speaker namespace paces UDP datagrams through the gateway (which blackholes
them right after the capture point, so nothing else burns CPU); the capture runs in the gateway
namespace on lan0. For each rate it prints what was sent, what reached lan0, what each capture
got, the kernel drops each reported, and the capture loop's CPU time per packet.

    sudo .venv/bin/python tests/benchmarks/live_capture.py [--rates 50000,100000,200000]
        [--seconds 2] [--size 200]
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
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((dst, PORT))
    payload = b"s" * size
    send = sock.send
    sent = 0
    t0 = time.perf_counter()
    while sent < count:
        elapsed = time.perf_counter() - t0
        if elapsed > max_s:
            break
        due = min(count, int(elapsed * rate) + 1) - sent
        if due <= 0:
            time.sleep(0.0002)
            continue
        for _ in range(due):
            send(payload)
        sent += due
    wall = time.perf_counter() - t0
    print(json.dumps({"sent": sent, "wall_s": wall}), flush=True)


def capture_child(ifname: str, kernel_ts: bool) -> None:
    from spyglass.capture import LiveCapture

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    frames = nbytes = batches = 0
    with LiveCapture(ifname, FILTER, kernel_timestamps=kernel_ts) as cap:
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


def run_sender(lan: HomeLan, rate: int, seconds: float, size: int) -> dict[str, Any]:
    count = int(rate * seconds)
    proc = lan.run(
        lan.speaker, sys.executable, __file__, "--send-child", SINK, str(rate), str(count),
        str(size), str(seconds * 3), timeout=seconds * 3 + 30,
    )  # fmt: skip
    return dict(json.loads(proc.stdout))


def trial_livecapture(
    lan: HomeLan, rate: int, seconds: float, size: int, kernel_ts: bool
) -> dict[str, Any]:
    cap = lan.popen(
        lan.gateway, sys.executable, __file__, "--capture-child", GATEWAY_LAN_IF,
        "kernel" if kernel_ts else "user",
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert cap.stdout is not None
    if cap.stdout.readline().strip() != "ready":
        raise SystemExit("the capture child did not start")
    rx0 = lan0_rx(lan)
    sent = run_sender(lan, rate, seconds, size)
    time.sleep(SETTLE_S)
    rx = lan0_rx(lan) - rx0
    cap.send_signal(signal.SIGINT)
    out, _ = cap.communicate(timeout=30)
    got = json.loads(out)
    name = "LiveCapture" + ("" if kernel_ts else " (user ts)")
    return {"tool": name, **sent, "arrived": rx, "captured": got["frames"],
            "drops": got["kernel_drops"], "cpu_s": got["cpu_s"]}  # fmt: skip


def trial_tcpdump(
    lan: HomeLan, rate: int, seconds: float, size: int, buffer_kib: int | None
) -> dict[str, Any]:
    extra = ["-B", str(buffer_kib)] if buffer_kib else []
    cmd = ["tcpdump", "-i", GATEWAY_LAN_IF, "-n", "-w", "/dev/null", *extra, FILTER]
    proc = lan.popen(lan.gateway, *cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lan0, ..." once the capture is open
    if "listening" not in line:
        raise SystemExit(f"tcpdump did not start: {line.strip()}")
    rx0 = lan0_rx(lan)
    sent = run_sender(lan, rate, seconds, size)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rates", default="50000,100000,200000")
    ap.add_argument("--seconds", type=float, default=2.0, help="sending time per trial")
    ap.add_argument("--size", type=int, default=200, help="UDP payload bytes")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with HomeLan() as lan:
        lan.run(lan.gateway, "ip", "route", "add", "blackhole", f"{SINK}/32")
        print(f"{os.cpu_count()} CPUs, {args.size}-byte UDP payloads, {args.seconds:g} s per trial")
        head = f"{'rate/s':>8} {'tool':<18} {'sent':>8} {'achieved/s':>10} {'at lan0':>8} "
        head += f"{'captured':>8} {'drops':>7} {'loss %':>7} {'CPU µs/pkt':>10}"
        print(head)
        for rate in rates:
            trials = [
                trial_livecapture(lan, rate, args.seconds, args.size, True),
                trial_livecapture(lan, rate, args.seconds, args.size, False),
                trial_tcpdump(lan, rate, args.seconds, args.size, None),
                trial_tcpdump(lan, rate, args.seconds, args.size, 32768),
            ]
            for t in trials:
                # lan0 also counts a few ARP/ND frames; the sender's count bounds it.
                base = min(t["sent"], t["arrived"])
                loss = 100 * (1 - t["captured"] / base) if base else 0.0
                per = 1e6 * t["cpu_s"] / t["captured"] if t["captured"] > 0 else float("nan")
                print(
                    f"{rate:>8} {t['tool']:<18} {t['sent']:>8} {t['sent'] / t['wall_s']:>10.0f} "
                    f"{t['arrived']:>8} {t['captured']:>8} {t['drops']:>7} {loss:>7.2f} "
                    f"{per:>10.2f}"
                )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--send-child":
        dst, rate, count, size, max_s = sys.argv[2:7]
        send_child(dst, int(rate), int(count), int(size), float(max_s))
    elif len(sys.argv) > 1 and sys.argv[1] == "--capture-child":
        capture_child(sys.argv[2], sys.argv[3] == "kernel")
    else:
        main()
