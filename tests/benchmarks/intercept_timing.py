"""How long intercept mode takes to start, to take effect, and to undo itself (prints figures).

    sudo .venv/bin/python tests/benchmarks/intercept_timing.py [ROUNDS]

In the flat namespace LAN (tests/netlab/flatlan.py, needs root): watchdog start-up,
Interceptor.start(), start -> both ARP caches poisoned, stop() -> true entries, SIGKILL of an
agent -> true entries (watchdog) and -> sysctls restored. Medians and maxima over ROUNDS.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from spyglass.capture.intercept import Interceptor
from spyglass.capture.watchdog import InterceptState, start_watchdog, write_state
from tests.netlab.flatlan import (
    IF,
    ROUTER_IP,
    ROUTER_MAC,
    SPEAKER_IP,
    SPEAKER_MAC,
    SPY_MAC,
    FlatLan,
)

REPO = Path(__file__).resolve().parents[2]
AGENT = """
import sys, time
from spyglass.capture.intercept import Interceptor, install_exit_handlers
it = Interceptor("eth0", sys.argv[1])
it.add(sys.argv[2])
install_exit_handlers(it)
it.start()
print("running", flush=True)
while True:
    time.sleep(1)
"""


def since(t0: float, cond: Callable[[], bool], timeout_s: float = 10.0) -> float:
    """Seconds from ``t0`` until ``cond`` held (polled every 10 ms; nan when it never did)."""
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            return float("nan")
        time.sleep(0.01)
    return time.monotonic() - t0


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    figures: dict[str, list[float]] = {}

    def note(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds)

    with FlatLan() as lan, tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"

        def entries() -> tuple[str | None, str | None]:
            return lan.neigh(lan.speaker, ROUTER_IP), lan.neigh(lan.router, SPEAKER_IP)

        def fresh() -> None:
            lan.flush_neigh()
            lan.ping(lan.speaker, ROUTER_IP)
            lan.ping(lan.router, SPEAKER_IP)
            time.sleep(1.1)  # past the kernel's ARP locktime, as on a LAN at rest

        for _ in range(rounds):
            write_state(state, InterceptState(os.getpid(), IF, SPY_MAC, ROUTER_IP, ROUTER_MAC))
            t0 = time.monotonic()
            dog = start_watchdog(state, os.getpid())
            note("watchdog start-up (to ready)", time.monotonic() - t0)
            write_state(
                state, InterceptState(os.getpid(), IF, SPY_MAC, ROUTER_IP, ROUTER_MAC, clean=True)
            )
            dog.wait()

            fresh()
            it = Interceptor(IF, ROUTER_IP, netns=lan.spy)
            it.add(SPEAKER_IP)
            t0 = time.monotonic()
            it.start()
            note("Interceptor.start()", time.monotonic() - t0)
            poisoned = since(t0, lambda: entries() == (SPY_MAC, SPY_MAC))
            note("start() call -> both caches poisoned", poisoned)
            t0 = time.monotonic()
            it.stop()
            note("stop() call (5 corrections over 2 s)", time.monotonic() - t0)
            it.close()

            fresh()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lan.spy, sys.executable, "-c", AGENT, ROUTER_IP,
                 SPEAKER_IP], stdout=subprocess.PIPE, text=True, cwd=REPO,
            )  # fmt: skip
            assert proc.stdout is not None
            proc.stdout.readline()
            since(time.monotonic(), lambda: entries() == (SPY_MAC, SPY_MAC))
            t0 = time.monotonic()
            proc.kill()
            proc.wait()
            proc.stdout.close()
            restored = since(t0, lambda: entries() == (ROUTER_MAC, SPEAKER_MAC))
            note("SIGKILL -> true entries (watchdog)", restored)
            forwarding = since(t0, lambda: lan.sysctl(lan.spy, "net.ipv4.ip_forward") == "0")
            note("SIGKILL -> ip_forward restored", forwarding)
            time.sleep(0.5)  # the watchdog finishes its rounds

    print(f"intercept timing, {rounds} rounds (median / max, seconds)")
    for name, values in figures.items():
        print(f"  {name:40s} {statistics.median(values):6.3f} / {max(values):6.3f}")


if __name__ == "__main__":
    main()
