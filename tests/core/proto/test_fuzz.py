"""Random and mutated input into every parser: a clean result or MalformedPayload, nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.l2 import ARP
from scapy.packet import raw

from spyglass.core.identify import DeviceIdentifier
from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.arp import parse_arp
from spyglass.core.proto.dhcp import parse_dhcp
from spyglass.core.proto.dns import parse_dns, resolve_chain
from spyglass.core.proto.mdns import mdns_info
from spyglass.core.proto.ssdp import parse_ssdp
from spyglass.core.proto.tls import client_hello_sni
from tests.core.proto.packets import client_hello
from tests.core.proto.test_dns import alexa_response
from tests.core.proto.test_mdns import googlecast_announcement
from tests.core.proto.test_ssdp import SONOS_NOTIFY

SEEDS = [
    alexa_response(),
    alexa_response(compress=False),
    googlecast_announcement(),
    client_hello("bob-dispatch-prod-na.amazon.com"),
    client_hello(None, before=4),
    raw(
        BOOTP(op=1, chaddr=b"\x68\xdb\xf5\x90\x19\x64")
        / DHCP(
            options=[
                ("message-type", "request"),
                ("hostname", b"amazon-1234"),
                ("param_req_list", [1, 3, 6]),
                ("vendor_class_id", b"dhcpcd-6"),
                "end",
            ]
        )
    ),
    SONOS_NOTIFY,
    raw(ARP(op=1, hwsrc="68:db:f5:90:19:64", psrc="10.0.0.2", pdst="10.0.0.1")),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 4))
        if op == 0:
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            del data[i:]
        elif op == 2:
            data.insert(i, draw(st.integers(0, 255)))
        elif op == 3:
            del data[i]
        else:  # a compression pointer somewhere: the loop-maker
            data[i : i + 2] = bytes([0xC0 | draw(st.integers(0, 3)), draw(st.integers(0, 255))])
    return bytes(data)


def _dns_all(payload: bytes) -> object:
    msg = parse_dns(payload)
    resolve_chain(msg)
    info = mdns_info(msg)
    ident = DeviceIdentifier()
    ident.add_mdns(info)
    for rec in msg.answers:
        ident.add_domain(rec.name, "dns")
    ident.identity()
    return ident.names()


def _dhcp_all(payload: bytes) -> object:
    ident = DeviceIdentifier()
    ident.add_dhcp(parse_dhcp(payload))
    return ident.identity()


def _ssdp_all(payload: bytes) -> object:
    ident = DeviceIdentifier()
    ident.add_ssdp(parse_ssdp(payload))
    return ident.identity()


PARSERS: list[Callable[[bytes], object]] = [
    _dns_all,
    client_hello_sni,
    _dhcp_all,
    _ssdp_all,
    parse_arp,
]


def _only_malformed(payload: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(payload)
        except MalformedPayload as exc:
            assert str(exc), parse  # always says what was wrong


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes(payload: bytes) -> None:
    _only_malformed(payload)


@settings(max_examples=800, deadline=None)
@given(mutated())
def test_mutated_valid_packets(payload: bytes) -> None:
    _only_malformed(payload)


def test_long_pointer_chains_end_in_the_hop_limit() -> None:
    # The question is a pointer to a pointer to a pointer ... 2000 deep, then the root.
    header = bytes([0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0])
    chain = b"".join((0xC000 | (14 + 2 * i)).to_bytes(2, "big") for i in range(2000)) + b"\x00"
    with pytest.raises(MalformedPayload, match="compression loop"):
        parse_dns(header + chain + b"\x00\x01\x00\x01")


def test_many_names_into_one_deep_chain_stay_cheap() -> None:
    # 100 questions, each pointing into the middle of a chain of 100 one-letter labels linked by
    # pointers: jumped-to suffixes are remembered, so this is linear, not 100 x 100.
    n = 100
    base = 12 + n * 6
    labels = (
        b"".join(
            b"\x01a" + (0xC000 | (base + 4 * (i + 1))).to_bytes(2, "big") for i in range(n - 1)
        )
        + b"\x01a\x00"
    )
    questions = b"".join(
        (0xC000 | (base + 4 * (i % n))).to_bytes(2, "big") + b"\x00\x01\x00\x01" for i in range(n)
    )
    header = bytes([0, 1, 0x81, 0x80, 0, n, 0, 0, 0, 0, 0, 0])
    msg = parse_dns(header + questions + labels)
    assert msg.questions[0][0] == ".".join(["a"] * n)
    assert msg.questions[-1][0] == "a"
