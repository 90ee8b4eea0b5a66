"""`spyglass status` against a real agent server on a real socket: what it prints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spyglass.agent.server import AgentServer, StoreBackend
from tests.agent.helpers import STATUS, db_path, short_dir
from tests.cli.conftest import Ran

__all__ = ["db_path", "short_dir"]  # fixtures

UNTIL = 1_700_000_000.0  # 22:13:20 UTC


@pytest.fixture
def india_time() -> Iterator[None]:
    """Local time is UTC+5:30 (no daylight saving): the window's end shows as 03:43:20."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def agent_status(db_path: Path, short_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A served status the test edits between asks, and the socket serving it."""
    status: dict[str, Any] = {**STATUS, "state": "capturing", "started": UNTIL - 10}
    sock = short_dir / "agent.sock"
    with StoreBackend(db_path, lambda: dict(status)) as backend:
        srv = AgentServer(sock, backend)
        srv.start()
        try:
            yield sock, status
        finally:
            srv.stop()


def test_status_shows_the_discovery_window_while_it_runs(
    cli: Callable[..., Ran], agent_status: tuple[Path, dict[str, Any]], india_time: None
) -> None:
    sock, status = agent_status
    status["discovery_until"] = UNTIL
    ran = cli("status", "--socket", sock)
    assert ran.rc == 0, ran.err
    assert "discovery: all traffic until 03:43:20\n" in ran.out
    assert ran.out.startswith("agent: capturing on eth0 (passive mode")
    # Over (null), or an agent that does not report it: no line at all.
    status["discovery_until"] = None
    ran = cli("status", "--socket", sock)
    assert ran.rc == 0 and "discovery" not in ran.out and "agent: capturing" in ran.out
    del status["discovery_until"]
    assert "discovery" not in cli("status", "--socket", sock).out
    # --json passes the field through as the agent gave it.
    status["discovery_until"] = UNTIL
    assert cli("status", "--socket", sock, "--json").json()["discovery_until"] == UNTIL
