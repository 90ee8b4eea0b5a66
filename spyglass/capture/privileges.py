"""Can this process sniff? Live capture needs CAP_NET_RAW (AF_PACKET sockets); CAP_NET_ADMIN
lets it force a large receive buffer and enforce rules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

_SYSTEMD_HINT = "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN in the spyglass agent's systemd unit"


def effective_capabilities(status_text: str) -> int:
    """The CapEff bit mask from the text of /proc/<pid>/status (0 when absent or unreadable)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return 0
    return 0


def check_capture_privileges(status_path: str | Path = "/proc/self/status") -> str | None:
    """None when this process may open AF_PACKET sockets, else one line saying what to do."""
    try:
        caps = effective_capabilities(Path(status_path).read_text())
    except OSError:
        # No /proc (unusual): root is the best guess we have.
        caps = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN) if os.geteuid() == 0 else 0
    if caps & (1 << CAP_NET_RAW):
        return None
    python = os.path.realpath(sys.executable)
    return (
        "live capture needs the CAP_NET_RAW capability: run as root, or: "
        f"sudo setcap cap_net_raw,cap_net_admin+eip {python} (or {_SYSTEMD_HINT})"
    )
