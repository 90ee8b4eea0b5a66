from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from spyglass.agent.server import AgentServer, StoreBackend
from spyglass.api.client import AgentClient, AgentError, AgentTimeout, AgentUnavailable
from spyglass.api.convert import WireUpload
from spyglass.core.models import Device, Upload
from tests.agent.helpers import DAY, ECHO, NEST, STATUS, T0, make_upload, run_as_nobody


@pytest.fixture
def client(server: AgentServer, sock_path: Path) -> Iterator[AgentClient]:
    with AgentClient(sock_path, timeout=10) as c:
        yield c


def test_hello(client: AgentClient) -> None:
    hello = client.hello()
    assert hello["server"] == "spyglass-agent"
    assert hello["protocol"] == [1]
    assert "series" in hello["ops"]


def test_status(client: AgentClient) -> None:
    status = client.status()
    assert status["mode"] == STATUS["mode"]
    assert status["kernel_drops"] == STATUS["kernel_drops"]


def test_devices_are_dataclasses(client: AgentClient) -> None:
    devices = client.devices()
    assert all(isinstance(d, Device) for d in devices)
    echo = next(d for d in devices if d.mac == ECHO)
    assert echo.model == "Amazon Echo" and echo.names == ["kitchen-echo"]


def test_uploads_keep_their_ids(client: AgentClient) -> None:
    uploads = client.uploads()
    assert all(isinstance(u, WireUpload) for u in uploads)
    assert len({u.id for u in uploads}) == 3
    echo = client.uploads(device=ECHO, since=T0, until=T0 + 60)
    assert len(echo) == 1
    expected = make_upload(T0 + 10.25)
    assert {f: getattr(echo[0], f) for f in Upload.__dataclass_fields__} == {
        f: getattr(expected, f) for f in Upload.__dataclass_fields__
    }
    assert [u.device_mac for u in client.uploads(device=NEST)] == [NEST]


def test_series(client: AgentClient) -> None:
    short = client.series(ECHO, T0, T0 + 10)
    assert short["resolution_s"] == 1
    assert short["points"][:2] == [{"t": T0, "up": 1000, "down": 2000},
                                   {"t": T0 + 1, "up": 1000, "down": 2000}]
    month = client.series(None, T0, T0 + 30 * DAY, resolution_s=1)
    assert month["resolution_s"] == 1800
    assert len(month["points"]) <= 2000


def test_agent_error_carries_the_code_and_the_connection_survives(client: AgentClient) -> None:
    with pytest.raises(AgentError, match="'until' must be after 'since'") as info:
        client.series(ECHO, T0, T0 - 5)
    assert info.value.code == "bad_request"
    with pytest.raises(AgentError) as info:
        client.request("reboot")
    assert info.value.code == "unknown_op"
    assert client.hello()["server"] == "spyglass-agent"


def test_no_agent_names_the_path(short_dir: Path) -> None:
    path = short_dir / "nobody-home.sock"
    with pytest.raises(AgentUnavailable, match=str(path)) as info:
        AgentClient(path).status()
    assert info.value.path == str(path)
    assert "does not exist" in str(info.value)


def test_stale_socket_is_unavailable_too(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(AgentUnavailable, match=f"{path}.*stopped agent"):
        AgentClient(path).hello()


def test_default_path_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, server: AgentServer, sock_path: Path
) -> None:
    monkeypatch.setenv("SPYGLASS_SOCKET", str(sock_path))
    with AgentClient() as client:
        assert client.path == str(sock_path)
        assert client.hello()["server"] == "spyglass-agent"


def test_reconnects_after_the_agent_restarts(
    client: AgentClient, server: AgentServer, sock_path: Path, backend: StoreBackend
) -> None:
    assert client.hello()
    server.stop()
    with pytest.raises(AgentUnavailable, match=str(sock_path)):
        client.hello()
    with AgentServer(sock_path, backend):
        assert client.hello()["server"] == "spyglass-agent"
    with AgentServer(sock_path, backend):  # a connection that broke under us is retried once
        assert client.status()["mode"] == STATUS["mode"]


class GatedBackend:
    """The real store backend, with status held until a gate opens (an agent busy elsewhere)."""

    def __init__(self, inner: StoreBackend) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def status(self) -> dict[str, Any]:
        self.gate.wait(30)
        return self.inner.status()

    def devices(self) -> Sequence[Device]:
        return self.inner.devices()

    def uploads(
        self, device: str | None, since: float | None, until: float | None
    ) -> Sequence[Upload]:
        return self.inner.uploads(device, since, until)

    def series(
        self, device: str | None, since: float, until: float, resolution_s: int
    ) -> list[dict[str, Any]]:
        return self.inner.series(device, since, until, resolution_s)


