"""ARP for IPv4 over Ethernet (RFC 826): who has which IP, which MAC."""

from __future__ import annotations

from dataclasses import dataclass

from spyglass.core.proto import MalformedPayload, ipv4_str, mac_str


@dataclass(slots=True)
class ArpInfo:
    op: int  # 1 request, 2 reply
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str


def parse_arp(payload: bytes) -> ArpInfo:
    """Parse an Ethernet/IPv4 ARP packet (trailing padding is ignored)."""
    if len(payload) < 28:
        raise MalformedPayload(f"ARP: {len(payload)} bytes, shorter than 28")
    ptype = (payload[2] << 8) | payload[3]
    hlen, plen = payload[4], payload[5]
    if hlen != 6 or plen != 4 or ptype != 0x0800:
        raise MalformedPayload(
            f"ARP: unsupported addresses (protocol 0x{ptype:04x}, sizes {hlen}/{plen})"
        )
    return ArpInfo(
        op=(payload[6] << 8) | payload[7],
        sender_mac=mac_str(payload[8:14]),
        sender_ip=ipv4_str(payload[14:18]),
        target_mac=mac_str(payload[18:24]),
        target_ip=ipv4_str(payload[24:28]),
    )
