from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from spyglass import __version__
from spyglass.agent.server import AgentServer, AgentServerError, StoreBackend
from spyglass.api import protocol as p
from spyglass.api.client import AgentClient
from spyglass.core.models import Device, SeriesPoint
from spyglass.store.db import Store, StoreError
from tests.agent.helpers import DAY, ECHO, NEST, STATUS, T0, Raw, make_upload, run_as_nobody

# -- the wire ------------------------------------------------------------------------------------


def test_hello(raw: Raw) -> None:
    reply = raw.ask({"v": 1, "id": 1, "op": "hello"})
    assert reply == {
        "v": 1,
        "id": 1,
        "ok": True,
        "result": {
            "server": "spyglass-agent",
            "version": __version__,
            "protocol": [1],
            "ops": list(p.OPS),
            "events": ["device_seen", "upload_started", "upload_ended", "capture_problem",
                       "status"],
        },
    }


def test_status_passes_the_agents_figures_through(raw: Raw) -> None:
    result = raw.ask({"v": 1, "id": "s", "op": "status"})["result"]
    assert {k: result[k] for k in STATUS} == STATUS
    assert result["api"]["clients"] == 1


def test_devices_on_the_wire(raw: Raw) -> None:
    devices = raw.ask({"v": 1, "id": 2, "op": "devices"})["result"]
    assert [d["mac"] for d in devices] == sorted([ECHO, NEST])
    echo = next(d for d in devices if d["mac"] == ECHO)
    assert echo["model"] == "Amazon Echo"
    assert echo["names"] == ["kitchen-echo"]
    assert echo["ips"] == ["192.168.1.20"]
    assert echo["first_seen"] == T0
    assert set(echo) >= {"mac", "vendor", "model", "kind", "assistant", "names", "ips",
                         "first_seen", "last_seen"}


def test_uploads_use_the_analyze_json_field_names(raw: Raw) -> None:
    uploads = raw.ask({"v": 1, "id": 3, "op": "uploads"})["result"]
    assert len(uploads) == 3
    first = uploads[0]
    assert set(first) >= {"device", "start", "end", "bytes", "destination", "assistant",
                          "confidence", "peak_bps", "remote_ip", "proto", "port", "evidence", "id"}
    assert first["device"] == ECHO
    assert first["start"] == T0 + 10.25
    assert first["bytes"] == 31_000
    assert isinstance(first["id"], int)


def test_uploads_filtered_by_device_and_range(raw: Raw) -> None:
    by_device = raw.ask({"v": 1, "id": 4, "op": "uploads", "device": NEST.upper()})["result"]
    assert [u["device"] for u in by_device] == [NEST]
    window = raw.ask(
        {"v": 1, "id": 5, "op": "uploads", "device": ECHO, "since": T0 + 3600,
         "until": T0 + 2 * DAY}
    )["result"]
    assert [u["start"] for u in window] == [T0 + DAY]


def test_series_at_one_second(raw: Raw) -> None:
    result = raw.ask(
        {"v": 1, "id": 6, "op": "series", "device": ECHO, "since": T0, "until": T0 + 60}
    )["result"]
    assert result["resolution_s"] == 1
    assert result["points"][0] == {"t": T0, "up": 1000, "down": 2000}
    assert len(result["points"]) == 60


def test_a_month_at_one_second_is_downsampled_and_says_so(raw: Raw) -> None:
    result = raw.ask(
        {"v": 1, "id": 7, "op": "series", "device": ECHO, "since": T0, "until": T0 + 30 * DAY,
         "resolution_s": 1}
    )["result"]
    assert result["resolution_s"] > 1
    assert 30 * DAY / result["resolution_s"] <= 2000
    assert len(result["points"]) <= 2001
    # Downsampling sums; it never loses bytes.
    assert sum(pt["up"] for pt in result["points"]) == 60 * 1000 + 719 * 100
    assert all(pt["t"] % result["resolution_s"] == 0 for pt in result["points"])


def test_coarser_resolution_than_needed_is_kept(raw: Raw) -> None:
    result = raw.ask(
        {"v": 1, "id": 8, "op": "series", "device": ECHO, "since": T0, "until": T0 + 60,
         "resolution_s": 30}
    )["result"]
    assert result["resolution_s"] == 30
    # Buckets fall on multiples of the resolution (T0 is not one), and sum the seconds in them.
    assert [pt["t"] % 30 for pt in result["points"]] == [0, 0, 0]
    assert [pt["up"] for pt in result["points"]] == [10_000, 30_000, 20_000]


# -- bad requests keep the connection usable ------------------------------------------------------


def error_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    assert reply["error"]["message"]
    return str(reply["error"]["code"])


