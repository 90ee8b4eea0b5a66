"""The server name (SNI) of a TLS ClientHello at the start of a TCP segment's payload.

Two kinds of "too short" are told apart: a length that overruns the structure that holds it is
broken (:class:`MalformedPayload`); a length that only overruns the bytes we have means the
ClientHello continues in the next segment (or record), so we return what we found: ``None``
unless the SNI extension was complete. Names are lower-cased, without a trailing dot.
"""

from __future__ import annotations

from spyglass.core.proto import MalformedPayload

_HANDSHAKE = 0x16
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_MAX_RECORD = 16384 + 2048  # plaintext limit plus the allowed expansion (RFC 8446 §5.2)


class _Cut(Exception):
    """The bytes end before the structure does: not an error, the rest is in the next segment."""


def _need(p: int, k: int, declared_end: int, have: int, what: str) -> None:
    if p + k > declared_end:
        raise MalformedPayload(f"TLS: {what} at byte {p} runs past its enclosing length")
    if p + k > have:
        raise _Cut


def _u16(b: bytes, p: int) -> int:
    return (b[p] << 8) | b[p + 1]


def client_hello_sni(payload: bytes) -> str | None:
    """The server_name a ClientHello asks for, or ``None`` (not a ClientHello, no SNI, or cut
    before the SNI). Raises :class:`MalformedPayload` for a ClientHello whose lengths disagree."""
    n = len(payload)
    if n < 6 or payload[0] != _HANDSHAKE or payload[1] != 3 or payload[2] > 4:
        return None
    if payload[5] != _CLIENT_HELLO:
        return None
    reclen = _u16(payload, 3)
    if reclen < 4 or reclen > _MAX_RECORD:
        raise MalformedPayload(f"TLS: record length {reclen} out of range")
    try:
        return _sni(payload, 5 + reclen, min(n, 5 + reclen))
    except _Cut:
        return None


def _sni(b: bytes, rec_end: int, have: int) -> str | None:
    _need(5, 4, rec_end, have, "handshake header")
    hs_len = (b[6] << 16) | (b[7] << 8) | b[8]
    if hs_len < 38:
        raise MalformedPayload(f"TLS: ClientHello body of {hs_len} bytes is too short")
    # A ClientHello longer than its record continues in the next record: read what this one has.
    end = 9 + hs_len
    p = 9 + 2 + 32  # client_version, random
    _need(p, 1, end, have, "session id length")
    sid = b[p]
    if sid > 32:
        raise MalformedPayload(f"TLS: session id of {sid} bytes (max 32)")
    p += 1 + sid
    _need(p, 2, end, have, "cipher suites length")
    cs = _u16(b, p)
    if cs < 2 or cs % 2:
        raise MalformedPayload(f"TLS: cipher suites length {cs} at byte {p}")
    p += 2 + cs
    _need(p, 1, end, have, "compression methods length")
    p += 1 + b[p]
    if p == end:
        return None  # no extensions at all
    _need(p, 2, end, have, "extensions length")
    ext_end = p + 2 + _u16(b, p)
    if ext_end > end:
        raise MalformedPayload(f"TLS: extensions block at byte {p} runs past the ClientHello")
    p += 2
    while p + 4 <= ext_end:
        _need(p, 4, ext_end, have, "extension header")
        etype = _u16(b, p)
        elen = _u16(b, p + 2)
        p += 4
        if etype == _EXT_SERVER_NAME:
            _need(p, elen, ext_end, have, "server_name extension")
            return _server_name(b, p, p + elen)
        _need(p, elen, ext_end, ext_end, "extension")  # broken only if past the block
        p += elen
    return None


def _server_name(b: bytes, p: int, end: int) -> str | None:
    if end - p < 2:
        raise MalformedPayload(f"TLS: server_name extension of {end - p} bytes")
    list_end = p + 2 + _u16(b, p)
    if list_end > end:
        raise MalformedPayload(f"TLS: server_name list at byte {p} runs past its extension")
    p += 2
    while p + 3 <= list_end:
        kind = b[p]
        ln = _u16(b, p + 1)
        p += 3
        if p + ln > list_end:
            raise MalformedPayload(f"TLS: server name at byte {p} runs past its list")
        if kind == 0 and ln:
            return b[p : p + ln].decode("ascii", "replace").lower().rstrip(".") or None
        p += ln
    return None
