"""How fast AgentServer.publish() is, and what a stuck subscriber costs (prints figures).

    .venv/bin/python tests/benchmarks/api_events.py [EVENTS]

Cases: no subscriber; one subscriber that never reads; plus one that reads in another process
(the GUI is another process). Memory: peak Python allocations while publishing (tracemalloc).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from spyglass.agent.server import AgentServer, StoreBackend
from spyglass.store.db import Store

READER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"v":1,"id":1,"op":"subscribe"}\n')
buf = b""; n = 0; last = sys.argv[2].encode()
while True:
    chunk = s.recv(1 << 20)
    if not chunk: break
    buf += chunk
    n += chunk.count(b"\n")
    if last in buf[-200:]: break
    buf = buf[-200:]
print(n - 1)
"""


def publish_all(server: AgentServer, n: int) -> float:
    t = time.perf_counter()
    for seq in range(n):
        server.publish("capture_problem", {"seq": seq, "message": "x" * 100})
    return time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    Store.open(tmp / "s.db").close()
    path = tmp / "a.sock"
    with AgentServer(path, StoreBackend(tmp / "s.db", dict)) as server:
        dt = publish_all(server, n)
        print(f"no subscriber:        {dt / n * 1e6:6.2f} us/event")

        stuck = socket.socket(socket.AF_UNIX)
        stuck.connect(str(path))
        stuck.sendall(b'{"v":1,"id":1,"op":"subscribe"}\n')
        stuck.recv(4096)
        dt = publish_all(server, n)
        print(f"1 stuck subscriber:   {dt / n * 1e6:6.2f} us/event")
        tracemalloc.start()
        publish_all(server, n)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  peak Python allocations while publishing {n} more: {peak / 1e6:.2f} MB "
              f"(unbounded would be ~{n * 140 / 1e6:.0f} MB)")

        last = json.dumps({"seq": n - 1})[1:-1].replace(" ", "")
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(path), last], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.5)  # let it subscribe
        t = time.perf_counter()
        dt = publish_all(server, n)
        out, _ = reader.communicate(timeout=120)
        total = time.perf_counter() - t
        print(f"stuck + live reader:  {dt / n * 1e6:6.2f} us/event publish; reader got "
              f"{out.strip()} of {n} lines (rest dropped, counted) in {total:.2f} s")
        stuck.close()


if __name__ == "__main__":
    main()
