from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.l2 import ARP
from scapy.packet import raw

from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.arp import parse_arp
from tests.core.proto.packets import arp_payloads


def test_request_and_reply() -> None:
    req = parse_arp(
        raw(ARP(op=1, hwsrc="68:db:f5:90:19:64", psrc="192.168.12.112", pdst="192.168.12.1"))
        + b"\x00" * 18
    )  # Ethernet padding
    assert (req.op, req.sender_mac, req.sender_ip) == (1, "68:db:f5:90:19:64", "192.168.12.112")
    assert (req.target_mac, req.target_ip) == ("00:00:00:00:00:00", "192.168.12.1")
    rep = parse_arp(
        raw(
            ARP(
                op=2,
                hwsrc="AA:BB:CC:00:11:22",
                psrc="10.0.0.1",
                hwdst="68:db:f5:90:19:64",
                pdst="10.0.0.2",
            )
        )
    )
    assert rep.op == 2 and rep.sender_mac == "aa:bb:cc:00:11:22"


def test_short_or_foreign_arp_raises() -> None:
    with pytest.raises(MalformedPayload, match="shorter than 28"):
        parse_arp(b"\x00\x01\x08\x00\x06\x04")
    with pytest.raises(MalformedPayload, match="unsupported"):
        parse_arp(raw(ARP(ptype=0x86DD, plen=16, psrc="::1", pdst="::2")))


def test_real_arp(captures: Path) -> None:
    frames = arp_payloads(captures / "echodot3a_active.pcap")
    assert len(frames) == 8  # tshark: 8 ARP frames
    parsed = [parse_arp(f.payload) for f in frames]
    assert all(p.sender_mac == f.src_mac for p, f in zip(parsed, frames, strict=True))
    homepod = [parse_arp(f.payload) for f in arp_payloads(captures / "homepod_FNT_S3E10.pcap")]
    assert ("d4:a3:3d:6b:1e:97", "192.168.12.118") in {(p.sender_mac, p.sender_ip) for p in homepod}
