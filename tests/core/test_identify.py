from __future__ import annotations

import re
from pathlib import Path

from spyglass.core.identify import RULES, DeviceIdentifier, Identity
from spyglass.core.proto.dhcp import DhcpInfo
from spyglass.core.proto.dns import parse_dns
from spyglass.core.proto.mdns import MdnsInfo, mdns_info
from spyglass.core.proto.ssdp import parse_ssdp
from spyglass.core.proto.tls import client_hello_sni
from tests.core.proto.packets import tcp_payloads, udp_payloads
from tests.core.proto.test_mdns import googlecast_announcement
from tests.core.proto.test_ssdp import SONOS_NOTIFY

AMAZON, GOOGLE, APPLE, SONOS = (
    "Amazon Technologies Inc.",
    "Google, Inc.",
    "Apple, Inc.",
    "Sonos, Inc.",
)


def dhcp(hostname: str | None = None, vendor_class: str | None = None) -> DhcpInfo:
    return DhcpInfo(3, "00:00:00:00:00:01", hostname, vendor_class, None, None, None)


def sources(ident: Identity) -> set[str]:
    return {e.source for e in ident.evidence}


def test_nothing_known() -> None:
    got = DeviceIdentifier().identity()
    assert (got.kind, got.model, got.assistant, got.confidence, got.evidence) == (
        None,
        None,
        None,
        0.0,
        [],
    )


def test_echo_from_oui_and_voice_endpoint() -> None:
    d = DeviceIdentifier()
    d.add_vendor(AMAZON)
    d.add_domain("bob-dispatch-prod-na.amazon.com", "dns")
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Amazon Echo", "alexa")
    assert sources(got) == {"oui", "dns"}
    assert any("bob-dispatch" in e.detail for e in got.evidence)


def test_confidence_grows_with_agreeing_evidence() -> None:
    d = DeviceIdentifier()
    d.add_vendor(AMAZON)
    first = d.identity().confidence
    d.add_dhcp(dhcp("amazon-4c1f7a2b"))
    second = d.identity().confidence
    d.add_domain("fireoscaptiveportal.com", "dns")
    third = d.identity().confidence
    assert 0 < first < second < third < 1
    # Repeats of the same observation add nothing.
    for _ in range(5):
        d.add_domain("fireoscaptiveportal.com", "dns")
        d.add_vendor(AMAZON)
    assert d.identity().confidence == third


def test_apple_phone_using_siri_is_not_a_homepod() -> None:
    d = DeviceIdentifier()
    d.add_vendor(APPLE)
    d.add_domain("guzzoni.apple.com", "sni")
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == (None, None, "siri")
    d.add_dhcp(dhcp("Johns-iPhone"))
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("phone", "Apple iPhone", "siri")


def test_homepod_from_mdns_model() -> None:
    d = DeviceIdentifier()
    d.add_vendor(APPLE)
    d.add_domain("guzzoni.apple.com", "sni")
    d.add_mdns(
        MdnsInfo(
            ["Living-Room.local"],
            ["Living Room"],
            ["_airplay._tcp"],
            {"model": "AudioAccessory1,1"},
            [],
        )
    )
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Apple HomePod", "siri")
    assert sources(got) == {"mdns", "sni"}
    assert got.confidence > 0.8
    assert d.names() == ["Living Room"]  # "Living-Room" is the same name


def test_homepod_mini_detail() -> None:
    d = DeviceIdentifier()
    d.add_mdns(MdnsInfo([], [], [], {"model": "AudioAccessory5,1"}, []))
    assert d.identity().model == "Apple HomePod mini"


def test_nest_mini_from_googlecast() -> None:
    d = DeviceIdentifier()
    d.add_vendor(GOOGLE)
    d.add_mdns(mdns_info(parse_dns(googlecast_announcement())))
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Google Nest Mini", "google")
    assert d.names() == ["Kitchen speaker", "0123-4567"]  # the hex-serial instance is dropped


