"""Replay a ReplayPlan (spyglass.sim.replay) over real sockets in the namespace lab.

The speaker namespace opens each planned connection from the original local port (to the lab
address the plan mapped its remote host to, same remote port) and sends every upstream payload at
its time, one send() per original segment; a scripted peer in the cloud namespace sends the
downstream payloads at theirs. Both ends run on the same monotonic clock (one process), so the
peer needs no cue from the speaker: it finds the connection's script by (lab address, port,
speaker port) in a registry the speaker fills before it connects. Connections that began with a
TLS ClientHello open real TLS 1.3 with the original SNI, and their payloads travel inside TLS
(each send is the original segment size less the record overhead, so frames stay near the
original sizes). DNS names the device asked are asked of the lab's DNS, which answers with the
plan's lab addresses.

To keep frames as the original's: TCP timestamps are off in the speaker and cloud namespaces (MSS
1460 on the 1500-byte veths, like the captures) and GSO is limited to one segment per packet, so
a capture on the gateway shows wire-sized frames rather than 64 KB super-packets.

Everything is bounded by the plan's length plus a few seconds, and closed on every exit path.
"""

from __future__ import annotations

import gc
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from spyglass.sim.replay import Connection, Direction, ReplayPlan
from tests.netlab.lan import (
    CLOUD_IF,
    DNS_IP,
    GATEWAY_LAN_IF,
    SPEAKER_IF,
    SPEAKER_IP,
    VENDOR_HOSTS,
    HomeLan,
    build_query,
)

TLS_RECORD_OVERHEAD = 22  # TLS 1.3 AEAD: 5-byte header, 1-byte inner type, 16-byte tag
SETUP_MARGIN_S = 0.3  # between the end of setup and the replay's t=0
GRACE_S = 3.0  # after the plan's end, for the last bytes in flight
SWITCH_INTERVAL_S = 0.0005
_ZEROS = memoryview(bytes(1 << 16))
_UDP_MAX = 65507


@dataclass(slots=True)
class Send:
    conn_id: int
    direction: Direction
    due: float  # monotonic
    at: float  # monotonic, when send() was called
    nbytes: int  # what the plan asked for (the original segment's payload)


@dataclass(slots=True)
class ReplayReport:
    sends: list[Send] = field(default_factory=list)
    planned_up: int = 0
    planned_down: int = 0
    connections_opened: int = 0
    tls_server_names: list[str | None] = field(default_factory=list)
    dns_asked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    origin: float = 0.0  # UNIX time of the replay's t=0 (captured frames carry UNIX times)

    def sent(self, direction: Direction) -> int:
        return sum(s.nbytes for s in self.sends if s.direction == direction)

    def drift_ms(self, direction: Direction | None = None) -> dict[str, float]:
        """Lateness of the sends against the plan: mean, 95th percentile and max, in ms."""
        late = sorted((s.at - s.due) * 1000 for s in self.sends if direction in (None, s.direction))
        if not late:
            return {"mean": 0.0, "p95": 0.0, "max": 0.0}
        p95 = late[min(len(late) - 1, int(0.95 * len(late)))]
        return {"mean": statistics.fmean(late), "p95": p95, "max": late[-1]}


class _Run:
    """State shared by the speaker and cloud threads of one replay."""

    def __init__(self, lan: HomeLan, plan: ReplayPlan, speed: float) -> None:
        self.lan, self.plan, self.speed = lan, plan, speed
        self.report = ReplayReport(
            planned_up=plan.payload_bytes("up"), planned_down=plan.payload_bytes("down")
        )
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.registry: dict[tuple[str, str, int, int], Connection] = {}
        self.local_port: dict[int, int] = {}
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []  # servers: run until stop
        self.speakers: list[threading.Thread] = []  # end with the plan
        self.peers: list[threading.Thread] = []  # end when the speaker closes
        self.t0 = float("inf")  # set when setup is done
        self.deadline = float("inf")
        self.clock = threading.Event()  # t0 and deadline are set

    def due(self, t: float) -> float:
        return self.t0 + t / self.speed

    def error(self, msg: str) -> None:
        with self.lock:
            self.report.errors.append(msg)

    def spawn(
        self, fn: Callable[..., None], *args: object, group: list[threading.Thread] | None = None
    ) -> None:
        def guarded() -> None:
            try:
                fn(*args)
            except Exception as e:  # a failing connection must not stop the others
                self.error(f"{fn.__name__}: {type(e).__name__}: {e}")

        t = threading.Thread(target=guarded, daemon=True, name=f"replay-{fn.__name__}")
        with self.lock:
            (self.threads if group is None else group).append(t)
        t.start()

    def sock(self, ns: str, kind: int) -> socket.socket:
        s = self.lan.socket(ns, socket.AF_INET, kind)
        with self.lock:
            self.sockets.append(s)
        return s

    def sleep_until(self, when: float) -> bool:
        """False when the replay was stopped first."""
        while not self.stop.is_set():
            left = when - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))
        return False

    def log(self, conn_id: int, direction: Direction, due: float, nbytes: int) -> None:
        with self.lock:
            self.report.sends.append(Send(conn_id, direction, due, time.monotonic(), nbytes))


