"""What each device does over time: time-ordered generators of events.

A behaviour yields ``(start, render)``; ``render()`` returns the event's frames (all at or after
``start``) and, for a voice upload, its labelled window. Event starts are drawn from the
device's own random generator, so a household is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from spyglass.sim import craft, profiles
from spyglass.sim.events import (
    Dev,
    dns,
    downstream,
    exchange,
    quic_downstream,
    quic_upstream,
    tls_open,
    upstream,
)
from spyglass.sim.flows import Packet, TcpConn, UdpFlow
from spyglass.sim.profiles import BurstProfile, SpeakerModel, UploadProfile


@dataclass(slots=True)
class Window:
    mac: str
    start: float  # first audio frame
    end: float  # last audio frame (of the follow-up turn when there is one)
    event_end: float  # last frame of the whole interaction, answer included
    rates: list[float]  # per-second budgets used (for checks)


Rendered = tuple[list[Packet], Window | None]
Event = tuple[float, Callable[[], Rendered]]


def _gaps(dev: Dev, t: float, per_hour: float, end: float, min_gap: float = 1.0) -> Iterator[float]:
    """Poisson arrivals after ``t`` at ``per_hour`` until ``end``."""
    if per_hour <= 0:
        return
    while True:
        t += max(min_gap, dev.rng.expovariate(per_hour / 3600.0))
        if t >= end:
            return
        yield t


def _periodic(dev: Dev, t: float, every: tuple[float, float], end: float) -> Iterator[float]:
    while True:
        t += dev.rng.uniform(*every)
        if t >= end:
            return
        yield t


# --- background every device has -----------------------------------------------------------


def boot(dev: Dev, t: float, vendor_class: str) -> Rendered:
    """DHCP discover/offer/request/ack, gratuitous ARP, router's ARP."""
    lan, rng = dev.lan, dev.rng
    xid = rng.getrandbits(32)
    bcast = craft.ip4("255.255.255.255")
    cli = UdpFlow(dev.mac, craft.BROADCAST_MAC, craft.ip4("0.0.0.0"), bcast, 68, 67, ttl_a=64)
    srv = UdpFlow(lan.gw_mac, craft.BROADCAST_MAC, lan.gw_ip, bcast, 67, 68, ttl_a=64)
    vc = vendor_class or "dhcpcd-9.4.1"
    t1 = t + rng.uniform(0.002, 0.02)
    t2 = t1 + rng.uniform(0.01, 0.3)
    t3 = t2 + rng.uniform(0.002, 0.02)
    pkts = [
        (
            t,
            cli.frame(True, craft.dhcp_client(craft.DHCP_DISCOVER, xid, dev.mac, dev.hostname, vc)),
        ),
        (t1, srv.frame(True, craft.dhcp_server(craft.DHCP_OFFER, xid, dev.mac, dev.ip, lan.gw_ip))),
        (
            t2,
            cli.frame(
                True,
                craft.dhcp_client(
                    craft.DHCP_REQUEST,
                    xid,
                    dev.mac,
                    dev.hostname,
                    vc,
                    requested_ip=dev.ip,
                    server_id=lan.gw_ip,
                ),
            ),
        ),
        (t3, srv.frame(True, craft.dhcp_server(craft.DHCP_ACK, xid, dev.mac, dev.ip, lan.gw_ip))),
        (
            t3 + 0.05,
            craft.ethernet(
                craft.BROADCAST_MAC,
                dev.mac,
                craft.ETH_ARP,
                craft.arp(1, dev.mac, dev.ip, b"\0" * 6, dev.ip),
            ),
        ),
    ]
    return pkts, None


def arp_check(dev: Dev, t: float) -> Rendered:
    lan = dev.lan
    req = craft.ethernet(
        craft.BROADCAST_MAC,
        lan.gw_mac,
        craft.ETH_ARP,
        craft.arp(1, lan.gw_mac, lan.gw_ip, b"\0" * 6, dev.ip),
    )
    rep = craft.ethernet(
        lan.gw_mac, dev.mac, craft.ETH_ARP, craft.arp(2, dev.mac, dev.ip, lan.gw_mac, lan.gw_ip)
    )
    return [(t, req), (t + dev.rng.uniform(0.001, 0.02), rep)], None


