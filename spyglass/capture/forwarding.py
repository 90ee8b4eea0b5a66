"""The sysctls that make this host forward what it intercepts: which knobs, their old values
(for the restore) and setting them. Call these inside the interface's namespace (in_netns).
"""

from __future__ import annotations

import contextlib

from spyglass.capture.preflight import InterceptError
from spyglass.capture.watchdog import read_sysctl, write_sysctl

_IP_FORWARD = "net/ipv4/ip_forward"


def planned_sysctls(ifname: str) -> dict[str, str]:
    """Old values of the knobs we change (those already right are left alone)."""
    want = wanted_sysctls(ifname)
    old = {}
    for path, value in want.items():
        try:
            current = read_sysctl(path)
        except OSError as exc:
            raise InterceptError(f"cannot read sysctl {path}: {exc}") from None
        if current != value:
            old[path] = current
    if _IP_FORWARD in old:
        # Writing ip_forward resets accept_redirects (kernel behaviour): put it back after.
        path = "net/ipv4/conf/all/accept_redirects"
        with contextlib.suppress(OSError):
            old[path] = read_sysctl(path)
    return old


def wanted_sysctls(ifname: str) -> dict[str, str]:
    """Each knob intercept mode needs on ``ifname`` and the value it needs."""
    return {
        _IP_FORWARD: "1",
        # Forwarding out of the interface a packet came in on would tell the device
        # "use the router directly" and end the interception.
        "net/ipv4/conf/all/send_redirects": "0",
        f"net/ipv4/conf/{ifname}/send_redirects": "0",
    }


def apply_sysctls(ifname: str, old: dict[str, str]) -> None:
    """Set the knobs whose old values ``old`` holds (what planned_sysctls returned)."""
    for path, value in wanted_sysctls(ifname).items():
        if path in old:
            try:
                write_sysctl(path, value)
            except OSError as exc:
                raise InterceptError(f"cannot set sysctl {path}={value}: {exc}") from None