def test_malformed_json_then_a_valid_request(raw: Raw) -> None:
    raw.send(b'{"v": 1, "id": 1, "op": "hel\n')
    reply = raw.line()
    assert error_of(reply) == "bad_json"
    assert reply["id"] is None
    assert raw.ask({"v": 1, "id": 2, "op": "hello"})["ok"] is True


def test_not_utf8_and_not_an_object(raw: Raw) -> None:
    raw.send(b'{"v": 1, "id": "\xff"}\n')
    assert error_of(raw.line()) == "bad_json"
    raw.send(b"[1, 2]\n")
    assert error_of(raw.line()) == "bad_request"
    raw.send(b'{"v": 1, "id": 1, "op": "hello", "x": NaN}\n')
    assert error_of(raw.line()) == "bad_json"
    assert raw.ask({"v": 1, "id": 3, "op": "hello"})["ok"] is True


@pytest.mark.parametrize(
    ("request_", "code", "named"),
    [
        ({"v": 1, "id": 9, "op": "reboot"}, "unknown_op", "devices"),
        ({"v": 2, "id": 11, "op": "hello"}, "unsupported_version", "speaks 1"),
    ],
    ids=["unknown-op-names-the-known-ones", "wrong-version-names-the-supported-ones"],
)
def test_refusal_names_what_is_supported(
    raw: Raw, request_: dict[str, Any], code: str, named: str
) -> None:
    reply = raw.ask(request_)
    assert error_of(reply) == code
    assert reply["id"] == request_["id"]
    assert named in reply["error"]["message"]
    assert raw.ask({"v": 1, "id": request_["id"] + 1, "op": "hello"})["ok"] is True


def test_oversized_line_is_skipped_to_its_end(raw: Raw) -> None:
    big = json.dumps({"v": 1, "id": 13, "op": "hello", "pad": "x" * 200_000}).encode()
    raw.send(big[:100_000])
    assert error_of(raw.line()) == "too_large"  # answered before the line even ends
    raw.send(big[100_000:] + b"\n" + b'{"v": 1, "id": 14, "op": "hello"}\n')
    reply = raw.line()
    assert reply["id"] == 14 and reply["ok"] is True


def test_line_just_over_the_limit_in_one_write(raw: Raw) -> None:
    line = b'{"v": 1, "id": 15, "op": "hello", "pad": "' + b"x" * 65_536 + b'"}\n'
    raw.send(line + b'{"v": 1, "id": 16, "op": "hello"}\n')
    assert error_of(raw.line()) == "too_large"
    assert raw.line()["id"] == 16


def test_bad_parameters(raw: Raw) -> None:
    cases: list[dict[str, Any]] = [
        {"op": "series", "device": ECHO},  # no range
        {"op": "series", "since": T0, "until": T0 - 1},
        {"op": "series", "since": T0, "until": T0 + 1, "resolution_s": 0},
        {"op": "uploads", "device": "kitchen"},
        {"op": "uploads", "since": "yesterday"},
        {"op": "uploads", "limit": 5},
        {"op": "subscribe", "events": ["everything"]},
    ]
    for n, case in enumerate(cases):
        reply = raw.ask({"v": 1, "id": n, **case})
        assert error_of(reply) == "bad_request", case
        assert reply["id"] == n
    assert raw.ask({"v": 1, "id": 99, "op": "hello"})["ok"] is True


def test_pipelined_requests_answer_in_order(raw: Raw) -> None:
    ops = ["hello", "status", "devices", "uploads", "hello"] * 20
    raw.send(b"".join(
        json.dumps({"v": 1, "id": n, "op": op}).encode() + b"\n" for n, op in enumerate(ops)
    ))
    assert [raw.line()["id"] for _ in ops] == list(range(len(ops)))


