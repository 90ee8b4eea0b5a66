"""The shipped systemd unit asks for exactly the capabilities capture needs and runs a real
command line: every option it passes exists in `spyglass agent --help`."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "packaging" / "systemd" / "spyglass-agent.service"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT)
    return cp


def test_least_privilege() -> None:
    svc = unit()["Service"]
    assert svc["User"] == "spyglass"
    assert set(svc["AmbientCapabilities"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(svc["CapabilityBoundingSet"].split()) == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert svc["NoNewPrivileges"] == "yes"


def test_exec_start_options_exist() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert argv[1] == "agent"
    help_text = subprocess.run(
        [sys.executable, "-m", "spyglass", "agent", "--help"], capture_output=True, text=True,
        check=True,
    ).stdout
    for opt in (a for a in argv[2:] if a.startswith("--")):
        assert re.search(rf"{re.escape(opt)}\b", help_text), opt
