"""Slow-path payload parsers: DNS/mDNS, TLS ClientHello SNI, DHCP, SSDP, ARP.

Each parser is a pure function over the transport payload (``bytes``). A payload that claims to be
the protocol but is broken raises :class:`MalformedPayload`; no other exception escapes. They use
``struct`` and slicing only: scapy costs ~150 µs a packet, these cost a few µs.
"""

from __future__ import annotations

import ipaddress


class MalformedPayload(ValueError):
    """The payload is not a well-formed message of the protocol; the message says what and where."""


def ipv4_str(b: bytes) -> str:
    """Dotted quad of 4 bytes."""
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def ipv6_str(b: bytes) -> str:
    """Compressed form of 16 bytes, as :mod:`ipaddress` writes it (so it matches IPs formatted
    elsewhere in the engine)."""
    return ipaddress.IPv6Address(b).compressed


def mac_str(b: bytes) -> str:
    """Lower-case, colon-separated MAC (or any hardware address)."""
    return b.hex(":")


__all__ = ["MalformedPayload", "ipv4_str", "ipv6_str", "mac_str"]