class _Stream:
    """One end of a TCP (or TLS) connection: timed sends, draining what arrives in between."""

    def __init__(self, run: _Run, sock: socket.socket, overhead: int) -> None:
        self.run, self.sock, self.overhead = run, sock, overhead
        self.eof = False

    def send(self, n: int) -> None:
        n = max(1, n - self.overhead)
        self.sock.settimeout(5)  # not what drain() left: a full buffer empties in microseconds
        while n > 0:
            k = min(n, len(_ZEROS))
            self.sock.sendall(_ZEROS[:k])
            n -= k

    def drain(self, until: float) -> None:
        """Read (and drop) incoming bytes until ``until`` or the peer's close."""
        while not self.run.stop.is_set() and not self.eof:
            left = until - time.monotonic()
            if left <= 0.002:  # a socket timeout is rounded up to whole ms: sleep the rest
                return
            self.sock.settimeout(left - 0.001)
            try:
                if not self.sock.recv(65536):
                    self.eof = True
            except TimeoutError:
                pass
            except OSError:  # reset, or a TLS alert: nothing more will come
                self.eof = True

    def idle_until(self, when: float) -> None:
        self.drain(when)
        self.run.sleep_until(when)


class _Datagrams(_Stream):
    def __init__(self, run: _Run, sock: socket.socket, peer: tuple[str, int] | None) -> None:
        super().__init__(run, sock, 0)
        self.peer = peer

    def send(self, n: int) -> None:
        data = _ZEROS[: min(max(n, 1), _UDP_MAX, len(_ZEROS))]
        if self.peer is None:
            self.sock.send(data)
        else:
            self.sock.sendto(data, self.peer)

    def idle_until(self, when: float) -> None:
        if self.peer is None:  # the speaker's connected socket: drain replies
            super().idle_until(when)
        else:  # the cloud's shared socket is drained by its own reader
            self.run.sleep_until(when)


def _pump(run: _Run, link: _Stream, conn: Connection, direction: Direction) -> None:
    run.clock.wait(timeout=60)
    if run.stop.is_set() or not run.clock.is_set():
        return
    for t, n in run.plan.sends(conn.id, direction):
        due = run.due(t)
        link.idle_until(due)
        if run.stop.is_set():
            return
        run.log(conn.id, direction, due, n)
        link.send(n)


# -- the speaker's side ----------------------------------------------------------------------


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a replay: the lab's certificate does not cover every name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # fixes the record overhead
    return ctx


