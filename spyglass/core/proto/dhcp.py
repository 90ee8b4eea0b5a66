"""DHCP (RFC 2131/2132) messages: the options that say what a device is.

A BOOTP message without the DHCP magic cookie parses with no options (``msg_type`` None). Option
overload (52) is honoured: options carried in the ``file``/``sname`` fields are read too.
Text options are decoded as UTF-8 (U+FFFD for bad bytes), trailing NULs dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from spyglass.core.proto import MalformedPayload, ipv4_str, mac_str

_FIXED = 236  # op .. file
_COOKIE = b"\x63\x82\x53\x63"
_PAD, _END = 0, 255
OPT_HOSTNAME, OPT_REQUESTED_IP, OPT_OVERLOAD, OPT_MSG_TYPE = 12, 50, 52, 53
OPT_PARAM_LIST, OPT_VENDOR_CLASS = 55, 60


@dataclass(slots=True)
class DhcpInfo:
    msg_type: int | None  # option 53: 1 DISCOVER, 2 OFFER, 3 REQUEST, 5 ACK, ...
    client_mac: str  # chaddr, lower-case hex with colons
    hostname: str | None  # option 12
    vendor_class: str | None  # option 60, e.g. "android-dhcp-9", "dhcpcd-6.8.2:Linux-..."
    requested_ip: str | None  # option 50
    your_ip: str | None  # yiaddr, when not 0.0.0.0
    param_list: bytes | None  # option 55: the parameter request list, an OS fingerprint


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    return b.rstrip(b"\x00").decode("utf-8", "replace") or None


def _options(b: bytes, p: int, end: int, where: str, out: dict[int, bytes]) -> None:
    """Collect options from ``b[p:end]`` into ``out`` (first occurrence wins)."""
    while p < end:
        code = b[p]
        if code == _END:
            return
        if code == _PAD:
            p += 1
            continue
        if p + 1 >= end:
            raise MalformedPayload(f"DHCP: option {code} length cut at byte {p} ({where})")
        ln = b[p + 1]
        if p + 2 + ln > end:
            raise MalformedPayload(f"DHCP: option {code} runs past end at byte {p} ({where})")
        out.setdefault(code, b[p + 2 : p + 2 + ln])
        p += 2 + ln


def parse_dhcp(payload: bytes) -> DhcpInfo:
    """Parse a DHCP/BOOTP message (the UDP payload); raises :class:`MalformedPayload`."""
    n = len(payload)
    if n < _FIXED:
        raise MalformedPayload(f"DHCP: {n} bytes, shorter than the {_FIXED}-byte BOOTP header")
    op = payload[0]
    if op not in (1, 2):
        raise MalformedPayload(f"DHCP: op {op} is neither request (1) nor reply (2)")
    hlen = min(payload[2], 16)
    client_mac = mac_str(payload[28 : 28 + hlen])
    yiaddr = payload[16:20]
    opts: dict[int, bytes] = {}
    if n >= 240 and payload[236:240] == _COOKIE:
        _options(payload, 240, n, "options", opts)
        overload = opts.get(OPT_OVERLOAD, b"\x00")[:1]
        if overload in (b"\x01", b"\x03"):
            _options(payload, 108, 236, "file field", opts)
        if overload in (b"\x02", b"\x03"):
            _options(payload, 44, 108, "sname field", opts)
    mt = opts.get(OPT_MSG_TYPE)
    req = opts.get(OPT_REQUESTED_IP)
    return DhcpInfo(
        msg_type=mt[0] if mt else None,
        client_mac=client_mac,
        hostname=_text(opts.get(OPT_HOSTNAME)),
        vendor_class=_text(opts.get(OPT_VENDOR_CLASS)),
        requested_ip=ipv4_str(req) if req is not None and len(req) == 4 else None,
        your_ip=ipv4_str(yiaddr) if yiaddr != b"\x00\x00\x00\x00" else None,
        param_list=opts.get(OPT_PARAM_LIST),
    )
