from __future__ import annotations

from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRRSRV
from scapy.packet import raw

from spyglass.core.proto.dns import parse_dns
from spyglass.core.proto.mdns import mdns_info, split_service
from tests.core.proto.packets import frame, udp_payloads

CAST = "Google-Nest-Mini-0123456789abcdef0123456789abcdef._googlecast._tcp.local"


def googlecast_announcement() -> bytes:
    return raw(
        DNS(
            id=0,
            qr=1,
            aa=1,
            an=[
                DNSRR(rrname="_googlecast._tcp.local", type="PTR", ttl=120, rdata=CAST),
                DNSRR(
                    rrname="_services._dns-sd._udp.local",
                    type="PTR",
                    rdata="_googlecast._tcp.local",
                ),
            ],
            ar=[
                DNSRR(
                    rrname=CAST,
                    type="TXT",
                    rclass=0x8001,  # cache-flush bit set
                    rdata=[b"id=0123", b"md=Google Nest Mini", b"fn=Kitchen speaker", b"ca=199172"],
                ),
                DNSRRSRV(rrname=CAST, rclass=0x8001, port=8009, target="0123-4567.local"),
                DNSRR(rrname="0123-4567.local", type="A", rclass=0x8001, rdata="192.168.1.23"),
            ],
        ).compress()
    )


def test_googlecast_announcement() -> None:
    info = mdns_info(parse_dns(googlecast_announcement()))
    assert info.services == ["_googlecast._tcp"]
    assert info.instance_names == ["Google-Nest-Mini-0123456789abcdef0123456789abcdef"]
    assert info.txt["md"] == "Google Nest Mini"
    assert info.txt["fn"] == "Kitchen speaker"
    assert info.hostnames == ["0123-4567.local"]
    assert info.addresses == ["192.168.1.23"]


def test_sonos_airplay_and_amazon_services() -> None:
    an = [
        DNSRR(rrname="_sonos._tcp.local", type="PTR", rdata="Sonos-48A6B8C1C006._sonos._tcp.local"),
        DNSRR(rrname="_raop._tcp.local", type="PTR", rdata="48A6B8C1C006@Kitchen._raop._tcp.local"),
        DNSRR(rrname="_amzn-wplay._tcp.local", type="PTR", rdata="Echo-Dot._amzn-wplay._tcp.local"),
        DNSRR(
            rrname="48A6B8C1C006@Kitchen._raop._tcp.local",
            type="TXT",
            rdata=[b"am=Sonos One", b"Model=ignored-second"],
        ),
    ]
    info = mdns_info(parse_dns(raw(DNS(qr=1, aa=1, an=an))))
    assert info.services == ["_sonos._tcp", "_raop._tcp", "_amzn-wplay._tcp"]
    assert "48A6B8C1C006@Kitchen" in info.instance_names
    assert info.txt == {"am": "Sonos One", "model": "ignored-second"}


def test_query_known_answers_are_not_about_the_sender() -> None:
    q = DNS(
        qr=0,
        qd=[DNSQR(qname="_googlecast._tcp.local", qtype="PTR")],
        an=[DNSRR(rrname="_googlecast._tcp.local", type="PTR", rdata=CAST)],
    )
    info = mdns_info(parse_dns(raw(q)))
    assert info.services == [] and info.instance_names == []


def test_split_service() -> None:
    assert split_service("Living Room._airplay._tcp.local") == ("Living Room", "_airplay._tcp")
    assert split_service("My.Dotted.Name._ipp._tcp.local") == ("My.Dotted.Name", "_ipp._tcp")
    assert split_service("_airplay._tcp.local") == (None, "_airplay._tcp")
    assert split_service("_printer._sub._http._tcp.local") == (None, "_http._tcp")
    assert split_service("Living-Room.local") == (None, None)
    assert split_service("foo.bar._tcp.local") == (None, None)


def test_real_homepod_announcements(captures: Path) -> None:
    path = captures / "homepod_FNT_S3E10.pcap"
    # tshark frame 1697: Living Room._airplay._tcp.local TXT ... model=AudioAccessory1,1
    info = mdns_info(parse_dns(frame(path, 1697).payload))
    assert info.instance_names == ["Living Room"]
    assert info.services == ["_airplay._tcp"]
    assert info.txt["model"] == "AudioAccessory1,1"
    assert info.txt["features"] == "0x4A7FCA00,0x3C354BD0"
    # frame 1365: Living-Room.local A 192.168.12.118 (and a link-local AAAA)
    info = mdns_info(parse_dns(frame(path, 1365).payload))
    assert info.hostnames == ["Living-Room.local"]
    assert "192.168.12.118" in info.addresses
    assert "fe80::144b:725e:fd75:97d9" in info.addresses


def test_every_real_mdns_message_parses(captures: Path) -> None:
    frames = udp_payloads(captures / "homepod_FNT_S3E10.pcap", 5353)
    assert len(frames) == 77  # tshark: 44 over IPv4 + 33 over IPv6
    models = set()
    for fr in frames:
        info = mdns_info(parse_dns(fr.payload))
        models.add(info.txt.get("model"))
        models.add(info.txt.get("rpmd"))
    assert {"AudioAccessory1,1", "B238aAP"} <= models
