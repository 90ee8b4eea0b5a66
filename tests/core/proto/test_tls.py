from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.tls import client_hello_sni
from tests.core.proto.packets import client_hello, frame, tcp_payloads

TLS_FILES = [
    "echodot3a_active.pcap",
    "homepod_FNT_S3E10.pcap",
    "sean_kennedy__alexa_5_40s.pcap",
    "sean_kennedy__what_time_is_it_5_0_18_31_47_58_capture.pcap",
    "haipeng_li__flip_a_coin_5_30s.pcap",
]


def test_crafted_client_hello() -> None:
    assert (
        client_hello_sni(client_hello("avs-alexa-4-na.amazon.com")) == "avs-alexa-4-na.amazon.com"
    )
    assert client_hello_sni(client_hello("Guzzoni.Apple.COM.")) == "guzzoni.apple.com"
    assert client_hello_sni(client_hello(None)) is None
    assert client_hello_sni(client_hello("x.example", session_id=b"")) == "x.example"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x16",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x17\x03\x03\x00\x10" + b"\x00" * 16,
        b"\x16\x03\x03\x00\x30\x02" + b"\x00" * 47,  # ServerHello
        b"\x16\x02\x00\x00\x30\x01" + b"\x00" * 47,  # not TLS 1.x
        b"\x80\x2e\x01\x03\x01",
    ],  # SSLv2-style hello
)
def test_not_a_client_hello_is_none(payload: bytes) -> None:
    assert client_hello_sni(payload) is None


def test_every_cut_is_none_or_the_name() -> None:
    full = client_hello("bob-dispatch-prod-na.amazon.com", before=3)
    sni_end = full.index(b"bob-dispatch") + len("bob-dispatch-prod-na.amazon.com")
    for cut in range(len(full)):
        got = client_hello_sni(full[:cut])
        assert got == ("bob-dispatch-prod-na.amazon.com" if cut >= sni_end else None), cut


def _patch(payload: bytes, at: int, value: bytes) -> bytes:
    return payload[:at] + value + payload[at + len(value) :]


def test_broken_lengths_raise() -> None:
    good = client_hello("a.example")
    sid_at = 5 + 4 + 2 + 32
    with pytest.raises(MalformedPayload, match="session id of 200 bytes"):
        client_hello_sni(_patch(good, sid_at, b"\xc8"))
    cs_at = sid_at + 1 + 32
    with pytest.raises(MalformedPayload, match="cipher suites length 3"):
        client_hello_sni(_patch(good, cs_at, b"\x00\x03"))
    with pytest.raises(MalformedPayload, match="record length"):
        client_hello_sni(_patch(good, 3, b"\xff\xff"))
    with pytest.raises(MalformedPayload, match="too short"):
        client_hello_sni(_patch(good, 6, b"\x00\x00\x05"))
    # The SNI list claims more than its extension holds.
    at = good.index(b"a.example") - 5
    with pytest.raises(MalformedPayload, match="server_name list"):
        client_hello_sni(_patch(good, at, struct.pack("!H", 400)))


def test_record_continues_past_segment_with_sni_in_first_part() -> None:
    hello = client_hello("unagi-na.amazon.com", before=0)
    padded = hello + b"\x00" * 2000  # rest of a long hello in the next segment
    grown = _patch(padded, 3, struct.pack("!H", len(hello) - 5 + 2000))
    body_len = len(hello) - 9 + 2000
    grown = _patch(grown, 6, body_len.to_bytes(3, "big"))
    ext_at = hello.index(b"\x00\x00", 5 + 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2)
    grown = _patch(grown, ext_at - 2, struct.pack("!H", len(hello) - ext_at + 2000))
    assert client_hello_sni(grown[:1400]) == "unagi-na.amazon.com"


# --- real captures -------------------------------------------------------------------------------


def test_real_homepod_hello_names_guzzoni(captures: Path) -> None:
    fr = frame(captures / "homepod_FNT_S3E10.pcap", 23)  # tshark: SNI guzzoni.apple.com
    assert fr.src == "192.168.12.118"
    assert client_hello_sni(fr.payload) == "guzzoni.apple.com"
    # Any prefix of a real hello is handled: the name or None, never an exception.
    for cut in range(0, len(fr.payload), 7):
        assert client_hello_sni(fr.payload[:cut]) in (None, "guzzoni.apple.com")


def test_real_hello_without_sni_is_none(captures: Path) -> None:
    fr = frame(captures / "echodot3a_active.pcap", 2514)  # tshark: ClientHello, no server_name
    assert fr.payload[0] == 0x16 and fr.payload[5] == 1
    assert client_hello_sni(fr.payload) is None


@pytest.mark.parametrize("name", TLS_FILES)
def test_every_real_hello_matches_tshark(captures: Path, name: str) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(captures / name),
            "-Y",
            "tls.handshake.type==1",
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "tls.handshake.extensions_server_name",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = {int(n): sni or None for n, sni in (ln.split("\t") for ln in out.splitlines())}
    mine: dict[int, str | None] = {}
    for fr in tcp_payloads(captures / name):
        sni = client_hello_sni(fr.payload)  # raises on nothing in the real data
        if sni is not None or fr.payload[:1] == b"\x16" and fr.payload[5:6] == b"\x01":
            mine[fr.number] = sni
    for number, sni in expected.items():
        assert mine.get(number) == sni, number
    # tshark does not dissect retransmitted hellos again; we do, and find the same names.
    extra = {mine[n] for n in mine.keys() - expected.keys()}
    assert extra <= set(expected.values())
