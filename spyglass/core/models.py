"""What the engine reports: devices, names, flows, per-second series and upload events."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Device:
    """A device on the LAN, keyed by MAC (IPs change, MACs rarely do)."""

    mac: str  # "aa:bb:cc:dd:ee:ff"
    vendor: str | None = None  # from the OUI
    kind: str | None = None  # "speaker", "phone", "tv", ...
    model: str | None = None  # "Amazon Echo", "Google Nest", "Apple HomePod", "Sonos", ...
    assistant: str | None = None  # "alexa", "google", "siri" when known
    names: list[str] = field(default_factory=list)  # DHCP hostname, mDNS name, SSDP friendly name
    ips: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)  # why kind/model were guessed
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass(slots=True)
class EndpointName:
    """A name a device resolved (DNS answer) or asked for (TLS SNI), for one remote IP."""

    device_mac: str
    ip: str
    name: str
    source: str  # "dns" or "sni"
    first_seen: float
    last_seen: float


@dataclass(slots=True)
class Flow:
    """Traffic between one device and one remote endpoint, per protocol and remote port."""

    device_mac: str
    remote_ip: str
    proto: str  # "tcp", "udp", "icmp", ...
    remote_port: int
    packets_up: int = 0
    bytes_up: int = 0
    packets_down: int = 0
    bytes_down: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    remote_name: str | None = None


@dataclass(slots=True)
class SeriesPoint:
    """One second of one device's traffic with one remote endpoint (bytes are frame bytes)."""

    device_mac: str
    remote_ip: str
    second: int  # UNIX epoch second
    bytes_up: int
    bytes_down: int
    packets_up: int
    packets_down: int


@dataclass(slots=True)
class Upload:
    """A detected audio upload."""

    device_mac: str
    start: float  # UNIX epoch seconds
    end: float
    bytes_up: int
    peak_bps: int  # highest upstream bytes in one second
    destination: str  # name when known, else the remote IP
    remote_ip: str
    proto: str
    port: int
    assistant: str | None
    confidence: float  # 0..1
    evidence: list[str] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.end - self.start
