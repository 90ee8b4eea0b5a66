from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV
from scapy.packet import raw

from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.dns import AAAA, CNAME, A, parse_dns, resolve_chain
from tests.core.proto.packets import frame, udp_payloads

ALEXA = "bob-dispatch-prod-na.amazon.com"


def alexa_response(compress: bool = True) -> bytes:
    """bob-dispatch -> CNAME -> CNAME -> 4 A, as a resolver would send it."""
    edge = "bob-dispatch-prod-na.amazon.com.edgekey.net"
    akam = "e123.a.akamaiedge.net"
    an = [
        DNSRR(rrname=ALEXA, type="CNAME", ttl=60, rdata=edge),
        DNSRR(rrname=edge, type="CNAME", ttl=60, rdata=akam),
    ] + [DNSRR(rrname=akam, type="A", ttl=20, rdata=f"52.94.233.{109 + i}") for i in range(4)]
    pkt = DNS(id=0x1234, qr=1, rd=1, ra=1, qd=[DNSQR(qname=ALEXA)], an=an)
    return raw(pkt.compress() if compress else pkt)


@pytest.mark.parametrize("compress", [True, False])
def test_cname_chain_resolves_to_the_asked_name(compress: bool) -> None:
    payload = alexa_response(compress)
    msg = parse_dns(payload)
    assert msg.id == 0x1234 and msg.is_response and msg.rcode == 0
    assert msg.questions == [(ALEXA, 1)]
    assert [r.rtype for r in msg.answers] == [CNAME, CNAME, A, A, A, A]
    assert msg.answers[1].value == "e123.a.akamaiedge.net"
    assert msg.answers[2].ttl == 20
    pairs = resolve_chain(msg)
    assert ("52.94.233.109", ALEXA) in pairs
    assert ("52.94.233.109", "e123.a.akamaiedge.net") in pairs
    assert {ip for ip, name in pairs if name == ALEXA} == {f"52.94.233.{109 + i}" for i in range(4)}
    assert len(pairs) == 8


def test_compression_is_actually_used_and_understood() -> None:
    assert len(alexa_response(True)) < len(alexa_response(False))
    assert parse_dns(alexa_response(True)) == parse_dns(alexa_response(False))


def test_aaaa_srv_txt_ptr_values() -> None:
    pkt = DNS(
        qr=1,
        qd=[DNSQR(qname="example.com", qtype="AAAA")],
        an=[
            DNSRR(rrname="example.com", type="AAAA", rdata="2001:db8::1"),
            DNSRR(rrname="example.com", type="AAAA", rdata="::ffff:192.0.2.1"),
            DNSRR(rrname="example.com", type="TXT", rdata=[b"a=1", b"b=two, three"]),
            DNSRR(rrname="1.2.0.192.in-addr.arpa", type="PTR", rdata="host.example.com"),
            DNSRRSRV(
                rrname="_x._tcp.example.com",
                priority=1,
                weight=2,
                port=8009,
                target="host.example.com",
            ),
        ],
    )
    msg = parse_dns(raw(pkt.compress()))
    values = [(r.rtype, r.value) for r in msg.answers]
    assert values[0] == (AAAA, "2001:db8::1")
    assert values[1][0] == AAAA and values[1][1].startswith("::ffff:")
    assert values[2] == (16, "a=1\x1fb=two, three")
    assert values[3] == (12, "host.example.com")
    assert values[4] == (33, "1 2 8009 host.example.com")
    assert resolve_chain(msg) == [("2001:db8::1", "example.com"), (values[1][1], "example.com")]


def test_case_of_0x20_randomised_names_is_folded_in_the_chain() -> None:
    pkt = DNS(
        qr=1,
        qd=[DNSQR(qname="BoB-DiSpAtCh-PrOd-Na.AmAzOn.CoM")],
        an=[DNSRR(rrname="bob-dispatch-prod-na.amazon.com", type="A", rdata="1.2.3.4")],
    )
    assert resolve_chain(parse_dns(raw(pkt))) == [("1.2.3.4", ALEXA)]


def test_cname_loop_in_answers_terminates() -> None:
    pkt = DNS(
        qr=1,
        qd=[DNSQR(qname="q.example")],
        an=[
            DNSRR(rrname="a.example", type="CNAME", rdata="b.example"),
            DNSRR(rrname="b.example", type="CNAME", rdata="a.example"),
            DNSRR(rrname="a.example", type="A", rdata="10.0.0.1"),
        ],
    )
    pairs = resolve_chain(parse_dns(raw(pkt)))
    assert ("10.0.0.1", "a.example") in pairs


def test_query_has_no_answers() -> None:
    msg = parse_dns(raw(DNS(id=9, rd=1, qd=[DNSQR(qname="unagi-na.amazon.com")])))
    assert not msg.is_response and msg.answers == [] and resolve_chain(msg) == []


def test_nxdomain_rcode() -> None:
    msg = parse_dns(raw(DNS(qr=1, rcode=3, qd=[DNSQR(qname="nope.example")])))
    assert msg.rcode == 3


