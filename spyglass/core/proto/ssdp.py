"""SSDP (UPnP discovery over UDP 1900): NOTIFY, M-SEARCH and the HTTP/1.x replies to a search.

``method`` is the request method as sent, upper-cased ("NOTIFY", "M-SEARCH"), or "RESPONSE" for
a status line ("HTTP/1.1 200 OK"). Header names are lower-cased in ``headers``; the first
occurrence of a header wins. ``st`` is the ST header or, in a NOTIFY (which has none), its NT.
"""

from __future__ import annotations

from dataclasses import dataclass

from spyglass.core.proto import MalformedPayload

_MAX_HEADERS = 64


@dataclass(slots=True)
class SsdpInfo:
    method: str
    server: str | None
    location: str | None
    st: str | None
    usn: str | None
    headers: dict[str, str]


def parse_ssdp(payload: bytes) -> SsdpInfo:
    """Parse an SSDP datagram; raises :class:`MalformedPayload` when it is not HTTP-over-UDP."""
    text = payload.decode("utf-8", "replace")
    lines = text.split("\n")
    start = lines[0].strip()
    parts = start.split(" ")
    if len(parts) >= 2 and parts[0].startswith("HTTP/1.") and parts[1].isdigit():
        method = "RESPONSE"
    elif len(parts) == 3 and parts[2].startswith("HTTP/1.") and parts[0].isascii():
        method = parts[0].upper()
    else:
        raise MalformedPayload(f"SSDP: start line {start[:40]!r} is not HTTP")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            break  # end of headers
        name, sep, value = line.partition(":")
        if not sep:
            continue  # not a header line: ignore rather than lose the rest
        key = name.strip().lower()
        if key and key not in headers:
            headers[key] = value.strip()
            if len(headers) >= _MAX_HEADERS:
                break
    return SsdpInfo(
        method=method,
        server=headers.get("server"),
        location=headers.get("location"),
        st=headers.get("st") or headers.get("nt"),
        usn=headers.get("usn"),
        headers=headers,
    )
