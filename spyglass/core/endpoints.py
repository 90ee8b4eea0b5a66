"""What is known about the remote names smart speakers talk to.

The lists come from ../shared/DESIGN.md (names seen in published captures and in open-source
clients of the assistants' APIs). A name's role sharpens detection: a sustained upstream stream to
a voice endpoint is almost surely speech; one to a metrics endpoint is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    VOICE = "voice"  # receives the user's audio
    NOT_AUDIO = "not-audio"  # known to carry something else (metrics, captive portal, ...)
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class EndpointRule:
    pattern: re.Pattern[str]
    role: Role
    assistant: str | None


def _rule(glob: str, role: Role, assistant: str | None) -> EndpointRule:
    # "*" stands for one or more DNS-name characters (never a dot-free wildcard across labels).
    rx = "^" + re.escape(glob).replace(r"\*", r"[a-z0-9.-]+") + "$"
    return EndpointRule(re.compile(rx), role, assistant)


RULES: tuple[EndpointRule, ...] = (
    # Alexa
    _rule("bob-dispatch-prod-*.amazon.com", Role.VOICE, "alexa"),
    _rule("avs-alexa-*.amazon.com", Role.VOICE, "alexa"),
    _rule("unagi-*.amazon.com", Role.VOICE, "alexa"),
    _rule("alexa.*.gateway.devices.a2z.com", Role.VOICE, "alexa"),
    _rule("device-metrics-*.amazon.com", Role.NOT_AUDIO, "alexa"),
    _rule("dcape-*.amazon.com", Role.NOT_AUDIO, "alexa"),
    _rule("latinum*.amazon.com", Role.NOT_AUDIO, "alexa"),
    _rule("msh*.amazon.com", Role.NOT_AUDIO, "alexa"),
    _rule("*fireoscaptiveportal.com", Role.NOT_AUDIO, "alexa"),
    _rule("fireoscaptiveportal.com", Role.NOT_AUDIO, "alexa"),
    # Google Assistant (speech goes to www.google.com over QUIC, or the gRPC API)
    _rule("embeddedassistant.googleapis.com", Role.VOICE, "google"),
    _rule("www.google.com", Role.VOICE, "google"),
    # Apple software update ("mesu" = mobile software update): firmware checks, never speech
    _rule("mesu.apple.com", Role.NOT_AUDIO, None),
    _rule("mesu-cdn.*.akadns.net", Role.NOT_AUDIO, None),
    # Siri
    _rule("guzzoni.apple.com", Role.VOICE, "siri"),
    _rule("*.guzzoni-apple.com.akadns.net", Role.VOICE, "siri"),
    _rule("guzzoni-apple.com.akadns.net", Role.VOICE, "siri"),
)


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    role: Role
    assistant: str | None


UNKNOWN = EndpointInfo(Role.UNKNOWN, None)


def classify(name: str | None) -> EndpointInfo:
    """Role and assistant of a remote DNS name (case-insensitive, trailing dot ignored)."""
    if not name:
        return UNKNOWN
    n = name.lower().rstrip(".")
    for rule in RULES:
        if rule.pattern.match(n):
            return EndpointInfo(rule.role, rule.assistant)
    return UNKNOWN


VENDOR_ASSISTANT: tuple[tuple[str, str], ...] = (
    # OUI vendor substrings → the assistant such a speaker most likely runs.
    ("amazon", "alexa"),
    ("google", "google"),
    ("apple", "siri"),
)


def assistant_for_vendor(vendor: str | None) -> str | None:
    if not vendor:
        return None
    v = vendor.lower()
    for key, assistant in VENDOR_ASSISTANT:
        if key in v:
            return assistant
    return None
