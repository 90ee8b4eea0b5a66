"""Start a real `spyglass agent` process inside a lab namespace and wait until it captures."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spyglass.api.client import AgentClient, AgentUnavailable

Popen = Callable[..., "subprocess.Popen[Any]"]


def start_agent(
    popen: Callable[..., subprocess.Popen[Any]], ns: str, tmp: Path, *args: str
) -> tuple[subprocess.Popen[Any], Path]:
    """``popen`` is the lab's (it ends the process with the lab). The agent logs to
    ``tmp/agent.log``; the socket is ``tmp/agent.sock``; the store ``tmp/agent.db``."""
    sock = tmp / "agent.sock"
    log = tmp / "agent.log"
    with open(log, "ab") as err:
        proc = popen(
            ns, sys.executable, "-m", "spyglass", "agent", *args, "--socket", str(sock),
            "--db", str(tmp / "agent.db"), stdout=subprocess.DEVNULL, stderr=err,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with AgentClient(str(sock), timeout=2) as c:
                if c.status().get("state") == "capturing":
                    return proc, sock
        except AgentUnavailable:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise AssertionError(f"agent did not come up in 30 s: {log.read_text()[-2000:]}")
