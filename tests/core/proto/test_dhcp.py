from __future__ import annotations

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.packet import raw

from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.dhcp import parse_dhcp

MAC = "68:db:f5:90:19:64"
PARAMS = [1, 3, 6, 15, 26, 28, 51, 58, 59, 43]


def request(**opts: object) -> bytes:
    options = [("message-type", "request"), *opts.items(), "end"]
    return raw(
        BOOTP(op=1, chaddr=bytes.fromhex(MAC.replace(":", "")), xid=0x1234) / DHCP(options=options)
    )


def test_request_with_identifying_options() -> None:
    info = parse_dhcp(
        request(
            hostname=b"amazon-4c1f7a2b",
            requested_addr="192.168.12.112",
            param_req_list=PARAMS,
            vendor_class_id=b"android-dhcp-7.1.2",
        )
    )
    assert info.msg_type == 3
    assert info.client_mac == MAC
    assert info.hostname == "amazon-4c1f7a2b"
    assert info.vendor_class == "android-dhcp-7.1.2"
    assert info.requested_ip == "192.168.12.112"
    assert info.your_ip is None
    assert info.param_list == bytes(PARAMS)


def test_discover_and_ack() -> None:
    disc = raw(
        BOOTP(op=1, chaddr=b"\x1c\xf2\x9a\xc1\xc0\x05")
        / DHCP(
            options=[
                ("message-type", "discover"),
                ("hostname", b"Google-Home-Mini\x00"),
                ("vendor_class_id", b"dhcpcd-6.8.2:Linux-3.8.13+:armv7l"),
                "end",
            ]
        )
    )
    info = parse_dhcp(disc)
    assert (info.msg_type, info.hostname) == (1, "Google-Home-Mini")
    assert info.vendor_class is not None and info.vendor_class.startswith("dhcpcd-")
    ack = raw(
        BOOTP(op=2, yiaddr="192.168.1.40", chaddr=b"\x1c\xf2\x9a\xc1\xc0\x05")
        / DHCP(options=[("message-type", "ack"), "end"])
    )
    info = parse_dhcp(ack)
    assert (info.msg_type, info.your_ip, info.client_mac) == (
        5,
        "192.168.1.40",
        "1c:f2:9a:c1:c0:05",
    )


def test_plain_bootp_has_no_options() -> None:
    info = parse_dhcp(raw(BOOTP(op=1, chaddr=b"\x00\x11\x22\x33\x44\x55")))
    assert (
        info.msg_type is None and info.hostname is None and info.client_mac == "00:11:22:33:44:55"
    )


def test_option_overload_reads_the_file_field() -> None:
    payload = bytearray(request(hostname=b"ignored-not-here"))
    # Replace the options with overload=1 and put the hostname in the 'file' field.
    payload = payload[:240] + bytes([53, 1, 3, 52, 1, 1, 255])
    file_opts = bytes([12, 7]) + b"HomePod" + bytes([255])
    payload[108 : 108 + len(file_opts)] = file_opts
    info = parse_dhcp(bytes(payload))
    assert info.hostname == "HomePod" and info.msg_type == 3


def test_missing_end_option_is_tolerated() -> None:
    assert parse_dhcp(request(hostname=b"x")[:-1]).hostname == "x"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\x01" * 100, "shorter than the 236-byte"),
        (b"\x07" + b"\x00" * 300, "neither request"),
    ],
)
def test_malformed(payload: bytes, words: str) -> None:
    with pytest.raises(MalformedPayload, match=words):
        parse_dhcp(payload)


def test_option_past_end_raises() -> None:
    good = request(hostname=b"amazon-1234")
    cut = good[: good.index(b"amazon-1234") + 4]
    with pytest.raises(MalformedPayload, match="option 12 runs past end"):
        parse_dhcp(cut)
