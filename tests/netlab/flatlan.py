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
a dead run (their pid is gone) are swept before a new one is built (nslab.py's helpers).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from tests.netlab.nslab import NamespaceLab, lab_or_skip, sweep_dead
from tests.netlab.nslab import ip as _ip

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


def sweep_leftovers() -> list[str]:
    """Delete flat-lab namespaces whose creating process is gone; returns their names."""
    return sweep_dead(_NAME_RE, 1)


class FlatLan(NamespaceLab):
    """Router, speaker, spyglass host and a fourth host on one bridge. A context manager."""

    def __init__(self) -> None:
        super().__init__()
        self.switch = f"sg-fsw-{self.id}"
        self.router = f"sg-frt-{self.id}"
        self.speaker = f"sg-fspk-{self.id}"
        self.spy = f"sg-fspy-{self.id}"
        self.other = f"sg-fx-{self.id}"
        self.hosts = (self.router, self.speaker, self.spy, self.other)
        self.namespaces = (self.switch, *self.hosts)
        self._closers: list[Callable[[], None]] = []

    def _sweep_leftovers(self) -> None:
        sweep_leftovers()

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
        self._delete_namespaces()

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


def flat_lan_or_skip() -> AbstractContextManager[FlatLan]:
    """A FlatLan, or pytest.skip with the reason when this machine cannot build one."""
    return lab_or_skip(FlatLan, "flat namespace lab")