def ntp_sync(dev: Dev, t: float, server: str) -> Rendered:
    pkts, t, addr = dns(dev, t, server)
    flow = dev.udp(addr, 123, sport=123)
    t += 0.001
    t2 = t + dev.rng.uniform(0.01, 0.05)
    pkts += [
        (t, flow.frame(True, craft.ntp(3, t))),
        (t2, flow.frame(False, craft.ntp(4, t2, origin=t, stratum=2, ref_id=b"\x11\xfd\x14\x7d"))),
    ]
    return pkts, None


def mdns_announce(dev: Dev, t: float, kind: str, friendly: str) -> Rendered:
    mac_hex = dev.mac.hex()
    if kind == "googlecast":
        inst = f"Google-Nest-Mini-{mac_hex}._googlecast._tcp.local"
        payload = craft.mdns_announcement(
            "_googlecast._tcp.local",
            inst,
            f"{mac_hex[:8]}-{mac_hex[8:]}.local",
            8009,
            [
                f"id={mac_hex}{'0' * 20}",
                "cd=" + mac_hex.upper() * 2,
                "rm=",
                "ve=05",
                "md=Google Nest Mini",
                "ic=/setup/icon.png",
                f"fn={friendly}",
                "ca=199172",
                "st=0",
                "bs=FA8FCA" + mac_hex[:6].upper(),
                "nf=1",
                "rs=",
            ],
            dev.ip_s,
        )
    elif kind == "airplay":
        inst = f"{friendly}._airplay._tcp.local"
        dev_id = ":".join(f"{b:02X}" for b in dev.mac)
        payload = craft.mdns_announcement(
            "_airplay._tcp.local",
            inst,
            f"{friendly.replace(' ', '-')}.local",
            7000,
            [
                f"deviceid={dev_id}",
                "features=0x4A7FCA00,0xBC354BD0",
                "flags=0x18004",
                "model=AudioAccessory1,1",
                "protovers=1.1",
                "srcvers=625.3.1",
                "osvers=17.1",
            ],
            dev.ip_s,
        )
    elif kind == "amzn-wplay":
        inst = f"{mac_hex}._amzn-wplay._tcp.local"
        payload = craft.mdns_announcement(
            "_amzn-wplay._tcp.local",
            inst,
            f"amazon-{mac_hex[6:]}.local",
            55442,
            ["s=0", f"u={mac_hex}", f"n={friendly}", "at=A3S5BH2HU6VAYF", "mv=2"],
            dev.ip_s,
        )
    else:  # sonos
        inst = f"{mac_hex.upper()}@{friendly}._sonos._tcp.local"
        payload = craft.mdns_announcement(
            "_sonos._tcp.local",
            inst,
            f"Sonos-{mac_hex.upper()}.local",
            1443,
            [
                "info=/api/v1/players/RINCON_" + mac_hex.upper() + "01400/info",
                "vers=3",
                "protovers=1.24.1",
                "mhhid=Sonos_h0use",
                "locationid=lc_0",
                "sslport=1443",
            ],
            dev.ip_s,
        )
    flow = UdpFlow(dev.mac, craft.MDNS_MAC, dev.ip, craft.ip4("224.0.0.251"), 5353, 5353, ttl_a=255)
    return [(t, flow.frame(True, payload))], None


def ssdp_notify(dev: Dev, t: float) -> Rendered:
    flow = UdpFlow(
        dev.mac, craft.SSDP_MAC, dev.ip, craft.ip4("239.255.255.250"), 1900, 1900, ttl_a=4
    )
    mac_hex = dev.mac.hex().upper()
    if dev.vendor == "Sonos":
        server = "Linux UPnP/1.0 Sonos/70.3-35220 (ZPS12)"
        loc = f"http://{dev.ip_s}:1400/xml/device_description.xml"
        uuid = f"RINCON_{mac_hex}01400"
        nts = ("upnp:rootdevice", "urn:schemas-upnp-org:device:ZonePlayer:1")
        extra = [
            ("X-RINCON-HOUSEHOLD", "Sonos_h0use"),
            ("X-RINCON-BOOTSEQ", "42"),
            ("BOOTID.UPNP.ORG", "42"),
            ("X-RINCON-WIFIMODE", "0"),
            ("X-RINCON-VARIANT", "2"),
            ("HOUSEHOLD.SMARTSPEAKER.AUDIO", "Sonos_h0use.sS4wLz3Dq1YmAlexa"),
        ]
    else:
        server = "WebOS/1.5 UPnP/1.0 webOSTV/1.0"
        loc = f"http://{dev.ip_s}:1858/"
        uuid = f"a5b0d1b2-{mac_hex[:4]}-{mac_hex[4:8]}-{mac_hex[8:]}-a1b2c3d4e5f6"
        nts = ("upnp:rootdevice", "urn:lge-com:service:webos-second-screen:1")
        extra = []
    pkts: list[Packet] = []
    for i, nt in enumerate(nts):
        usn = f"uuid:{uuid}::{nt}"
        pkts.append(
            (t + i * 0.002, flow.frame(True, craft.ssdp_notify(loc, nt, usn, server, extra)))
        )
    return pkts, None