def test_timeout_then_recovery(sock_path: Path, backend: StoreBackend) -> None:
    gated = GatedBackend(backend)
    with AgentServer(sock_path, gated), AgentClient(sock_path, timeout=0.3) as client:
        with pytest.raises(AgentTimeout, match=f"{sock_path}.*'status'"):
            client.status()
        gated.gate.set()
        assert len(client.devices()) == 2  # the late status reply is not taken for this one
        assert client.status()["mode"] == STATUS["mode"]


def test_one_client_shared_by_threads(client: AgentClient) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                assert len(client.devices()) == 2
                assert client.hello()["protocol"] == [1]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# -- subscriptions ------------------------------------------------------------------------------


def test_subscription_receives_filtered_events(client: AgentClient, server: AgentServer) -> None:
    with client.subscribe(["upload_started", "upload_ended"], timeout=10) as sub:
        assert sub.events == ["upload_started", "upload_ended"]
        server.publish("device_seen", Device(ECHO))
        server.publish("upload_started", make_upload(T0))
        server.publish("upload_ended", make_upload(T0))
        first, second = next(sub), next(sub)
    assert first["event"] == "upload_started" and first["data"]["device"] == ECHO
    assert second["event"] == "upload_ended"


def test_subscription_closed_from_another_thread_ends_quietly(
    client: AgentClient, server: AgentServer
) -> None:
    sub = client.subscribe()
    received: list[dict[str, Any]] = []
    ended = threading.Event()

    def consume() -> None:
        received.extend(sub)  # blocks until close()
        ended.set()

    reader = threading.Thread(target=consume)
    reader.start()
    server.publish("capture_problem", {"message": "kernel dropped 12 packets"})
    while not received:
        server.publish("status", {"mode": "passive"})
        ended.wait(0.01)
    sub.close()
    reader.join(10)
    assert ended.is_set()
    assert received[0]["data"] == {"message": "kernel dropped 12 packets"}


def test_subscription_raises_when_the_agent_goes(client: AgentClient, server: AgentServer) -> None:
    sub = client.subscribe(timeout=10)
    server.stop()
    with pytest.raises(AgentUnavailable, match="closed the event stream"):
        next(sub)
    sub.close()


def test_subscription_timeout(client: AgentClient) -> None:
    with client.subscribe(timeout=0.2) as sub, pytest.raises(AgentTimeout, match="no event"):
        next(sub)


def test_subscribe_to_an_unknown_event_is_refused(client: AgentClient) -> None:
    with pytest.raises(AgentError, match="unknown event") as info:
        client.subscribe(["everything"])
    assert info.value.code == "bad_request"


# -- refused clients ----------------------------------------------------------------------------


def test_refused_client_gets_a_clear_error(short_dir: Path, backend: StoreBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() a child to nobody")
    os.chmod(short_dir, 0o755)
    path = short_dir / "agent.sock"

    def child() -> bytes:
        outcomes = []
        for attempt in (AgentClient(path, timeout=10).hello, AgentClient(path).subscribe):
            try:
                attempt()
                outcomes.append("allowed")
            except AgentError as exc:
                outcomes.append(f"{type(exc).__name__}|{exc.code}|{exc}")
        return "\n".join(outcomes).encode()

    with AgentServer(path, backend, mode=0o666):
        out = run_as_nobody(child).decode()
    for outcome in out.split("\n"):
        kind, code, message = outcome.split("|", 2)
        assert (kind, code) == ("AgentError", "forbidden"), out
        assert "may not use the Spyglass agent" in message


def test_too_many_clients(sock_path: Path, backend: StoreBackend) -> None:
    with (
        AgentServer(sock_path, backend, max_clients=1),
        AgentClient(sock_path) as first,
        AgentClient(sock_path) as second,
    ):
        assert first.hello()
        with pytest.raises(AgentError, match="too many clients") as info:
            second.hello()
        assert info.value.code == "internal"
        first.close()
        for _ in range(100):  # the server notices the first one left
            try:
                assert second.hello()
                break
            except AgentError:
                threading.Event().wait(0.01)
        else:
            pytest.fail("the freed slot was never given to the waiting client")


def test_socket_permissions_are_reported(short_dir: Path, backend: StoreBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() a child to nobody")
    os.chmod(short_dir, 0o755)
    path = short_dir / "agent.sock"

    def child() -> bytes:
        try:
            AgentClient(path, timeout=10).hello()
        except AgentUnavailable as exc:
            return str(exc).encode()
        return b"allowed"

    with AgentServer(path, backend):  # 0660 root:root: the kernel refuses nobody first
        out = run_as_nobody(child).decode()
    assert "permission denied" in out and "'spyglass' group" in out