def test_google_home_mini_by_dhcp_and_assistant_domain() -> None:
    d = DeviceIdentifier()
    d.add_dhcp(dhcp("Google-Home-Mini", "dhcpcd-6.8.2:Linux-3.8.13+:armv7l"))
    d.add_domain("embeddedassistant.googleapis.com", "dns")
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Google Nest", "google")
    assert d.names() == ["Google-Home-Mini"]


def test_sonos_with_alexa_stays_a_sonos() -> None:
    d = DeviceIdentifier()
    d.add_vendor(SONOS)
    d.add_ssdp(parse_ssdp(SONOS_NOTIFY))
    d.add_domain("avs-alexa-12-na.amazon.com", "sni")
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Sonos One", "alexa")
    assert sources(got) == {"oui", "ssdp", "sni"}


def test_sonos_without_model_number() -> None:
    d = DeviceIdentifier()
    d.add_ssdp(parse_ssdp(SONOS_NOTIFY.replace(b" (ZPS12)", b"")))
    assert d.identity().model == "Sonos"


def test_conflicting_evidence_lowers_confidence() -> None:
    agree = DeviceIdentifier()
    agree.add_vendor(AMAZON)
    agree.add_dhcp(dhcp("amazon-1234abcd"))
    clash = DeviceIdentifier()
    clash.add_vendor(AMAZON)
    clash.add_dhcp(dhcp("amazon-1234abcd", "android-dhcp-7.1.2"))  # Fire OS looks like Android
    clash.add_mdns(MdnsInfo([], [], [], {"md": "Google Nest Mini"}, []))
    a, c = agree.identity(), clash.identity()
    assert a.kind == "speaker" and c.kind == "speaker"
    assert c.confidence < a.confidence


def test_domain_case_and_trailing_dot_are_ignored() -> None:
    d = DeviceIdentifier()
    d.add_domain("EmbeddedAssistant.GoogleAPIs.com.", "dns")
    assert d.identity().assistant == "google"


def test_rules_table_is_sane() -> None:
    fields = {r.field for r in RULES}
    assert fields <= {
        "oui",
        "dhcp.hostname",
        "dhcp.vendor_class",
        "mdns.model",
        "mdns.service",
        "mdns.name",
        "ssdp.server",
        "ssdp.type",
        "ssdp.header",
        "domain",
    }
    for rule in RULES:
        re.compile(rule.pattern)
        assert 0 < rule.weight <= 1
        assert rule.kind or rule.model or rule.assistant, rule
        assert rule.assistant in (None, "alexa", "google", "siri")


# --- real captures -------------------------------------------------------------------------------


def _feed_capture(path: Path, mac: str, ip: str, vendor: str) -> DeviceIdentifier:
    """As the pipeline will: all the device sent, or was answered, into one identifier."""
    d = DeviceIdentifier()
    d.add_vendor(vendor)
    for fr in udp_payloads(path, 5353):
        if fr.src_mac == mac:
            d.add_mdns(mdns_info(parse_dns(fr.payload)))
    for fr in udp_payloads(path, 53):
        if fr.dst == ip:
            for q, _ in parse_dns(fr.payload).questions:
                d.add_domain(q, "dns")
    for fr in tcp_payloads(path):
        if fr.src == ip:
            sni = client_hello_sni(fr.payload)
            if sni:
                d.add_domain(sni, "sni")
    return d


def test_real_homepod(captures: Path) -> None:
    d = _feed_capture(
        captures / "homepod_FNT_S3E10.pcap", "d4:a3:3d:6b:1e:97", "192.168.12.118", APPLE
    )
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Apple HomePod", "siri")
    assert d.names()[0] == "Living Room"


def test_real_echo(captures: Path) -> None:
    d = _feed_capture(captures / "sean_kennedy__alexa_5_40s.pcap", "", "192.168.86.40", AMAZON)
    got = d.identity()
    assert (got.kind, got.model, got.assistant) == ("speaker", "Amazon Echo", "alexa")
    assert any("unagi-na.amazon.com" in e.detail for e in got.evidence)