def heartbeat(dev: Dev, conn: TcpConn, t: float) -> Rendered:
    pkts, _ = exchange(dev, conn, t, dev.rng.randint(60, 200), dev.rng.randint(40, 160))
    return pkts, None


# --- speakers ------------------------------------------------------------------------------


def _budgets(dev: Dev, prof: UploadProfile, duration: float) -> tuple[list[float], float]:
    """Per-second upstream frame bytes of one upload, and the span of its last second."""
    rng = dev.rng
    lo, hi = prof.rate_Bps
    whole = math.ceil(duration)
    last_span = duration - (whole - 1)
    rate = rng.uniform(lo, hi)
    out: list[float] = []
    for k in range(whole):
        if prof.shape == "peak" and k > 0:
            b = rng.uniform(*prof.tail_Bps)
        elif prof.shape == "peak":
            b = rate
        else:
            b = min(hi, max(lo, rate * rng.uniform(0.9, 1.0)))
        out.append(b * (last_span if k == whole - 1 else 1.0))
    return out, last_span


class Speaker:
    """A smart speaker: its persistent connections and its foreground events."""

    def __init__(self, dev: Dev, model: SpeakerModel) -> None:
        self.dev = dev
        self.model = model
        self.main: TcpConn | None = None  # Alexa: the connection the audio rides on
        self.voice_name = dev.rng.choice(model.upload.endpoints) if model.upload else ""

    def open_main(self, t: float) -> Rendered:
        name = self.voice_name if self.model.vendor == "Amazon" else self.model.persistent
        self.main, pkts, _ = tls_open(self.dev, t, name)
        return pkts, None

    def beat(self, t: float) -> Rendered:
        if self.main is None:
            return [], None
        return heartbeat(self.dev, self.main, t)

    def upload(self, t: float, prof: UploadProfile) -> Rendered:
        dev, rng = self.dev, self.dev.rng
        pkts: list[Packet] = []
        rates: list[float] = []
        first = last = t
        if prof.transport == "quic":
            dpk, t, addr = dns(dev, t, self.voice_name)
            pkts += dpk
            flow = dev.udp(addr, 443)
            dcid = (rng.randbytes(8), rng.randbytes(8))
            turns = 2 if rng.random() < prof.followup_p else 1
            for turn in range(turns):
                dur = rng.uniform(*prof.duration_s) * (1.0 if turn == 0 else 0.6)
                budgets, span = _budgets(dev, prof, dur)
                up, f, last = quic_upstream(
                    dev, flow, dcid, t + 0.03, budgets, prof.frame_sizes[0], span
                )
                first = f if turn == 0 else first
                rates += budgets
                down, t = quic_downstream(
                    dev, flow, dcid, last + rng.uniform(0.2, 0.6), rng.uniform(*prof.answer_bytes)
                )
                pkts += up + down
                t += rng.uniform(1.5, 4.0)
        else:
            if self.model.vendor == "Amazon" and self.main is not None:
                conn = self.main
                t = max(t, conn.busy_until + 0.01)
            else:
                conn, opk, t = tls_open(dev, t, self.voice_name)
                pkts += opk
                t += rng.uniform(0.05, 0.3)
            turns = 2 if rng.random() < prof.followup_p else 1
            for turn in range(turns):
                dur = rng.uniform(*prof.duration_s) * (1.0 if turn == 0 else 0.6)
                budgets, span = _budgets(dev, prof, dur)
                preroll = rng.randint(*prof.preroll_frames) if turn == 0 else 0
                if prof.shape == "peak":
                    # The peak lands in one UNIX second, as in the real HomePod capture.
                    t = math.floor(t) + 1.0 + rng.uniform(0.0, 0.08)
                up, f, last = upstream(dev, conn, t, budgets, prof.frame_sizes, preroll, span)
                first = f if turn == 0 else first
                rates += budgets
                down, t = downstream(
                    dev, conn, last + rng.uniform(0.25, 0.8), rng.uniform(*prof.answer_bytes)
                )
                pkts += up + down
                t += rng.uniform(1.5, 4.0)
            if conn is not self.main:
                pkts += conn.close(t + rng.uniform(3.0, 20.0), 0.03)
        dev.uploads += 1
        end = max(p[0] for p in pkts)
        return pkts, Window(dev.mac_s, first, last, end, rates)

    def burst(self, t: float, prof: BurstProfile) -> Rendered:
        dev, rng = self.dev, self.dev.rng
        up_total = rng.uniform(*prof.up_bytes)
        secs = rng.uniform(*prof.seconds)
        if prof.transport == "quic":
            pkts, t, addr = dns(dev, t, prof.endpoint)
            flow = dev.udp(addr, 443)
            dcid = (rng.randbytes(8), rng.randbytes(8))
            up, _, last = quic_upstream(dev, flow, dcid, t + 0.02, [up_total], 1392, secs)
            down, _ = quic_downstream(dev, flow, dcid, last + 0.05, rng.uniform(*prof.down_bytes))
            return pkts + up + down, None
        pkts = []
        if prof.new_connection or self.main is None:
            conn, pkts, t = tls_open(dev, t, prof.endpoint)
        else:
            conn = self.main
        sizes = (1514, 1514, 1514, 420, 237) if up_total > 8000 else (420, 237, 180, 150, 92)
        up, _, last = upstream(dev, conn, t + 0.01, [up_total], sizes, 0, secs)
        down, t = downstream(
            dev, conn, last + rng.uniform(0.03, 0.2), rng.uniform(*prof.down_bytes)
        )
        pkts += up + down
        if conn is not self.main:
            pkts += conn.close(t + rng.uniform(2.0, 30.0), 0.03)
        return pkts, None