HEADER_1Q = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\x00" * 11, "shorter than the 12-byte header"),
        (HEADER_1Q + b"\xc0\x0c\x00\x01\x00\x01", "compression loop"),  # points at itself
        (HEADER_1Q + b"\xc0\x0e\xc0\x0c\x00\x01\x00\x01", "compression loop"),  # 2-step loop
        (HEADER_1Q + b"\x05abc", "label runs past end"),
        (HEADER_1Q, "name runs past end"),
        (HEADER_1Q + b"\x03abc", "label runs past end"),
        (HEADER_1Q + b"\xc0", "pointer cut"),
        (HEADER_1Q + b"\x80abc\x00", "unknown label type"),
        (HEADER_1Q + b"\x03abc\x00\x00", "question type/class cut"),
        (HEADER_1Q + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "longer than 255"),
    ],
)
def test_malformed_messages_say_what_is_wrong(payload: bytes, words: str) -> None:
    with pytest.raises(MalformedPayload, match=words):
        parse_dns(payload)


def test_rdata_past_end_and_wrong_a_length() -> None:
    good = raw(DNS(qr=1, qd=[DNSQR(qname="a.b")], an=[DNSRR(rrname="a.b", rdata="1.2.3.4")]))
    with pytest.raises(MalformedPayload, match="runs past end"):
        parse_dns(good[:-1])
    bad_len = good[:-6] + b"\x00\x03" + good[-4:-1]
    with pytest.raises(MalformedPayload, match="A record with 3 bytes"):
        parse_dns(bad_len)


def test_forward_pointer_chain_of_max_length_is_fine() -> None:
    # 100 one-label pieces chained by pointers: long but legal (total < 255 bytes).
    body = b""
    base = 12 + 2 + 4  # question: pointer + type/class
    pieces = []
    for i in range(100):
        off = base + len(body)
        nxt = off + 4
        pieces.append(off)
        body += b"\x01x" + (struct.pack("!H", 0xC000 | nxt) if i < 99 else b"\x00\x00")
    payload = HEADER_1Q + struct.pack("!H", 0xC000 | pieces[0]) + b"\x00\x01\x00\x01" + body
    assert parse_dns(payload).questions[0][0] == ".".join(["x"] * 100)


# --- real captures -------------------------------------------------------------------------------

DNS_FILES = [
    "echodot3a_active.pcap",
    "homepod_FNT_S3E10.pcap",
    "sean_kennedy__alexa_5_40s.pcap",
    "sean_kennedy__what_time_is_it_5_0_18_31_47_58_capture.pcap",
]


def test_echodot_resolves_fireoscaptiveportal(captures: Path) -> None:
    # tshark: frame 953, to 192.168.12.112, fireoscaptiveportal.com -> 8 A records.
    fr = frame(captures / "echodot3a_active.pcap", 953)
    assert fr.dst == "192.168.12.112" and fr.sport == 53
    pairs = resolve_chain(parse_dns(fr.payload))
    assert ("52.55.98.56", "fireoscaptiveportal.com") in pairs
    assert {ip for ip, _ in pairs} == {
        "52.55.98.56",
        "52.7.82.103",
        "35.172.157.8",
        "54.84.30.6",
        "54.84.57.170",
        "54.165.25.10",
        "52.200.159.117",
        "52.21.103.48",
    }


def test_real_cname_chains(captures: Path) -> None:
    homepod = udp_payloads(captures / "homepod_FNT_S3E10.pcap", 53)
    seen = {p for f in homepod for p in resolve_chain(parse_dns(f.payload))}
    # tshark: cma.itunes.apple.com -> 2 CNAMEs -> 17.56.138.11 and four more.
    assert ("17.56.138.11", "cma.itunes.apple.com") in seen
    assert ("17.56.138.11", "cma.itunes-apple.com.akadns.net") in seen
    # origin.guzzoni-apple.com.akadns.net -> st14p01sa.guzzoni-apple.com.akadns.net -> 17.174.1.5
    assert ("17.174.1.5", "origin.guzzoni-apple.com.akadns.net") in seen
    assert ("17.174.1.5", "st14p01sa.guzzoni-apple.com.akadns.net") in seen
    kennedy = udp_payloads(captures / "sean_kennedy__alexa_5_40s.pcap", 53)
    pairs = [p for f in kennedy for p in resolve_chain(parse_dns(f.payload))]
    assert ("54.239.29.0", "unagi-na.amazon.com") in pairs
    assert ("52.84.59.4", "api.amazonalexa.com") in pairs
    assert ("52.84.59.4", "d1gsg05rq1vjdw.cloudfront.net") in pairs


@pytest.mark.parametrize("name", DNS_FILES)
def test_every_real_dns_message_matches_tshark(captures: Path, name: str) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(captures / name),
            "-Y",
            "dns && udp.port==53",
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "dns.qry.name",
            "-e",
            "dns.a",
            "-e",
            "dns.cname",
            "-e",
            "dns.flags.rcode",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    payloads = {f.number: f.payload for f in udp_payloads(captures / name, 53)}
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows, "tshark saw no DNS"
    for number, qname, a, cname, rcode in rows:
        msg = parse_dns(payloads[int(number)])
        assert [q for q, _ in msg.questions] == qname.split(","), number
        assert [r.value for r in msg.answers if r.rtype == A] == (a.split(",") if a else [])
        assert [r.value for r in msg.answers if r.rtype == CNAME] == (
            cname.split(",") if cname else []
        )
        assert msg.rcode == int(rcode or 0)
