"""Naming a device from what it says about itself and what it talks to.

Every observation is a ``(field, text)`` pair (the OUI vendor, a DHCP hostname, an mDNS model
key, an SSDP SERVER string, a domain it resolved...). :data:`RULES` is a table: a rule matches one
field with a regex and votes, with a weight, for any of kind / model family / assistant. Each of
the three is decided on its own: the votes for each value combine as independent evidence
(noisy-OR, a rule counts once however often it matches), the best value wins, and a competing
value lowers the confidence. So an Apple phone that resolves guzzoni.apple.com is "siri" with no
kind or model, while mDNS ``model=AudioAccessory1,1`` makes it an Apple HomePod speaker; a Sonos
that talks to Alexa endpoints stays a Sonos with the alexa assistant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from spyglass.core.proto.dhcp import DhcpInfo
from spyglass.core.proto.mdns import MdnsInfo
from spyglass.core.proto.ssdp import SsdpInfo

# Fields an observation can be about, and the Evidence.source each reports as.
F_OUI = "oui"
F_DHCP_HOST = "dhcp.hostname"
F_DHCP_VENDOR = "dhcp.vendor_class"
F_MDNS_MODEL = "mdns.model"  # TXT model / md / rpMd / am values
F_MDNS_SERVICE = "mdns.service"
F_MDNS_NAME = "mdns.name"  # instance names and host names
F_SSDP_SERVER = "ssdp.server"
F_SSDP_TYPE = "ssdp.type"  # ST / NT / USN
F_SSDP_HEADER = "ssdp.header"  # header names (vendors add their own, e.g. X-RINCON-*)
F_DOMAIN = "domain"  # reported as the caller's source: "dns" or "sni"

_MODEL_KEYS = ("model", "md", "rpmd", "am", "ty")
_MAX_SEEN = 4096  # distinct observations remembered per device (dedupe only)


@dataclass(slots=True)
class Evidence:
    source: str  # "oui" | "dhcp" | "mdns" | "ssdp" | "dns" | "sni" | "traffic"
    detail: str


@dataclass(slots=True)
class Identity:
    kind: str | None
    model: str | None
    assistant: str | None
    confidence: float
    evidence: list[Evidence] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rule:
    field: str
    pattern: str  # regex, case-insensitive, searched in the observed text
    kind: str | None = None
    model: str | None = None  # family the rule votes for ("Amazon Echo", "Sonos", ...)
    assistant: str | None = None
    weight: float = 0.5  # 0..1: how sure this rule alone makes us
    # A more precise model name than the family: "{0}" is the first group of the match, and a
    # mapping looks the first group up (no entry: the family stands).
    detail: str | Mapping[str, str] | None = None


_SPK = "speaker"
_SIRI_DOMAIN = r"(^|\.)guzzoni(\.apple\.com|-apple\.com\.akadns\.net)$"
_ECHO, _NEST, _HOMEPOD, _SONOS = "Amazon Echo", "Google Nest", "Apple HomePod", "Sonos"
_SONOS_MODELS = {"ZPS1": "Sonos Play:1", "ZPS12": "Sonos One"}

RULES: tuple[Rule, ...] = (
    # OUI vendors: who made the network card, a first hint.
    Rule(F_OUI, r"^Amazon Technologies", _SPK, _ECHO, "alexa", 0.5),
    Rule(F_OUI, r"^Google", _SPK, _NEST, "google", 0.4),
    Rule(F_OUI, r"^Sonos", _SPK, _SONOS, None, 0.8),
    # Apple makes phones, laptops and HomePods: the OUI alone decides nothing.
    # DHCP hostnames.
    Rule(F_DHCP_HOST, r"^amazon-[0-9a-f]+$", _SPK, _ECHO, "alexa", 0.6),
    Rule(F_DHCP_HOST, r"^echo[-_ ]?(dot|show|spot|studio|plus)?\b", _SPK, _ECHO, "alexa", 0.6),
    Rule(F_DHCP_HOST, r"^google-(home|nest)", _SPK, _NEST, "google", 0.8),
    Rule(F_DHCP_HOST, r"^chromecast", "tv", "Google Chromecast", "google", 0.7),
    Rule(F_DHCP_HOST, r"homepod", _SPK, _HOMEPOD, "siri", 0.8),
    Rule(F_DHCP_HOST, r"^sonos", _SPK, _SONOS, None, 0.8),
    Rule(F_DHCP_HOST, r"iphone", "phone", "Apple iPhone", "siri", 0.8),
    Rule(F_DHCP_HOST, r"ipad", "tablet", "Apple iPad", "siri", 0.8),
    Rule(F_DHCP_HOST, r"macbook|imac|mac-?mini", "computer", "Apple Mac", None, 0.7),
    Rule(F_DHCP_HOST, r"^android-|galaxy|pixel", "phone", None, None, 0.6),
    # DHCP vendor class: the DHCP client, i.e. the OS family. Echo's Fire OS is Android-based,
    # so "android-dhcp" is only a weak hint of a phone.
    Rule(F_DHCP_VENDOR, r"^android-dhcp", "phone", None, None, 0.25),
    Rule(F_DHCP_VENDOR, r"^MSFT", "computer", None, None, 0.6),
    # mDNS TXT model keys: what the device says it is, the strongest evidence there is.
    Rule(F_MDNS_MODEL, r"^AudioAccessory5,", _SPK, _HOMEPOD, "siri", 0.95, "Apple HomePod mini"),
    Rule(F_MDNS_MODEL, r"^(AudioAccessory|B238)", _SPK, _HOMEPOD, "siri", 0.9),
    Rule(F_MDNS_MODEL, r"^((Google )?(Nest|Home)\b.*)$", _SPK, _NEST, "google", 0.9, "{0}"),
    Rule(F_MDNS_MODEL, r"^Chromecast", "tv", "Google Chromecast", "google", 0.9),
    Rule(F_MDNS_MODEL, r"^(Sonos .+)$", _SPK, _SONOS, None, 0.9, "{0}"),
    Rule(F_MDNS_MODEL, r"^(Echo .+)$", _SPK, _ECHO, "alexa", 0.9, "Amazon {0}"),
    Rule(F_MDNS_MODEL, r"^iPhone", "phone", "Apple iPhone", "siri", 0.9),
    Rule(F_MDNS_MODEL, r"^iPad", "tablet", "Apple iPad", "siri", 0.9),
    Rule(F_MDNS_MODEL, r"^(MacBook|iMac|Macmini|MacPro|Mac\d)", "computer", "Apple Mac", None, 0.9),
    Rule(F_MDNS_MODEL, r"^AppleTV", "tv", "Apple TV", "siri", 0.9),
    # mDNS service types: what it offers. AirPlay is offered by Sonos and Macs too: no model.
    Rule(F_MDNS_SERVICE, r"^_sonos\._tcp$", _SPK, _SONOS, None, 0.8),
    Rule(F_MDNS_SERVICE, r"^_googlecast\._tcp$", None, _NEST, "google", 0.4),
    Rule(F_MDNS_SERVICE, r"^_amzn-wplay\._tcp$", None, _ECHO, "alexa", 0.5),
    Rule(F_MDNS_SERVICE, r"^_(raop|spotify-connect)\._tcp$", _SPK, None, None, 0.2),
    # SSDP.
    Rule(F_SSDP_SERVER, r"\bSonos/\S+ \((ZPS\d+)\)", _SPK, _SONOS, None, 0.9, _SONOS_MODELS),
    Rule(F_SSDP_SERVER, r"\bSonos/", _SPK, _SONOS, None, 0.8),
    Rule(F_SSDP_TYPE, r"ZonePlayer", _SPK, _SONOS, None, 0.8),
    Rule(F_SSDP_HEADER, r"^x-rincon-", _SPK, _SONOS, None, 0.7),
    # Domains contacted (DNS answers, TLS SNI): the voice services say which assistant.
    Rule(F_DOMAIN, r"(^|\.)avs-alexa[\w.-]*\.amazon\.com$", None, None, "alexa", 0.8),
    Rule(F_DOMAIN, r"(^|\.)bob-dispatch-prod-\w+\.amazon\.com$", None, None, "alexa", 0.8),
    Rule(F_DOMAIN, r"(^|\.)unagi(-\w+)?\.amazon\.com$", None, None, "alexa", 0.6),
    Rule(F_DOMAIN, r"(^|\.)alexa\.\w+\.gateway\.devices\.a2z\.com$", None, None, "alexa", 0.8),
    Rule(F_DOMAIN, r"(^|\.)api\.amazonalexa\.com$", None, None, "alexa", 0.5),
    # Fire OS devices (Echo, Fire TV) check for captive portals here.
    Rule(F_DOMAIN, r"(^|\.)fireoscaptiveportal\.com$", None, _ECHO, None, 0.3),
    Rule(F_DOMAIN, _SIRI_DOMAIN, None, None, "siri", 0.7),
    Rule(F_DOMAIN, r"(^|\.)embeddedassistant\.googleapis\.com$", None, None, "google", 0.8),
    Rule(F_DOMAIN, r"(^|\.)sonos\.com$", _SPK, _SONOS, None, 0.6),
)

_COMPILED = tuple((rule, re.compile(rule.pattern, re.IGNORECASE)) for rule in RULES)
_BY_FIELD: dict[str, tuple[tuple[int, Rule, re.Pattern[str]], ...]] = {
    f: tuple((i, r, rx) for i, (r, rx) in enumerate(_COMPILED) if r.field == f)
    for f in {r.field for r in RULES}
}
_SOURCE = {
    F_OUI: "oui",
    F_DHCP_HOST: "dhcp",
    F_DHCP_VENDOR: "dhcp",
    F_MDNS_MODEL: "mdns",
    F_MDNS_SERVICE: "mdns",
    F_MDNS_NAME: "mdns",
    F_SSDP_SERVER: "ssdp",
    F_SSDP_TYPE: "ssdp",
    F_SSDP_HEADER: "ssdp",
}
_LABEL = {
    F_OUI: "vendor",
    F_DHCP_HOST: "DHCP hostname",
    F_DHCP_VENDOR: "DHCP vendor class",
    F_MDNS_MODEL: "mDNS model",
    F_MDNS_SERVICE: "mDNS service",
    F_MDNS_NAME: "mDNS name",
    F_SSDP_SERVER: "SSDP server",
    F_SSDP_TYPE: "SSDP type",
    F_SSDP_HEADER: "SSDP header",
    F_DOMAIN: "contacted",
}
# Names that identify nothing for a person: UUIDs, hex serials, MAC-prefixed AirPlay names.
_JUNK_NAME = re.compile(r"^[0-9a-f-]{16,}$|[0-9a-f]{16,}$", re.IGNORECASE)


@dataclass(slots=True)
class _Hit:
    rule: Rule
    text: str
    source: str
    detail: str | None


def _detail(rule: Rule, m: re.Match[str]) -> str | None:
    if rule.detail is None:
        return None
    group = m.group(1) if m.groups() else m.group(0)
    if isinstance(rule.detail, str):
        return rule.detail.format(group)
    return rule.detail.get(group)


def domain_may_identify(name: str) -> bool:
    """Whether a name a device resolved or sent could be evidence (some rule matches it).

    The rest change nothing about any device, so the DNS digest leaves them out."""
    text = name.lower().rstrip(".")
    return any(rx.search(text) for _, _, rx in _BY_FIELD.get(F_DOMAIN, ()))


def _noisy_or(weights: list[float]) -> float:
    miss = 1.0
    for w in weights:
        miss *= 1.0 - w
    return 1.0 - miss


class DeviceIdentifier:
    """Accumulates observations for one device, then guesses what it is."""

    def __init__(self) -> None:
        self._hits: dict[int, _Hit] = {}  # rule index -> first match
        self._seen: set[tuple[str, str]] = set()
        self._names: dict[int, list[str]] = {}  # priority -> friendly names

    # -- observations -------------------------------------------------------------------------
    def add_vendor(self, vendor: str | None) -> None:
        if vendor:
            self._observe(F_OUI, vendor, "oui")

    def add_dhcp(self, info: DhcpInfo) -> None:
        if info.hostname:
            self._observe(F_DHCP_HOST, info.hostname, "dhcp")
            self._add_name(2, info.hostname)
        if info.vendor_class:
            self._observe(F_DHCP_VENDOR, info.vendor_class, "dhcp")

    def add_mdns(self, info: MdnsInfo) -> None:
        for key in _MODEL_KEYS:
            value = info.txt.get(key)
            if value:
                self._observe(F_MDNS_MODEL, value, "mdns")
        for service in info.services:
            self._observe(F_MDNS_SERVICE, service, "mdns")
        if info.txt.get("fn"):
            self._add_name(0, info.txt["fn"])
        for inst in info.instance_names:
            self._add_name(1, inst.rpartition("@")[2])  # RAOP: "D4A33D6B1E99@Living Room"
        for host in info.hostnames:
            self._add_name(3, host.removesuffix(".local"))

    def add_ssdp(self, info: SsdpInfo) -> None:
        if info.server:
            self._observe(F_SSDP_SERVER, info.server, "ssdp")
        for value in (info.st, info.usn):
            if value:
                self._observe(F_SSDP_TYPE, value, "ssdp")
        for header in info.headers:
            self._observe(F_SSDP_HEADER, header, "ssdp")
        for key in ("x-friendly-name", "friendlyname"):
            if info.headers.get(key):
                self._add_name(4, info.headers[key])

    def add_domain(self, name: str, source: str) -> None:
        """A name the device resolved (``source="dns"``) or sent as TLS SNI (``"sni"``)."""
        self._observe(F_DOMAIN, name.lower().rstrip("."), source)

    # -- results ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Friendly names, the most human first (mDNS fn, instance names, DHCP, mDNS hosts)."""
        out: list[str] = []
        keys: set[str] = set()
        for prio in sorted(self._names):
            for name in self._names[prio]:
                key = name.lower().replace("-", " ").replace("_", " ").strip()
                if key not in keys:
                    keys.add(key)
                    out.append(name)
        return out

    def identity(self) -> Identity:
        hits = list(self._hits.values())
        kind, kind_conf, kind_ev = _decide(hits, "kind")
        model, model_conf, model_ev = _decide(hits, "model")
        assistant, asst_conf, asst_ev = _decide(hits, "assistant")
        if model is not None:
            details = [h for h in model_ev if h.detail]
            if details:
                model = max(details, key=lambda h: h.rule.weight).detail
        confidence = model_conf if model else kind_conf if kind else asst_conf
        evidence: list[Evidence] = []
        seen: set[int] = set()
        for hit in (*model_ev, *kind_ev, *asst_ev):
            if id(hit) not in seen:
                seen.add(id(hit))
                evidence.append(Evidence(hit.source, _describe(hit)))
        return Identity(kind, model, assistant, round(confidence, 3), evidence)

    # -- internals ----------------------------------------------------------------------------
    def _observe(self, fld: str, text: str, source: str) -> None:
        key = (fld, text)
        if key in self._seen:
            return
        if len(self._seen) < _MAX_SEEN:
            self._seen.add(key)
        for index, rule, rx in _BY_FIELD.get(fld, ()):
            if index in self._hits:
                continue
            m = rx.search(text)
            if m:
                self._hits[index] = _Hit(rule, text, _SOURCE.get(fld, source), _detail(rule, m))

    def _add_name(self, prio: int, name: str) -> None:
        name = name.strip()
        if not name or _JUNK_NAME.search(name):
            return
        bucket = self._names.setdefault(prio, [])
        if name not in bucket and len(bucket) < 16:
            bucket.append(name)


def _decide(hits: list[_Hit], attr: str) -> tuple[str | None, float, list[_Hit]]:
    """The value of ``attr`` with the most support, its confidence and its supporting hits."""
    votes: dict[str, list[_Hit]] = {}
    for hit in hits:
        value = getattr(hit.rule, attr)
        if value is not None:
            votes.setdefault(value, []).append(hit)
    if not votes:
        return None, 0.0, []
    scored = sorted(
        ((_noisy_or([h.rule.weight for h in hs]), value) for value, hs in votes.items()),
        reverse=True,
    )
    best, value = scored[0]
    runner_up = scored[1][0] if len(scored) > 1 else 0.0
    return value, best * (1.0 - 0.5 * runner_up), votes[value]


def _describe(hit: _Hit) -> str:
    rule = hit.rule
    said = ", ".join(x for x in (hit.detail or rule.model, rule.kind, rule.assistant) if x)
    return f'{_LABEL.get(rule.field, rule.field)} "{hit.text}" → {said}'