def speaker_events(sp: Speaker, t0: float, end: float) -> Iterator[Event]:
    """Foreground events of one speaker, one at a time, never overlapping."""
    model, rng = sp.model, sp.dev.rng
    kinds: list[tuple[float, UploadProfile | BurstProfile]] = []
    if model.upload:
        kinds.append((rng.uniform(*model.upload.per_hour), model.upload))
    if model.misactivation:
        kinds.append((rng.uniform(*model.misactivation.per_hour), model.misactivation))
    kinds += [(rng.uniform(*b.per_hour), b) for b in model.bursts if not b.new_connection]
    total = sum(r for r, _ in kinds)
    t = t0
    first_upload = model.upload is not None or model.misactivation is not None
    margin = 45.0  # keep uploads whole inside the capture
    while total > 0:
        if first_upload:  # every speaker that can upload does so early: demos show something
            t = t0 + rng.uniform(30.0, 240.0)
            choice: UploadProfile | BurstProfile = model.misactivation or model.upload  # type: ignore[assignment]
            if model.upload and rng.random() < 0.5:
                choice = model.upload
            first_upload = False
        else:
            t += 15.0 + rng.expovariate(total / 3600.0)
            x = rng.uniform(0, total)
            choice = kinds[-1][1]
            for r, k in kinds:
                x -= r
                if x <= 0:
                    choice = k
                    break
        if t >= end - margin:
            return
        if isinstance(choice, UploadProfile):
            yield t, partial(sp.upload, t, choice)
            t += 30.0  # no other foreground event until the answer is over
        else:
            yield t, partial(sp.burst, t, choice)
            t += 5.0


