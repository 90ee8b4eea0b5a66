"""How soon after a speaker stops streaming does the live agent announce the upload?

    sudo .venv/bin/python tests/benchmarks/agent_latency.py [--trials 3]

Builds the namespace home LAN, starts `spyglass agent` on the gateway, subscribes to its events,
and for each trial streams voice-like TLS records from the speaker namespace; prints the time from
the speaker's last send to the arrival of the `upload_ended` event (the issue asks for <= 2 s).
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from spyglass.api.client import AgentClient  # noqa: E402
from tests.agent import running  # noqa: E402
from tests.netlab.lan import VENDOR_HOSTS, HomeLan  # noqa: E402

HOST = "bob-dispatch-prod-na.amazon.com"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    with HomeLan() as lan, tempfile.TemporaryDirectory() as tmp:
        lan.run(lan.speaker, "ip", "link", "set", "dev", "eth0", "address", "68:db:f5:12:34:56")
        lan.start_dns()
        lan.start_tls_server()
        proc, sock = running.start_agent(lan.popen, lan.gateway, Path(tmp), "-i", "lan0",
                                         "--mode", "gateway")
        arrivals: list[float] = []
        sub = AgentClient(str(sock)).subscribe(["upload_ended"])
        threading.Thread(target=lambda: [arrivals.append(time.time()) for _ in sub],
                         daemon=True).start()
        cert, _ = lan.tls_files()
        ctx = ssl.create_default_context(cafile=str(cert))
        for trial in range(args.trials):
            last: list[float] = []

            def speak(last: list[float] = last) -> None:
                raw = socket.create_connection((VENDOR_HOSTS[HOST], 443), timeout=5)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                    end = time.monotonic() + 3.0
                    while time.monotonic() < end:
                        tls.sendall(b"\x00" * 118)
                        time.sleep(0.02)
                    last.append(time.time())
                    time.sleep(4.0)  # keep the connection open past the announcement

            n = len(arrivals)
            lan.call(lan.speaker, speak)
            deadline = time.monotonic() + 5
            while len(arrivals) == n and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(arrivals) == n:
                print(f"trial {trial + 1}: no upload_ended event within 5 s")
            else:
                print(f"trial {trial + 1}: upload announced {arrivals[n] - last[0]:.2f} s after "
                      "the speaker's last packet")
        sub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


if __name__ == "__main__":
    main()
