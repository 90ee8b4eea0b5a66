"""Shared by the agent and API tests: a real store on disk, a real server on a real socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from spyglass.agent.server import AgentServer, StoreBackend
from spyglass.core.models import Device, SeriesPoint
from spyglass.store.db import Store

# The same devices and upload as the store tests (the agent and API tests import them from here).
from tests.store.helpers import ECHO as ECHO
from tests.store.helpers import NEST as NEST
from tests.store.helpers import T0 as T0
from tests.store.helpers import upload

DAY = 86_400
make_upload = upload
STATUS = {"mode": "passive", "interface": "eth0", "capture_rate_pps": 120.5, "kernel_drops": 3}


def fill(store: Store) -> None:
    """Two devices, three uploads, a busy minute and an hourly trickle over 30 days."""
    cid = store.live_capture("eth0")
    devices = [
        Device(ECHO, vendor="Amazon Technologies Inc.", kind="speaker", model="Amazon Echo",
               assistant="alexa", names=["kitchen-echo"], ips=["192.168.1.20"],
               evidence=["dns: bob-dispatch"], first_seen=T0, last_seen=T0 + 30 * DAY),
        Device(NEST, vendor="Google, Inc.", kind="speaker", model="Google Nest",
               assistant="google", names=["Living Room"], ips=["192.168.1.21"],
               first_seen=T0, last_seen=T0 + 60),
    ]
    series = [SeriesPoint(ECHO, "52.1.2.3", T0 + s, 1000, 2000, 3, 4) for s in range(60)]
    # Hour marks only, so they never share a second with the busy minute above.
    series += [
        SeriesPoint(ECHO, "52.1.2.4", T0 + 3600 * h, 100, 10, 1, 1) for h in range(1, 720)
    ]
    series += [SeriesPoint(NEST, "142.250.1.1", T0 + s, 500, 50, 1, 1) for s in range(0, 7200, 7)]
    uploads = [make_upload(T0 + 10.25), make_upload(T0 + DAY), make_upload(T0 + 20, NEST, 50_000)]
    store.write_live(cid, devices=devices, series=series, uploads=uploads)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # tmp_path can exceed the 107 bytes a Unix socket path may have.
    path = Path(tempfile.mkdtemp(prefix="sg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "spyglass.db"
    with Store.open(path) as store:
        fill(store)
    return path


@pytest.fixture
def sock_path(short_dir: Path) -> Path:
    return short_dir / "agent.sock"


@pytest.fixture
def backend(db_path: Path) -> Iterator[StoreBackend]:
    with StoreBackend(db_path, lambda: dict(STATUS)) as b:
        yield b


@pytest.fixture
def server(sock_path: Path, backend: StoreBackend) -> Iterator[AgentServer]:
    srv = AgentServer(sock_path, backend)
    srv.start()
    yield srv
    srv.stop()


class Raw:
    """A bare line connection, to send what a well-behaved client never would."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(obj).encode() + b"\n")
        return self.line()

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        assert isinstance(msg, dict)
        return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: AgentServer, sock_path: Path) -> Iterator[Raw]:
    conn = Raw(sock_path)
    yield conn
    conn.close()


NOBODY = 65534


def run_as_nobody(fn: Callable[[], bytes], groups: Sequence[int] = ()) -> bytes:
    """Run ``fn`` in a forked child that dropped to nobody (uid/gid 65534, only ``groups``)."""
    rfd, wfd = os.pipe()
    with warnings.catch_warnings():
        # The child only uses sockets and a pipe: no lock another thread might hold.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(rfd)
            os.setgroups(list(groups))
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(wfd, fn())
            code = 0
        except BaseException as exc:
            os.write(wfd, f"<child error: {exc!r}>".encode())
        finally:
            os._exit(code)
    os.close(wfd)
    out = b""
    while chunk := os.read(rfd, 65536):
        out += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return out
