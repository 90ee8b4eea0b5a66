"""The namespace home LAN itself: built, reachable only inside, and gone afterwards."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from tests.netlab.lan import (
    CLOUD_IP,
    DNS_IP,
    GATEWAY_LAN_IP,
    SPEAKER_IP,
    VENDOR_HOSTS,
    HomeLan,
    build_query,
    lan_or_skip,
    list_namespaces,
    parse_a_records,
    sweep_leftovers,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lan() -> Iterator[HomeLan]:
    with lan_or_skip() as lab:
        yield lab


def host_view() -> tuple[str, str, str]:
    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    return out("ip", "-o", "link"), out("ip", "route"), out("ip", "-6", "route")


def dns(lan: HomeLan, query: bytes) -> bytes:
    with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (DNS_IP, 53))
        return sock.recv(4096)


def test_builds_and_leaves_nothing_behind() -> None:
    before = host_view()
    with lan_or_skip() as lab:
        assert set(lab.namespaces) <= set(list_namespaces())
        links = lab.run(lab.gateway, "ip", "-o", "link").stdout
        assert "lan0@" in links and "wan0@" in links
        assert host_view() == before  # the host's own interfaces and routes untouched
    assert not set(lab.namespaces) & set(list_namespaces())
    assert host_view() == before


def test_torn_down_after_an_exception() -> None:
    names: tuple[str, ...] = ()
    with pytest.raises(RuntimeError, match="boom"), lan_or_skip() as lab:
        names = lab.namespaces
        lab.start_tcp_sink(port=7000)
        raise RuntimeError("boom")
    assert names and not set(names) & set(list_namespaces())


def test_sweeps_leftovers_of_dead_runs_only() -> None:
    with lan_or_skip():
        pass  # skips here when namespaces cannot be made
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, alive = f"sg-gw-{dead.pid}", "sg-gw-1-77"  # pid 1 is always alive
    try:
        for ns in (stale, alive):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            ["ip", "-n", stale, "link", "add", "lan0", "type", "veth", "peer", "name", "x0"],
            check=True,
        )
        assert sweep_leftovers() == [stale]
        assert alive in list_namespaces() and stale not in list_namespaces()
    finally:
        for ns in (stale, alive):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_speaker_reaches_cloud_through_gateway(lan: HomeLan) -> None:
    route = lan.run(lan.speaker, "ip", "route", "get", CLOUD_IP).stdout
    assert f"via {GATEWAY_LAN_IP}" in route
    sink = lan.start_tcp_sink(port=8081, echo=True)
    with lan.socket(lan.speaker) as client:
        client.settimeout(5)
        client.connect((CLOUD_IP, 8081))
        assert client.getsockname()[0] == SPEAKER_IP
        client.sendall(b"hello cloud" * 100)
        got = b""
        while len(got) < 1100:
            got += client.recv(4096)
    assert got == b"hello cloud" * 100
    assert sink.wait_bytes(1100) and sink.connections == 1


def test_tls_handshake_with_sni(lan: HomeLan) -> None:
    addr = VENDOR_HOSTS["guzzoni.apple.com"]
    server = lan.start_tls_server(host=addr, port=443, echo=True)
    ctx = ssl.create_default_context(cafile=str(lan.tls_files()[0]))
    raw = lan.socket(lan.speaker)
    raw.settimeout(5)
    raw.connect((addr, 443))
    with ctx.wrap_socket(raw, server_hostname="guzzoni.apple.com") as tls:
        tls.sendall(b"audio" * 1000)
        got = b""
        while len(got) < 5000:
            got += tls.recv(8192)
    assert server.wait_bytes(5000)
    assert server.server_names == ["guzzoni.apple.com"]


def test_udp_sink(lan: HomeLan) -> None:
    sink = lan.start_udp_sink(host=VENDOR_HOSTS["www.google.com"], port=443)
    with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(20):
            sock.sendto(b"\xc0" + b"q" * 1199, (VENDOR_HOSTS["www.google.com"], 443))
    assert sink.wait_bytes(20 * 1200) and sink.datagrams == 20


def test_dns_answers_vendor_names(lan: HomeLan) -> None:
    server = lan.start_dns()
    for name, addr in VENDOR_HOSTS.items():
        assert parse_a_records(dns(lan, build_query(name))) == (0, [addr])
    assert parse_a_records(dns(lan, build_query("WWW.Google.COM."))) == (0, ["10.78.0.20"])
    assert parse_a_records(dns(lan, build_query("example.org"))) == (3, [])  # NXDOMAIN
    assert parse_a_records(dns(lan, build_query("www.google.com", qtype=28))) == (0, [])
    # Garbage gets no answer, and the server keeps answering after it.
    with lan.socket(lan.speaker, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01\x02", (DNS_IP, 53))
    assert parse_a_records(dns(lan, build_query("guzzoni.apple.com"))) == (0, ["10.78.0.30"])
    assert server.malformed == 1
    assert "example.org" in server.queries


def test_nothing_outside_the_lab_is_reachable(lan: HomeLan) -> None:
    # Route look-ups send no packet: neither the gateway nor the cloud has a way out.
    for ns in (lan.gateway, lan.cloud):
        assert "default" not in lan.run(ns, "ip", "route").stdout
        for target in ("1.1.1.1", "192.168.1.1", "172.16.0.1"):
            proc = lan.run(ns, "ip", "route", "get", target, check=False)
            assert proc.returncode != 0 and "unreachable" in proc.stderr
    # The speaker's packets for the outside die at the gateway (TEST-NET-1, never assigned).
    with lan.socket(lan.speaker) as client, pytest.raises(OSError):
        client.settimeout(5)
        client.connect(("192.0.2.1", 80))
    # Ports that nobody listens on in the cloud are refused, not silently eaten.
    with lan.socket(lan.speaker) as client, pytest.raises(ConnectionRefusedError):
        client.settimeout(5)
        client.connect((CLOUD_IP, 9))
