"""A home LAN in network namespaces: speaker -- gateway -- cloud, for tests that need real packets.

```
 sg-spk-ID (eth0 10.77.0.2/24, fd77::2/64)
   └─veth─ sg-gw-ID (lan0 10.77.0.1/24, fd77::1/64 | wan0 10.78.0.1/24; forwards IPv4)
              └─veth─ sg-cloud-ID (eth0 10.78.0.2/24 + vendor addresses, DNS on 10.78.0.53)
```
Every interface is created inside its namespace (nothing appears on the host even briefly), the
gateway has no default route, and the cloud knows only the way back to the LAN: no packet can
leave the lab. Everything is deleted on exit, after an exception too, and labs left behind by a
crashed run (their pid is dead) are swept before a new one is built.

Use it as ``with lan_or_skip() as lan:`` (skips the test when namespaces cannot be made), then
``lan.socket(lan.speaker)`` for a socket that lives in the speaker's namespace, ``lan.call(ns,
fn)`` to run Python there, ``lan.run(ns, "cmd", ...)`` for a command, and ``lan.start_*`` for
servers in the cloud.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

# "X as X": LabUnavailable, lab_unavailable_reason and list_namespaces are imported from here.
from tests.netlab.nslab import LabUnavailable as LabUnavailable
from tests.netlab.nslab import NamespaceLab, lab_or_skip, sweep_dead
from tests.netlab.nslab import ip as _ip
from tests.netlab.nslab import lab_unavailable_reason as lab_unavailable_reason
from tests.netlab.nslab import list_namespaces as list_namespaces

SPEAKER_IP = "10.77.0.2"
GATEWAY_LAN_IP = "10.77.0.1"
GATEWAY_WAN_IP = "10.78.0.1"
CLOUD_IP = "10.78.0.2"
DNS_IP = "10.78.0.53"
SPEAKER_IP6 = "fd77::2"
GATEWAY_LAN_IP6 = "fd77::1"
LAN_NET = "10.77.0.0/24"
CLOUD_NET = "10.78.0.0/24"

# Interface names inside the namespaces.
SPEAKER_IF = "eth0"
GATEWAY_LAN_IF = "lan0"
GATEWAY_WAN_IF = "wan0"
CLOUD_IF = "eth0"

# Vendor names the lab's DNS answers, each with its own address in the cloud namespace.
VENDOR_HOSTS: dict[str, str] = {
    "bob-dispatch-prod-na.amazon.com": "10.78.0.10",
    "bob-dispatch-prod-eu.amazon.com": "10.78.0.11",
    "avs-alexa-14-na.amazon.com": "10.78.0.12",
    "device-metrics-us.amazon.com": "10.78.0.13",
    "www.google.com": "10.78.0.20",
    "embeddedassistant.googleapis.com": "10.78.0.21",
    "guzzoni.apple.com": "10.78.0.30",
    "api.sonos.com": "10.78.0.40",
}

Socket = socket.socket  # the class's socket() method shadows the module in annotations
_NAME_RE = re.compile(r"^sg-(spk|gw|cloud)-(\d+)(?:-\d+)?$")


def sweep_leftovers() -> list[str]:
    """Delete lab namespaces of ours whose creating process is gone; returns their names."""
    return sweep_dead(_NAME_RE, 2)


class HomeLan(NamespaceLab):
    """Three namespaces wired as speaker -- gateway -- cloud. A context manager."""

    def __init__(self) -> None:
        super().__init__()
        self.speaker = f"sg-spk-{self.id}"
        self.gateway = f"sg-gw-{self.id}"
        self.cloud = f"sg-cloud-{self.id}"
        self.namespaces = (self.speaker, self.gateway, self.cloud)
        self._servers: list[_Server] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tls_files: tuple[Path, Path] | None = None

    # -- build and tear down ---------------------------------------------------------------

    def _sweep_leftovers(self) -> None:
        sweep_leftovers()

    def _build(self) -> None:
        for ns in self.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        spk, gw, cloud = self.namespaces
        _ip("-n", spk, "link", "add", SPEAKER_IF, "type", "veth", "peer", "name", GATEWAY_LAN_IF,
            "netns", gw)  # fmt: skip
        _ip("-n", gw, "link", "add", GATEWAY_WAN_IF, "type", "veth", "peer", "name", CLOUD_IF,
            "netns", cloud)  # fmt: skip
        addrs = [
            (spk, SPEAKER_IF, f"{SPEAKER_IP}/24"),
            (spk, SPEAKER_IF, f"{SPEAKER_IP6}/64"),
            (gw, GATEWAY_LAN_IF, f"{GATEWAY_LAN_IP}/24"),
            (gw, GATEWAY_LAN_IF, f"{GATEWAY_LAN_IP6}/64"),
            (gw, GATEWAY_WAN_IF, f"{GATEWAY_WAN_IP}/24"),
            (cloud, CLOUD_IF, f"{CLOUD_IP}/24"),
            (cloud, CLOUD_IF, f"{DNS_IP}/32"),
            *((cloud, CLOUD_IF, f"{ip}/32") for ip in VENDOR_HOSTS.values()),
        ]
        for ns, ifname, cidr in addrs:
            extra = ["nodad"] if ":" in cidr else []
            _ip("-n", ns, "addr", "add", cidr, "dev", ifname, *extra)
        for ns, ifname in ((spk, SPEAKER_IF), (gw, GATEWAY_LAN_IF), (gw, GATEWAY_WAN_IF),
                           (cloud, CLOUD_IF)):  # fmt: skip
            _ip("-n", ns, "link", "set", ifname, "up")
        # Routes stay inside the lab: the speaker's default is the lab gateway, which itself
        # has none; the cloud only knows the way back to the LAN.
        _ip("-n", spk, "route", "add", "default", "via", GATEWAY_LAN_IP)
        _ip("-n", cloud, "route", "add", LAN_NET, "via", GATEWAY_WAN_IP)
        self.run(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()
        self._delete_namespaces()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- running things inside ---------------------------------------------------------------

    def socket(
        self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
    ) -> Socket:
        """A socket living in ``ns`` (usable from any thread)."""
        return self.call(ns, socket.socket, family, type)

    def delete_link(self, ns: str, ifname: str) -> None:
        """Remove an interface (and its veth peer): what unplugging a USB NIC looks like."""
        _ip("-n", ns, "link", "del", ifname)

    # -- servers in the cloud ----------------------------------------------------------------

    def start_tcp_sink(self, host: str = CLOUD_IP, port: int = 8080, echo: bool = False) -> TcpSink:
        sock = self._listener(host, port)
        return self._track(TcpSink(sock, echo=echo))

    def start_tls_server(
        self, host: str = VENDOR_HOSTS["bob-dispatch-prod-na.amazon.com"], port: int = 443,
        echo: bool = False,
    ) -> TlsServer:  # fmt: skip
        cert, key = self.tls_files()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        return self._track(TlsServer(self._listener(host, port), ctx, echo=echo))

    def start_udp_sink(self, host: str = CLOUD_IP, port: int = 443, echo: bool = False) -> UdpSink:
        sock = self.socket(self.cloud, socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((host, port))
        return self._track(UdpSink(sock, echo=echo))

    def start_dns(
        self, host: str = DNS_IP, port: int = 53, names: dict[str, str] | None = None
    ) -> DnsServer:
        sock = self.socket(self.cloud, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, port))
        return self._track(DnsServer(sock, VENDOR_HOSTS if names is None else names))

    def tls_files(self) -> tuple[Path, Path]:
        """(certificate, key) PEM files of a self-signed cert for every vendor name; clients
        trust it by loading the certificate as their CA file."""
        if self._tls_files is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sg-lab-")
            self._tls_files = make_self_signed(Path(self._tmp.name), list(VENDOR_HOSTS))
        return self._tls_files

    def _listener(self, host: str, port: int) -> Socket:
        sock = self.socket(self.cloud)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        return sock

    def _track[S: _Server](self, server: S) -> S:
        self._servers.append(server)
        server.start()
        return server


def lan_or_skip() -> AbstractContextManager[HomeLan]:
    """A HomeLan, or pytest.skip with the reason when this machine cannot build one."""
    return lab_or_skip(HomeLan, "namespace lab")


# -- servers ---------------------------------------------------------------------------------


class _Server:
    """A socket served by a thread until close(); byte and message counters under a lock."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.bytes_received = 0

    def start(self) -> None:
        self.sock.settimeout(0.1)
        self._spawn(self._serve)

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name=type(self).__name__)
        self._threads.append(t)
        t.start()

    def _serve(self) -> None:
        raise NotImplementedError

    def _add(self, nbytes: int) -> None:
        with self._cond:
            self.bytes_received += nbytes
            self._cond.notify_all()

    def wait_bytes(self, n: int, timeout: float = 10) -> bool:
        """True once at least ``n`` bytes arrived; False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self.bytes_received >= n, timeout)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.sock.close()


class TcpSink(_Server):
    """Accepts connections and counts what they send (and echoes it back when asked)."""

    def __init__(self, sock: socket.socket, echo: bool = False) -> None:
        super().__init__(sock)
        self.echo = echo
        self.connections = 0

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.connections += 1
            self._spawn(self._handle, conn)

    def _wrap(self, conn: socket.socket) -> socket.socket:
        return conn

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(0.2)
        try:
            conn = self._wrap(raw)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except (OSError, ssl.SSLError):
                    return
                if not data:
                    return
                self._add(len(data))
                if self.echo:
                    conn.sendall(data)


class TlsServer(TcpSink):
    """TcpSink behind a real TLS handshake; records the SNI names clients asked for."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, echo: bool = False) -> None:
        super().__init__(sock, echo=echo)
        self.server_names: list[str | None] = []
        ctx.sni_callback = self._on_sni
        self._ctx = ctx

    def _on_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        with self._cond:
            self.server_names.append(name)

    def _wrap(self, conn: socket.socket) -> socket.socket:
        conn.settimeout(5)
        tls = self._ctx.wrap_socket(conn, server_side=True)
        tls.settimeout(0.2)
        return tls