def speaker_bursts(sp: Speaker, t0: float, end: float) -> Iterator[Event]:
    """Bursts on their own connections (metrics, firmware checks, Siri sessions)."""
    streams = [
        (b, iter(_gaps(sp.dev, t0, sp.dev.rng.uniform(*b.per_hour), end, 5.0)))
        for b in sp.model.bursts
        if b.new_connection
    ]
    heap: list[tuple[float, int, BurstProfile, Iterator[float]]] = []
    for i, (b, it) in enumerate(streams):
        first = next(it, None)
        if first is not None:
            heap.append((first, i, b, it))
    heapq.heapify(heap)
    while heap:
        t, i, b, it = heap[0]
        yield t, partial(sp.burst, t, b)
        nxt = next(it, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt, i, b, it))


# --- music and video streaming -------------------------------------------------------------


class Streamer:
    """Sonos music or TV video: sessions of chunked downloads over one TLS connection."""

    def __init__(
        self,
        dev: Dev,
        host: str,
        chunk_every: tuple[float, float],
        chunk_bytes: tuple[float, float],
        sessions_per_hour: tuple[float, float],
        session_s: tuple[float, float],
        start_burst: Callable[[float], Rendered] | None = None,
    ) -> None:
        self.dev, self.host = dev, host
        self.chunk_every, self.chunk_bytes = chunk_every, chunk_bytes
        self.per_hour = dev.rng.uniform(*sessions_per_hour)
        self.session_s = session_s
        self.start_burst = start_burst
        self.conn: TcpConn | None = None

    def events(self, t0: float, end: float) -> Iterator[Event]:
        rng = self.dev.rng
        t = t0 + rng.uniform(10.0, 120.0)
        while t < end:
            stop = min(end, t + rng.uniform(*self.session_s))
            yield t, partial(self._open, t)
            t += 1.0
            while t < stop:
                yield t, partial(self._chunk, t)
                t += rng.uniform(*self.chunk_every)
            yield t, partial(self._close, t)
            t += rng.expovariate(self.per_hour / 3600.0) + 30.0

    def _open(self, t: float) -> Rendered:
        self.conn, pkts, t2 = tls_open(self.dev, t, self.host)
        if self.start_burst is not None:
            more, _ = self.start_burst(t2 + 0.05)
            pkts += more
        return pkts, None

    def _chunk(self, t: float) -> Rendered:
        if self.conn is None:
            return [], None
        rng = self.dev.rng
        pkts, _ = exchange(self.dev, self.conn, t, rng.randint(350, 700), rng.randint(300, 500))
        down, _ = downstream(
            self.dev,
            self.conn,
            pkts[-1][0] + 0.001,
            rng.uniform(*self.chunk_bytes),
            gap=rng.uniform(0.0004, 0.0012),
        )
        return pkts + down, None

    def _close(self, t: float) -> Rendered:
        if self.conn is None:
            return [], None
        conn, self.conn = self.conn, None
        return conn.close(max(t, conn.busy_until + 0.01), 0.03), None


def sonos_start(sp: Speaker) -> Callable[[float], Rendered]:
    """Music start: event posts to the Sonos API at up to 22 KB/s for about a second."""

    def render(t: float) -> Rendered:
        if sp.main is None:
            return [], None
        rate = sp.dev.rng.uniform(*profiles.SONOS_MUSIC_START_Bps)
        pkts, _, last = upstream(
            sp.dev,
            sp.main,
            t,
            [rate],
            (420, 380, 300, 237, 180, 92),
            0,
            sp.dev.rng.uniform(0.7, 1.0),
        )
        down, _ = downstream(sp.dev, sp.main, last + 0.05, sp.dev.rng.uniform(1500, 4000))
        return pkts + down, None

    return render


# --- phones, laptop: web sessions ---------------------------------------------------------


def web_session(dev: Dev, t: float, sites: tuple[str, ...], size: tuple[float, float]) -> Rendered:
    rng = dev.rng
    pkts: list[Packet] = []
    for _ in range(rng.randint(1, 3)):
        conn, opk, t2 = tls_open(dev, t, rng.choice(sites))
        pkts += opk
        req, t2 = exchange(dev, conn, t2 + 0.01, rng.randint(300, 900), rng.randint(200, 600))
        down, t2 = downstream(
            dev, conn, t2 + 0.02, rng.uniform(*size), gap=rng.uniform(0.0002, 0.001)
        )
        pkts += (
            req + down + conn.close(t2 + rng.uniform(1.0, 15.0), 0.03, by_client=rng.random() < 0.5)
        )
        t = t2 + rng.uniform(0.1, 3.0)
    return pkts, None
