"""Where packets come from: live interfaces (AF_PACKET ring or socket, BPF filters, privilege
checks), ARP sweeps and the opt-in ARP interception of intercept mode.

The names below load lazily, so the watchdog (``python -m spyglass.capture.watchdog``) starts
without numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BpfProgram": "spyglass.capture.bpf",
    "compile_filter": "spyglass.capture.bpf",
    "CaptureStats": "spyglass.capture.live",
    "InterfaceGone": "spyglass.capture.live",
    "LiveCapture": "spyglass.capture.live",
    "interface_subnets": "spyglass.capture.live",
    "check_capture_privileges": "spyglass.capture.privileges",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spyglass.capture' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