class UdpSink(_Server):
    """Counts datagrams and their bytes (echoing them when asked)."""

    def __init__(self, sock: socket.socket, echo: bool = False) -> None:
        super().__init__(sock)
        self.echo = echo
        self.datagrams = 0

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.datagrams += 1
            self._add(len(data))
            if self.echo:
                self.sock.sendto(data, peer)


class DnsServer(_Server):
    """Answers A queries for the names it knows (NXDOMAIN otherwise; no answer for other types)."""

    def __init__(self, sock: socket.socket, names: dict[str, str]) -> None:
        super().__init__(sock)
        self.names = {k.lower().rstrip("."): v for k, v in names.items()}
        self.queries: list[str] = []
        self.malformed = 0

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self.answer(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def answer(self, query: bytes) -> bytes | None:
        try:
            txid, flags, qdcount, name, qtype, qend = parse_question(query)
        except ValueError:
            with self._cond:
                self.malformed += 1
            return None
        if flags & 0x8000 or qdcount != 1:  # a response, or several questions: refuse
            return struct.pack("!HHHHHH", txid, 0x8000 | 5, 0, 0, 0, 0)
        with self._cond:
            self.queries.append(name)
        question = query[12:qend]
        rd = flags & 0x0100
        addr = self.names.get(name)
        if addr is None:
            return struct.pack("!HHHHHH", txid, 0x8080 | rd | 3, 1, 0, 0, 0) + question
        answers = b""
        if qtype == 1:
            answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
        header = struct.pack("!HHHHHH", txid, 0x8480 | rd, 1, 1 if answers else 0, 0, 0)
        return header + question + answers


# -- DNS wire format (what the lab's server and tests need) ---------------------------------


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def build_query(name: str, qtype: int = 1, txid: int = 0x5347) -> bytes:
    return (
        struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, 1)
    )


