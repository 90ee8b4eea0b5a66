from __future__ import annotations

import pytest

from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.ssdp import parse_ssdp

SONOS_NOTIFY = (
    b"NOTIFY * HTTP/1.1\r\n"
    b"HOST: 239.255.255.250:1900\r\n"
    b"CACHE-CONTROL: max-age = 1800\r\n"
    b"LOCATION: http://192.168.1.30:1400/xml/device_description.xml\r\n"
    b"NT: urn:schemas-upnp-org:device:ZonePlayer:1\r\n"
    b"NTS: ssdp:alive\r\n"
    b"SERVER: Linux UPnP/1.0 Sonos/70.3-35220 (ZPS12)\r\n"
    b"USN: uuid:RINCON_48A6B8C1C00601400::urn:schemas-upnp-org:device:ZonePlayer:1\r\n"
    b"X-RINCON-HOUSEHOLD: Sonos_abc\r\n"
    b"X-RINCON-BOOTSEQ: 12\r\n"
    b"\r\n"
)


def test_sonos_notify() -> None:
    info = parse_ssdp(SONOS_NOTIFY)
    assert info.method == "NOTIFY"
    assert info.server == "Linux UPnP/1.0 Sonos/70.3-35220 (ZPS12)"
    assert info.location == "http://192.168.1.30:1400/xml/device_description.xml"
    assert info.st == "urn:schemas-upnp-org:device:ZonePlayer:1"  # NT stands in for ST
    assert info.usn is not None and info.usn.startswith("uuid:RINCON_")
    assert info.headers["x-rincon-household"] == "Sonos_abc"
    assert info.headers["cache-control"] == "max-age = 1800"


def test_search_and_response() -> None:
    search = parse_ssdp(
        b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
        b'MAN: "ssdp:discover"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n'
    )
    assert (search.method, search.st, search.server) == ("M-SEARCH", "ssdp:all", None)
    resp = parse_ssdp(
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=1800\r\nEXT:\r\n"
        b"Location: http://192.168.1.50:8008/ssdp/device-desc.xml\r\n"
        b"Server: Linux/3.8.13+, UPnP/1.0, Portable SDK for UPnP devices/1.6.18\r\n"
        b"ST: urn:dial-multiscreen-org:service:dial:1\r\nUSN: uuid:1234\r\n\r\n"
    )
    assert resp.method == "RESPONSE"
    assert resp.st == "urn:dial-multiscreen-org:service:dial:1"
    assert resp.headers["ext"] == ""
    assert resp.location == "http://192.168.1.50:8008/ssdp/device-desc.xml"


def test_bare_newlines_junk_lines_and_body_are_tolerated() -> None:
    info = parse_ssdp(b"NOTIFY * HTTP/1.1\nServer: x\nnot a header\n\nServer: body-not-header\n")
    assert info.server == "x" and list(info.headers) == ["server"]


@pytest.mark.parametrize("payload", [b"", b"\x00\x01\x02", b"hello world", b"GET /\r\n\r\n"])
def test_not_http_raises(payload: bytes) -> None:
    with pytest.raises(MalformedPayload, match="SSDP: start line"):
        parse_ssdp(payload)
