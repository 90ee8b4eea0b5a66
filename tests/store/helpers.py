"""Hand-made analysis results (the shape the pipeline returns) for store and CLI tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from spyglass.core.models import Device, EndpointName, Flow, SeriesPoint, Upload

ECHO = "68:db:f5:c1:c0:01"
NEST = "1c:f2:9a:c1:c0:05"
T0 = 1_700_000_000


@dataclass
class Stats:
    packets: int = 0
    bytes: int = 0
    malformed: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Problem:
    offset: int
    message: str


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    cut_short: bool = False
    stopped_early: bool = False
    packets: int = 0
    file_size: int = 0


@dataclass
class Result:
    path: str = "x.pcap"
    devices: list[Device] = field(default_factory=list)
    endpoint_names: list[EndpointName] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    series: list[SeriesPoint] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    read_report: Report | None = None


def upload(start: float, mac: str = ECHO, nbytes: int = 31_000) -> Upload:
    return Upload(
        device_mac=mac,
        start=start,
        end=start + 4.5,
        bytes_up=nbytes,
        peak_bps=15_000,
        destination="bob-dispatch-prod-na.amazon.com",
        remote_ip="52.1.2.3",
        proto="tcp",
        port=443,
        assistant="alexa",
        confidence=0.9,
        evidence=["sustained upstream 4.5 s"],
    )


def result(t0: int = T0, seconds: int = 60, names: tuple[str, ...] = ("kitchen-echo",)) -> Result:
    """One minute of an Echo talking to one endpoint, with one upload."""
    series = [
        SeriesPoint(ECHO, "52.1.2.3", t0 + s, 1000 + s, 2000, 3, 4) for s in range(seconds)
    ]
    return Result(
        devices=[
            Device(
                mac=ECHO,
                vendor="Amazon Technologies Inc.",
                kind="speaker",
                model="Amazon Echo",
                assistant="alexa",
                names=list(names),
                ips=["192.168.1.20"],
                evidence=["dns: bob-dispatch"],
                first_seen=float(t0),
                last_seen=float(t0 + seconds),
            )
        ],
        endpoint_names=[
            EndpointName(ECHO, "52.1.2.3", "bob-dispatch-prod-na.amazon.com", "dns", t0, t0 + 1)
        ],
        flows=[
            Flow(
                ECHO, "52.1.2.3", "tcp", 443,
                packets_up=3 * seconds, bytes_up=sum(p.bytes_up for p in series),
                packets_down=4 * seconds, bytes_down=2000 * seconds,
                first_seen=float(t0), last_seen=float(t0 + seconds),
            )
        ],
        series=series,
        uploads=[upload(t0 + 10.25)],
        stats=Stats(packets=7 * seconds),
    )