def parse_question(msg: bytes) -> tuple[int, int, int, str, int, int]:
    """(txid, flags, qdcount, lower-case name, qtype, end offset of the question)."""
    if len(msg) < 12:
        raise ValueError("DNS message shorter than its header")
    txid, flags, qdcount = struct.unpack_from("!HHH", msg)
    labels, pos = _read_name(msg, 12)
    if pos + 4 > len(msg):
        raise ValueError("DNS question cut short")
    (qtype,) = struct.unpack_from("!H", msg, pos)
    return txid, flags, qdcount, ".".join(labels).lower(), qtype, pos + 4


def _read_name(msg: bytes, pos: int) -> tuple[list[str], int]:
    labels: list[str] = []
    while True:
        if pos >= len(msg):
            raise ValueError("DNS name runs past the message")
        n = msg[pos]
        if n == 0:
            return labels, pos + 1
        if n & 0xC0:
            # Compression pointer: follow it once for the labels, the name ends here.
            if pos + 1 >= len(msg):
                raise ValueError("DNS name pointer cut short")
            target = ((n & 0x3F) << 8) | msg[pos + 1]
            if target >= pos:
                raise ValueError("DNS name pointer points forward")
            rest, _ = _read_name(msg, target)
            return labels + rest, pos + 2
        labels.append(msg[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n


def parse_a_records(msg: bytes) -> tuple[int, list[str]]:
    """(rcode, IPv4 addresses in the answer section) of a DNS response."""
    _txid, flags, qdcount = struct.unpack_from("!HHH", msg)
    (ancount,) = struct.unpack_from("!H", msg, 6)
    pos = 12
    for _ in range(qdcount):
        _labels, pos = _read_name(msg, pos)
        pos += 4
    addrs = []
    for _ in range(ancount):
        _labels, pos = _read_name(msg, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(msg[pos : pos + 4]))
        pos += rdlen
    return flags & 0x000F, addrs


def make_self_signed(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Write a self-signed EC certificate for ``names`` (and the lab's IPs); (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in VENDOR_HOSTS.values()]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "lab-cert.pem", directory / "lab-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
