"""Where packets come from: live interfaces (AF_PACKET), with BPF filters and privilege checks."""

from spyglass.capture.bpf import BpfProgram, compile_filter
from spyglass.capture.live import (
    CaptureStats,
    InterfaceGone,
    LiveCapture,
    interface_subnets,
)
from spyglass.capture.privileges import check_capture_privileges

__all__ = [
    "BpfProgram",
    "CaptureStats",
    "InterfaceGone",
    "LiveCapture",
    "check_capture_privileges",
    "compile_filter",
    "interface_subnets",
]
