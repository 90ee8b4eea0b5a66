"""A flat home LAN in network namespaces, for intercept mode and ARP sweeps.

```
                    sg-fsw-ID (bridge br0)
        ┌───────────────┬──┴────────────┬────────────────┐
 sg-frt-ID          sg-fspk-ID       sg-fspy-ID        sg-fx-ID
 router 10.79.0.1   speaker .20      spyglass .5       another host .66
```
One switch namespace holds a bridge; each host namespace has ``eth0`` (a veth whose peer is a
bridge port) with a fixed MAC. Every interface is created inside its namespace, nothing has a
default route, so no packet can leave the lab. Everything is deleted on exit, and labs left by
a dead run (their pid is gone) are swept before a new one is built. lan.py's helpers are reused.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.netlab.lan import (
    LabUnavailable,
    _delete_namespace,
    _ip,
    _pid_alive,
    lab_unavailable_reason,
    list_namespaces,
)

NET = "10.79.0.0/24"
IF = "eth0"
ROUTER_IP = "10.79.0.1"
SPY_IP = "10.79.0.5"
SPEAKER_IP = "10.79.0.20"
OTHER_IP = "10.79.0.66"
ROUTER_MAC = "02:79:00:00:00:01"
SPY_MAC = "02:79:00:00:00:05"
SPEAKER_MAC = "02:79:00:00:00:20"
OTHER_MAC = "02:79:00:00:00:66"

_HOSTS = {  # role -> (namespace prefix, ip, mac)
    "router": ("sg-frt", ROUTER_IP, ROUTER_MAC),
    "speaker": ("sg-fspk", SPEAKER_IP, SPEAKER_MAC),
    "spy": ("sg-fspy", SPY_IP, SPY_MAC),
    "other": ("sg-fx", OTHER_IP, OTHER_MAC),
}
_NAME_RE = re.compile(r"^sg-f(?:sw|rt|spk|spy|x)-(\d+)(?:-\d+)?$")
_counter = itertools.count()


def sweep_leftovers() -> list[str]:
    """Delete flat-lab namespaces whose creating process is gone; returns their names."""
    swept = []
    for name in list_namespaces():
        m = _NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_namespace(name)
            swept.append(name)
    return swept


class FlatLan:
    """Router, speaker, spyglass host and a fourth host on one bridge. A context manager."""

    def __init__(self) -> None:
        n = next(_counter)
        self.id = f"{os.getpid()}" + (f"-{n}" if n else "")
        self.switch = f"sg-fsw-{self.id}"
        self.router = f"sg-frt-{self.id}"
        self.speaker = f"sg-fspk-{self.id}"
        self.spy = f"sg-fspy-{self.id}"
        self.other = f"sg-fx-{self.id}"
        self.hosts = (self.router, self.speaker, self.spy, self.other)
        self.namespaces = (self.switch, *self.hosts)
        self._procs: list[subprocess.Popen[Any]] = []
        self._closers: list[Callable[[], None]] = []

    def __enter__(self) -> FlatLan:
        reason = lab_unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        sweep_leftovers()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for role, ns in zip(_HOSTS, self.hosts, strict=True):
            _prefix, ip, mac = _HOSTS[role]
            port = f"p-{role}"
            _ip("-n", ns, "link", "add", IF, "address", mac, "type", "veth",
                "peer", "name", port, "netns", self.switch)  # fmt: skip
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", IF)
            _ip("-n", ns, "link", "set", IF, "up")
            # IPv6 autoconfiguration chatter is noise here.
            self.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        present = set(list_namespaces())
        for ns in self.namespaces:
            if ns in present:
                _delete_namespace(ns)

    # -- running things inside ---------------------------------------------------------------

    def run(
        self, ns: str, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True, text=True, timeout=timeout, check=check,
        )  # fmt: skip

    def popen(self, ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside ``ns``; it is killed when the lab closes."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def call[T](self, ns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a thread that joined ``ns``."""
        result: list[T] = []
        error: list[BaseException] = []

        def run() -> None:
            try:
                fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.setns(fd, os.CLONE_NEWNET)
                finally:
                    os.close(fd)
                result.append(fn(*args, **kwargs))
            except BaseException as exc:
                error.append(exc)

        t = threading.Thread(target=run, name=f"netns-{ns}")
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]

    # -- looking at it -------------------------------------------------------------------------

    def neigh(self, ns: str, ip: str) -> str | None:
        """The MAC ``ns`` has cached for ``ip`` (None when it has no usable entry)."""
        out = self.run(ns, "ip", "-j", "neigh", "show", ip, "dev", IF).stdout
        for entry in json.loads(out or "[]"):
            if entry.get("dst") == ip and "lladdr" in entry:
                return str(entry["lladdr"]).lower()
        return None

    def flush_neigh(self, *namespaces: str) -> None:
        for ns in namespaces or self.hosts:
            self.run(ns, "ip", "neigh", "flush", "dev", IF)

    def ping(self, ns: str, ip: str, count: int = 1, timeout_s: float = 1.0) -> bool:
        """ICMP echo from ``ns`` (the lab has no ping binary): True when every one came back."""
        return all(self.call(ns, _icmp_echo, ip, seq, timeout_s) for seq in range(count))

    def sysctl(self, ns: str, name: str) -> str:
        return self.run(ns, "sysctl", "-n", name).stdout.strip()

    def start_tcp_echo(self, ns: str, ip: str, port: int) -> None:
        """A TCP echo server on ``ip:port`` inside ``ns``, closed with the lab."""
        sock: socket.socket = self.call(ns, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(8)
        sock.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with conn:
                    conn.settimeout(2)
                    try:
                        while data := conn.recv(4096):
                            conn.sendall(data)
                    except OSError:
                        pass

        t = threading.Thread(target=serve, name="flatlan-echo", daemon=True)
        t.start()

        def close() -> None:
            stop.set()
            t.join(timeout=3)
            sock.close()

        self._closers.append(close)

    def tcp_echo(self, ns: str, ip: str, port: int, payload: bytes = b"spyglass") -> bytes:
        """Send ``payload`` to an echo server from ``ns``; what came back."""

        def talk() -> bytes:
            with socket.create_connection((ip, port), timeout=3) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                out = b""
                while chunk := s.recv(4096):
                    out += chunk
                return out

        return self.call(ns, talk)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _icmp_echo(ip: str, seq: int, timeout_s: float) -> bool:
    ident = os.getpid() & 0xFFFF
    body = b"spyglass-flatlan"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, seq) + body
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.sendto(packet, (ip, 0))
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            s.settimeout(remaining)
            try:
                data, (src, _port) = s.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            typ, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if src == ip and typ == 0 and rid == ident and rseq == seq:
                return True
    return False


@contextmanager
def flat_lan_or_skip() -> Iterator[FlatLan]:
    """A FlatLan, or pytest.skip with the reason when this machine cannot build one."""
    import pytest

    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lan = FlatLan()
    try:
        lan.__enter__()
    except LabUnavailable as exc:
        pytest.skip(f"cannot build the flat namespace lab: {exc}")
    try:
        yield lan
    finally:
        lan.close()