def test_backend_failure_is_an_internal_error_and_the_connection_lives(
    short_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with StoreBackend(bad, dict) as backend, AgentServer(short_dir / "a.sock", backend) as srv:
        conn = Raw(Path(srv.path))
        reply = conn.ask({"v": 1, "id": 1, "op": "devices"})
        assert error_of(reply) == "internal"
        assert "not-a-db.db" in reply["error"]["message"]
        assert conn.ask({"v": 1, "id": 2, "op": "status"})["ok"] is True
        conn.close()


# -- events -------------------------------------------------------------------------------------


def test_subscriber_gets_published_events(server: AgentServer, raw: Raw) -> None:
    reply = raw.ask({"v": 1, "id": 1, "op": "subscribe", "events": ["upload_started"]})
    assert reply["result"] == {"events": ["upload_started"]}
    server.publish("device_seen", {"mac": ECHO})  # not subscribed to
    server.publish("upload_started", make_upload(T0))
    msg = raw.line()
    assert msg["event"] == "upload_started"
    assert msg["data"]["device"] == ECHO and msg["data"]["bytes"] == 31_000
    assert raw.ask({"v": 1, "id": 2, "op": "unsubscribe"})["ok"] is True
    server.publish("upload_started", make_upload(T0))
    assert raw.ask({"v": 1, "id": 3, "op": "hello"})["id"] == 3  # no event in between


def test_publish_without_subscribers_or_server_is_a_no_op(
    server: AgentServer, sock_path: Path, backend: StoreBackend
) -> None:
    server.publish("capture_problem", {"message": "interface went down"})
    idle = AgentServer(sock_path.with_name("idle.sock"), backend)
    idle.publish("capture_problem", {"message": "nobody listens"})
    with pytest.raises(ValueError, match="unknown event"):
        server.publish("dropped", {"count": 1})


def test_unserialisable_event_is_dropped_not_raised(server: AgentServer, raw: Raw) -> None:
    raw.ask({"v": 1, "id": 1, "op": "subscribe"})
    server.publish("capture_problem", {"when": object()})
    server.publish("capture_problem", {"message": "fine"})
    assert raw.line()["data"] == {"message": "fine"}


def test_stuck_subscriber_never_blocks_publish_nor_grows(
    server: AgentServer, sock_path: Path
) -> None:
    total = 100_000
    stuck = Raw(sock_path)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert stuck.ask({"v": 1, "id": 1, "op": "subscribe"})["ok"] is True
    client = AgentClient(sock_path)
    lively = client.subscribe(["capture_problem"], timeout=30)
    got: list[dict[str, Any]] = []

    def read_lively() -> None:
        for msg in lively:
            got.append(msg)
            if msg["data"].get("seq") == total - 1:
                return

    reader = threading.Thread(target=read_lively)
    reader.start()
    largest_backlog = 0
    for seq in range(total):
        server.publish("capture_problem", {"seq": seq, "message": "x" * 100})
        if seq % 1000 == 0:
            largest_backlog = max(largest_backlog, *(len(s.queue) for s in server._subscribers))
    reader.join()
    lively.close()

    # Bounded: at most a queue's worth waits per subscriber, and the socket buffer is capped.
    assert largest_backlog <= server.queue_size
    assert max(len(s.queue) for s in server._subscribers) <= server.queue_size
    for conn in server._conns:
        assert conn.writer.transport.get_write_buffer_size() <= 256 * 1024
    # The reading client saw the newest event; anything it missed is accounted for.
    assert got[-1]["data"]["seq"] == total - 1
    # The stuck client, once it reads, learns exactly how many events it lost.
    seen = dropped = 0
    while True:
        msg = stuck.line()
        if msg["event"] == "dropped":
            dropped += msg["data"]["count"]
            continue
        seen += 1
        if msg["data"]["seq"] == total - 1:
            break
    assert dropped > 0
    assert seen + dropped == total
    assert client.hello()["server"] == "spyglass-agent"  # requests still answered
    stuck.close()
    client.close()


def test_dead_subscriber_is_forgotten(server: AgentServer, sock_path: Path) -> None:
    gone = Raw(sock_path)
    gone.ask({"v": 1, "id": 1, "op": "subscribe"})
    gone.close()
    with AgentClient(sock_path) as client:
        for n in range(200):
            server.publish("capture_problem", {"n": n})
            if client.status()["api"]["subscribers"] == 0:
                break
        assert client.status()["api"]["subscribers"] == 0


# -- the socket file ----------------------------------------------------------------------------


def test_socket_mode_and_cleanup(server: AgentServer, sock_path: Path) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    server.stop()
    assert not sock_path.exists()


def test_group_is_set_when_asked(sock_path: Path, backend: StoreBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a socket's group to one we are not in needs root")
    with AgentServer(sock_path, backend, group=65534):
        assert os.stat(sock_path).st_gid == 65534
    with pytest.raises(AgentServerError, match="group 'no-such-group-xyz' does not exist"):
        AgentServer(sock_path, backend, group="no-such-group-xyz").start()


def test_stale_socket_is_replaced(sock_path: Path, backend: StoreBackend) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))  # bound, never listening: what a killed agent leaves behind
    dead.close()
    with AgentServer(sock_path, backend), AgentClient(sock_path) as client:
        assert client.hello()["server"] == "spyglass-agent"


def test_live_socket_is_not_taken_over(server: AgentServer, backend: StoreBackend) -> None:
    second = AgentServer(server.path, backend)
    with pytest.raises(AgentServerError, match="already listening"):
        second.start()
    with AgentClient(server.path) as client:  # the first one is untouched
        assert client.hello()["protocol"] == [1]