def _bind(run: _Run, sock: socket.socket, conn: Connection, port: int) -> None:
    """Bind the speaker's port and note it: the cloud finds the connection's script by it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((SPEAKER_IP, port))
    port = sock.getsockname()[1]
    with run.lock:
        run.registry[(conn.proto, conn.remote_ip, conn.remote_port, port)] = conn
        run.local_port[conn.id] = port


def _connected(run: _Run, conn: Connection, kind: int) -> socket.socket:
    """A socket from the original local port when it can be had (it may still be taken by an
    earlier connection of the plan in TIME_WAIT), else from any port."""
    for port in (conn.local_port, 0):
        sock = run.sock(run.lan.speaker, kind)
        try:
            _bind(run, sock, conn, port)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(5)
            sock.connect((conn.remote_ip, conn.remote_port))
            return sock
        except OSError:
            sock.close()
            if port == 0:
                raise
    raise AssertionError("unreachable")


def _open(run: _Run, conn: Connection) -> _Stream:
    if conn.proto == "udp":
        return _Datagrams(run, _connected(run, conn, socket.SOCK_DGRAM), None)
    sock = _connected(run, conn, socket.SOCK_STREAM)
    overhead = 0
    if conn.tls:
        sock = _client_ctx().wrap_socket(sock, server_hostname=conn.sni)
        with run.lock:
            run.sockets.append(sock)
        overhead = TLS_RECORD_OVERHEAD
    with run.lock:
        run.report.connections_opened += 1
    return _Stream(run, sock, overhead)


def _speaker_conn(run: _Run, conn: Connection, link: _Stream | None) -> None:
    if link is None:
        assert conn.start is not None
        if not run.sleep_until(run.due(conn.start)):
            return
        link = _open(run, conn)
    _pump(run, link, conn, "up")
    close_at = run.due(conn.end if conn.end is not None else run.plan.duration)
    link.idle_until(close_at)
    with suppress(OSError):
        link.sock.close()


def _dns_query(run: _Run, sock: socket.socket, name: str, qtype: int) -> None:
    try:
        sock.send(build_query(name, qtype))
    except (OSError, ValueError) as e:
        run.error(f"DNS query for {name}: {e}")
        return
    with run.lock:
        run.report.dns_asked.append(name)


def _speaker_dns(run: _Run, sock: socket.socket) -> None:
    for q in run.plan.dns:
        if q.t is not None and run.sleep_until(run.due(q.t)):
            _dns_query(run, sock, q.name, q.qtype)


# -- the cloud's side ------------------------------------------------------------------------


def _server_ctx(run: _Run) -> ssl.SSLContext:
    cert, key = run.lan.tls_files()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.num_tickets = 0  # no session tickets: downstream bytes are the plan's

    def on_sni(_obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        with run.lock:
            run.report.tls_server_names.append(name)

    ctx.sni_callback = on_sni
    return ctx


def _tcp_listener(run: _Run, addr: str, port: int, ctx: ssl.SSLContext) -> None:
    lsock = run.sock(run.lan.cloud, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((addr, port))
    lsock.listen(64)
    lsock.settimeout(0.1)
    run.spawn(_accept_loop, run, lsock, addr, port, ctx)


def _accept_loop(
    run: _Run, lsock: socket.socket, addr: str, port: int, ctx: ssl.SSLContext
) -> None:
    while not run.stop.is_set():
        try:
            sock, peer = lsock.accept()
        except TimeoutError:
            continue
        with run.lock:
            run.sockets.append(sock)
            conn = run.registry.get(("tcp", addr, port, peer[1]))
        if conn is None:
            run.error(f"cloud {addr}:{port}: no planned connection from port {peer[1]}")
            sock.close()
            continue
        run.spawn(_cloud_conn, run, conn, sock, ctx, group=run.peers)


def _cloud_conn(run: _Run, conn: Connection, sock: socket.socket, ctx: ssl.SSLContext) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    overhead = 0
    if conn.tls:
        sock.settimeout(5)
        sock = ctx.wrap_socket(sock, server_side=True)
        with run.lock:
            run.sockets.append(sock)
        overhead = TLS_RECORD_OVERHEAD
    link = _Stream(run, sock, overhead)
    _pump(run, link, conn, "down")
    link.drain(run.deadline)  # until the speaker closes
    with suppress(OSError):
        sock.close()


def _udp_server(run: _Run, addr: str, port: int) -> socket.socket:
    sock = run.sock(run.lan.cloud, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((addr, port))
    sock.settimeout(0.1)
    run.spawn(_udp_drain, run, sock)
    return sock


def _udp_drain(run: _Run, sock: socket.socket) -> None:
    while not run.stop.is_set():
        with suppress(TimeoutError):
            sock.recv(65536)


def _cloud_udp(run: _Run, conn: Connection, sock: socket.socket) -> None:
    link = _Datagrams(run, sock, (SPEAKER_IP, run.local_port[conn.id]))
    _pump(run, link, conn, "down")


# -- the whole replay ------------------------------------------------------------------------


def prepare_lab(lan: HomeLan, plan: ReplayPlan, *, mac: bool = True) -> list[str]:
    """Make the lab look like the capture: the speaker's MAC (so vendor lookup and speaker
    gating work as on the original), wire-sized frames, and the plan's cloud addresses.
    Returns the addresses added to the cloud (``finish_lab`` removes them); the MAC, sysctl
    and GSO settings stay with the lab (use a fresh lab per device)."""
    if mac:
        lan.run(lan.speaker, "ip", "link", "set", "dev", SPEAKER_IF, "address", plan.device_mac)
    for ns in (lan.speaker, lan.cloud):
        lan.run(ns, "sysctl", "-qw", "net.ipv4.tcp_timestamps=0")
    for ns, ifname in ((lan.speaker, SPEAKER_IF), (lan.cloud, CLOUD_IF)):
        lan.run(ns, "ip", "link", "set", "dev", ifname, "gso_max_segs", "1")
    present = lan.run(lan.cloud, "ip", "-o", "-4", "addr", "show", "dev", CLOUD_IF).stdout
    have = {w.split("/")[0] for w in present.split() if "/" in w}
    added = sorted(set(plan.addresses.values()) - have)
    for addr in added:
        lan.run(lan.cloud, "ip", "addr", "add", f"{addr}/32", "dev", CLOUD_IF)
    return added


def finish_lab(lan: HomeLan, added: list[str]) -> None:
    for addr in added:
        lan.run(lan.cloud, "ip", "addr", "del", f"{addr}/32", "dev", CLOUD_IF, check=False)


def replay(lan: HomeLan, plan: ReplayPlan, *, speed: float = 1.0, dns: bool = True) -> ReplayReport:
    """Play ``plan`` in ``lan`` in real time (``speed`` > 1 plays faster); returns what was sent
    and how late. Starts the lab's DNS (answering the plan's names) unless ``dns`` is False."""
    if not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    run = _Run(lan, plan, speed)
    began = time.monotonic()
    added = prepare_lab(lan, plan)
    dns_server = None
    # A thread due to send waits for the GIL up to the switch interval (5 ms by default) while
    # another runs, and a full garbage collection in a big process (pytest) stops every thread
    # for tens of ms: both would show as late sends. The replay itself makes little garbage.
    interval, collecting = sys.getswitchinterval(), gc.isenabled()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.disable()
    try:
        if dns:
            dns_server = lan.start_dns(names={**VENDOR_HOSTS, **plan.dns_names})
        _play(run)
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()
        run.stop.set()
        run.clock.set()  # threads still waiting for t=0 see the stop
        for t in (*run.threads, *run.speakers, *run.peers):
            t.join(timeout=2)
        with run.lock:
            socks = list(run.sockets)
        for s in socks:
            with suppress(OSError):
                s.close()
        if dns_server is not None:
            dns_server.close()
        finish_lab(lan, added)
        run.report.wall_s = time.monotonic() - began
    return run.report


def _play(run: _Run) -> None:
    plan = run.plan
    ctx = _server_ctx(run)
    udp_socks: dict[tuple[str, int], socket.socket] = {}
    for c in plan.connections:
        where = (c.remote_ip, c.remote_port)
        if c.proto == "udp" and where not in udp_socks:
            udp_socks[where] = _udp_server(run, *where)
    for addr, port in sorted({(c.remote_ip, c.remote_port) for c in plan.connections
                              if c.proto == "tcp"}):  # fmt: skip
        _tcp_listener(run, addr, port, ctx)
    dns_sock = run.sock(run.lan.speaker, socket.SOCK_DGRAM)
    dns_sock.connect((DNS_IP, 53))
    dns_sock.settimeout(1)
    for q in plan.dns:  # names asked before the range: ask first, as the device had
        if q.t is None:
            _dns_query(run, dns_sock, q.name, q.qtype)
            with suppress(TimeoutError):
                dns_sock.recv(4096)
    early = {}
    for c in plan.connections:
        if c.start is None or c.proto == "udp":
            try:
                early[c.id] = _open(run, c)
            except (OSError, ssl.SSLError) as e:
                run.error(f"connection {c.id} to {c.remote_ip}:{c.remote_port}: {e}")
    # t=0 falls on the same fraction of a second as in the capture, so the analysis's 100-ms
    # bins and per-second series cut the replay where they cut the original.
    mono, wall = time.monotonic(), time.time()
    shift = (plan.origin - (wall + SETUP_MARGIN_S)) % 1.0
    run.t0 = mono + SETUP_MARGIN_S + shift
    run.report.origin = wall + SETUP_MARGIN_S + shift
    run.deadline = run.due(plan.duration) + GRACE_S
    run.clock.set()
    run.spawn(_speaker_dns, run, dns_sock, group=run.speakers)
    for c in plan.connections:
        if c.proto == "udp" and c.id in early:
            run.spawn(_cloud_udp, run, c, udp_socks[(c.remote_ip, c.remote_port)],
                      group=run.speakers)  # fmt: skip
        if c.start is None and c.id not in early:
            continue
        run.spawn(_speaker_conn, run, c, early.get(c.id), group=run.speakers)
    for group in (run.speakers, run.peers):
        with run.lock:
            threads = list(group)
        for t in threads:
            t.join(timeout=max(0.0, run.deadline - time.monotonic()))


# -- capturing on the gateway ----------------------------------------------------------------


@contextmanager
def gateway_capture(lan: HomeLan, path: Path, *, timeout: float = 5) -> Iterator[Path]:
    """tcpdump on the gateway's LAN interface into ``path`` for the duration of the block."""
    proc = lan.popen(
        lan.gateway, "tcpdump", "-i", GATEWAY_LAN_IF, "-w", str(path), "-U", "-n", "-Z", "root",
        "-s", "0", "--immediate-mode",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lan0, ..." once the socket is open
    if "listening" not in line:
        proc.kill()
        raise RuntimeError(f"tcpdump did not start on {GATEWAY_LAN_IF}: {line.strip()}")
    try:
        yield path
    finally:
        time.sleep(0.2)  # the last frames through the ring
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        proc.stderr.close()