def test_other_files_are_not_replaced(sock_path: Path, backend: StoreBackend) -> None:
    sock_path.write_text("precious")
    with pytest.raises(AgentServerError, match="not a socket"):
        AgentServer(sock_path, backend).start()
    assert sock_path.read_text() == "precious"


def test_too_long_path_is_a_clear_error(tmp_path: Path, backend: StoreBackend) -> None:
    with pytest.raises(AgentServerError, match="too long"):
        AgentServer(tmp_path / ("x" * 120) / "agent.sock", backend).start()


def test_parent_directory_is_created(short_dir: Path, backend: StoreBackend) -> None:
    path = short_dir / "run" / "spyglass" / "agent.sock"
    with AgentServer(path, backend), AgentClient(path) as client:
        assert client.hello()["server"] == "spyglass-agent"


# -- who may connect ----------------------------------------------------------------------------


def _connect_as_nobody(path: str, groups: tuple[int, ...] = ()) -> bytes:
    """What a process running as nobody reads from the socket after sending hello."""

    def child() -> bytes:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(b'{"v": 1, "id": 1, "op": "hello"}\n')
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\n" in data:
                break
        return data or b"<closed>"

    return run_as_nobody(child, groups)


@pytest.fixture
def open_dir(short_dir: Path) -> Path:
    # Let nobody reach the socket file, so the refusal comes from SO_PEERCRED, not the mode.
    os.chmod(short_dir, 0o755)
    return short_dir


def test_stranger_is_refused_with_an_error_line(open_dir: Path, backend: StoreBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() a child to nobody")
    path = open_dir / "agent.sock"
    with AgentServer(path, backend, mode=0o666):  # group: root's, which nobody is not in
        out = _connect_as_nobody(str(path))
    msg = json.loads(out.split(b"\n")[0])
    assert msg["ok"] is False
    assert msg["error"]["code"] == "forbidden"
    assert "nobody" in msg["error"]["message"] or "65534" in msg["error"]["message"]


def test_member_of_the_sockets_group_is_allowed(open_dir: Path, backend: StoreBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() a child to nobody")
    path = open_dir / "agent.sock"
    with AgentServer(path, backend, group=65534):
        out = _connect_as_nobody(str(path))
    msg = json.loads(out.split(b"\n")[0])
    assert msg["ok"] is True, msg
    assert msg["result"]["server"] == "spyglass-agent"


def test_supplementary_group_member_is_allowed(open_dir: Path, backend: StoreBackend) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to setuid() a child to nobody")
    path = open_dir / "agent.sock"
    with AgentServer(path, backend, group=4242):  # not nobody's primary group
        out = _connect_as_nobody(str(path), groups=(4242,))
    assert json.loads(out.split(b"\n")[0])["ok"] is True, out


def test_reads_see_the_agents_later_writes_and_never_write(
    sock_path: Path, db_path: Path
) -> None:
    with (
        Store.open(db_path) as writer,
        StoreBackend(writer, dict) as backend,
        AgentServer(sock_path, backend),
        AgentClient(sock_path) as client,
    ):
        assert len(client.devices()) == 2
        writer.write_live(writer.live_capture("eth0"), devices=[Device("00:11:22:33:44:55")])
        assert len(client.devices()) == 3
        with pytest.raises(StoreError, match="read-only"), backend._reader() as store:
            store.set_setting("retention_days", "1")


@pytest.mark.parametrize("device", [ECHO, NEST, None])
@pytest.mark.parametrize(
    ("since", "until", "res"),
    [(T0, T0 + 60, 60), (T0 - 100, T0 + 30 * DAY, 1800), (T0 + 7, T0 + 5000, 120),
     (T0 + 0.5, T0 + 3 * DAY + 0.5, 3600), (T0 + 61, T0 + 62, 60), (T0, T0 + 7200, 1)],
)
def test_bucket_scan_gives_what_store_series_gives(
    db_path: Path, backend: StoreBackend, device: str | None, since: float, until: float,
    res: int,
) -> None:
    with Store.open(db_path) as store:
        # A second capture of the same seconds: sums run across captures.
        store.write_live(store.live_capture("wlan0"), series=[
            SeriesPoint(NEST, "142.250.1.1", T0 + 14, 1, 2, 1, 1),
            SeriesPoint(ECHO, "52.1.2.3", T0 + 3600, 5, 6, 1, 1),
        ])
        expected = [{"t": pt.second, "up": pt.bytes_up, "down": pt.bytes_down}
                    for pt in store.series(device, since, until, res)]
    with backend._reader() as reader:
        assert backend._bucket_sums(reader, device, since, until, res) == expected
    assert backend.series(device, since, until, res) == expected


def test_store_backend_refuses_a_memory_store() -> None:
    with Store.memory() as store, pytest.raises(ValueError, match="on disk"):
        StoreBackend(store, dict)
