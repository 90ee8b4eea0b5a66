"""Device and event profiles for the household simulator, as data.

Ranges are (low, high) and drawn uniformly per event. Each profile says where its numbers come
from: "measured" figures were read with tshark from the real captures in
``../shared/data/captures`` (frame bytes per UNIX second from the speaker to port 443);
"assumed" figures are plausible values where the captures say nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

Range = tuple[float, float]


@dataclass(frozen=True)
class UploadProfile:
    """A voice upload: upstream audio on one connection, then the spoken answer downstream."""

    transport: str  # "tcp" (TLS over TCP/443) or "quic" (UDP/443)
    endpoints: tuple[str, ...]  # DNS names the audio goes to
    rate_Bps: Range  # frame bytes per second upstream while the audio streams
    duration_s: Range
    frame_sizes: tuple[int, ...]  # frame lengths of the audio chunks (the packetisation)
    preroll_frames: tuple[int, int] = (0, 0)  # full-MSS frames at the start (buffered wake word)
    answer_bytes: Range = (8_000, 25_000)  # downstream reply (TTS audio)
    followup_p: float = 0.0  # chance of a follow-up turn inside the same labelled window
    per_hour: Range = (4.0, 8.0)
    shape: str = "flat"  # "flat", or "peak": one peak second then a quieter tail (HomePod)
    tail_Bps: Range = (0.0, 0.0)
    source: str = ""


@dataclass(frozen=True)
class BurstProfile:
    """Hard negative or routine traffic: short upstream bursts that are not audio."""

    name: str
    endpoint: str
    transport: str  # "tcp" or "quic"
    up_bytes: Range  # upstream frame bytes of the whole burst
    seconds: Range  # how long it lasts
    down_bytes: Range
    per_hour: Range
    new_connection: bool = False  # open a fresh TLS connection (ClientHello with SNI) for it
    port: int = 443
    source: str = ""


@dataclass(frozen=True)
class SpeakerModel:
    key: str
    label_model: str  # device_model column of the labels file
    vendor: str
    assistant: str
    ouis: tuple[str, ...]
    hostname: str  # DHCP option 12 pattern; {hex} = last MAC bytes
    vendor_class: str  # DHCP option 60
    persistent: str  # name of the long-lived TLS connection (heartbeats; Echo audio rides on it)
    heartbeat_s: Range
    upload: UploadProfile | None
    misactivation: UploadProfile | None = None
    bursts: tuple[BurstProfile, ...] = ()
    ntp_server: str = "pool.ntp.org"
    mdns: str = ""  # "googlecast", "airplay", "amzn-wplay", "sonos"
    ssdp: bool = False
    music: bool = False  # streams music (Sonos)
    source: str = ""


@dataclass(frozen=True)
class OtherModel:
    key: str
    vendor: str
    kind: str
    ouis: tuple[str, ...]
    hostname: str
    vendor_class: str
    persistent: str | None
    heartbeat_s: Range
    web_sites: tuple[str, ...] = ()
    web_sessions_per_hour: Range = (0.0, 0.0)
    web_bytes: Range = (20_000, 300_000)
    video: bool = False
    video_kbps: Range = (0.0, 0.0)
    ntp_server: str = "pool.ntp.org"
    ssdp: bool = False
    mdns: str = ""


# --- endpoints: name -> (CNAME chain, address pool) ----------------------------------------
# Address pools are public ranges these vendors really serve the names from (several seen in
# the captures: 52.94.233.109 / 52.94.235.50 bob-dispatch, 52.119.196-197 / 52.46.153 Alexa,
# 54.239.26-29 unagi-na, 17.174.1.5 guzzoni, 172.217.1.4 Google voice, 142.250.31.188 mtalk).
ENDPOINTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bob-dispatch-prod-na.amazon.com": ((), ("52.94.233.", "52.94.235.", "52.94.232.")),
    "avs-alexa-14-na.amazon.com": ((), ("52.119.197.", "52.119.196.", "52.46.153.")),
    "unagi-na.amazon.com": ((), ("54.239.26.", "54.239.29.")),
    "device-metrics-us.amazon.com": ((), ("52.46.158.", "52.46.155.")),
    "device-metrics-us-2.amazon.com": ((), ("54.239.19.", "54.239.20.")),
    "dcape-na.amazon.com": ((), ("52.46.132.", "52.46.133.")),
    "api.amazonalexa.com": ((), ("52.84.59.", "52.84.61.")),
    "softwareupdates.amazon.com": (
        ("d1s31zyz7dcc2d.cloudfront.net",),
        ("13.225.210.", "13.225.198."),
    ),
    "fireoscaptiveportal.com": ((), ("52.55.98.", "52.7.82.", "54.84.30.")),
    "www.google.com": ((), ("172.217.1.", "142.250.65.", "142.250.72.")),
    "embeddedassistant.googleapis.com": ((), ("142.251.33.", "172.217.1.")),
    "googlehomefoyer-pa.googleapis.com": ((), ("172.217.1.", "142.251.32.")),
    "mtalk.google.com": (("mobile-gtalk.l.google.com",), ("142.250.31.", "142.251.163.")),
    "clients3.google.com": (("clients.l.google.com",), ("142.250.80.", "172.217.165.")),
    "connectivitycheck.gstatic.com": ((), ("142.250.80.", "172.217.165.")),
    "dl.google.com": ((), ("142.250.64.", "172.217.13.")),
    "time.google.com": ((), ("216.239.35.",)),
    "guzzoni.apple.com": (("origin.guzzoni-apple.com.akadns.net",), ("17.174.1.",)),
    "time-ios.apple.com": (("time-ios.g.aaplimg.com",), ("17.253.20.", "17.253.14.")),
    "mesu.apple.com": (("mesu-cdn.origin-apple.com.akadns.net",), ("104.97.144.",)),
    "gateway.icloud.com": (("gateway.fe.apple-dns.net",), ("17.248.138.", "17.248.145.")),
    "time.apple.com": (("time.g.aaplimg.com",), ("17.253.20.",)),
    "msmetrics.ws.sonos.com": ((), ("54.192.48.", "34.239.138.")),
    "api.ws.sonos.com": ((), ("52.201.15.", "34.239.138.")),
    "update.sonos.com": ((), ("54.192.48.",)),
    "audio4-fa.scdn.co": (("audio4-fa.scdn.co.fastly.net",), ("151.101.2.", "151.101.66.")),
    "ipv4-c012-ams001-ix.1.oca.nflxvideo.net": ((), ("45.57.18.", "45.57.19.")),
    "api-global.netflix.com": (("api-global.geo.netflix.com",), ("54.74.73.", "52.49.96.")),
    "lgtvsdp.com": ((), ("52.58.190.",)),
    "n-devs.tplinkcloud.com": ((), ("3.122.146.", "18.194.10.")),
    "www.wikipedia.org": (("dyna.wikimedia.org",), ("185.15.59.",)),
    "www.bbc.co.uk": (
        ("www.bbc.co.uk.pri.bbc.co.uk", "uk.www.bbc.co.uk.pri.bbc.co.uk"),
        ("151.101.0.", "151.101.192."),
    ),
    "github.com": ((), ("140.82.121.",)),
    "news.ycombinator.com": ((), ("209.216.230.",)),
    "www.youtube.com": (("youtube-ui.l.google.com",), ("142.250.185.", "142.250.186.")),
    "www.reddit.com": (("reddit.map.fastly.net",), ("151.101.1.", "151.101.129.")),
    "detectportal.firefox.com": (("detectportal.prod.mozaws.net",), ("34.107.221.",)),
    "pool.ntp.org": ((), ("162.159.200.", "216.239.35.")),
}


# --- speaker models -----------------------------------------------------------------------

_ALEXA_VOICE = ("bob-dispatch-prod-na.amazon.com", "avs-alexa-14-na.amazon.com")

ECHO_VOICE = UploadProfile(
    transport="tcp",
    endpoints=_ALEXA_VOICE,
    rate_Bps=(15_000, 33_000),
    duration_s=(4.0, 6.0),
    # echodot3a_active: 1116-byte frames every ~30 ms after a burst of 1514s; Kennedy: mixed
    # 100-1500 B; cic_echodot*_VOICE*: mostly 100-400 B frames.
    frame_sizes=(1116, 1116, 1116, 860, 640, 420, 237),
    preroll_frames=(3, 9),
    answer_bytes=(12_000, 24_000),  # Kennedy: 17-22 KB in the second after the audio
    followup_p=0.15,
    per_hour=(5.0, 9.0),
    source="echodot3a_active (34.6 KB/s steady, 76 KB first second), Kennedy what_time_is_it "
    "(5-32 KB/s over 5-6 s), cic_echodot*_VOICE* (22-23 KB + 5-7 KB); README: 4-6 s at 15-33 KB/s",
)

ECHO_METRICS = BurstProfile(
    name="metrics",
    endpoint="device-metrics-us.amazon.com",
    transport="tcp",
    up_bytes=(2_500, 9_000),
    seconds=(0.5, 2.0),
    down_bytes=(600, 1_500),
    per_hour=(4.0, 8.0),
    new_connection=True,
    source="assumed; DESIGN: device-metrics-us* is not audio",
)
ECHO_FIRMWARE = BurstProfile(
    name="firmware-check",
    endpoint="softwareupdates.amazon.com",
    transport="tcp",
    up_bytes=(1_200, 3_000),
    seconds=(0.5, 1.5),
    down_bytes=(6_000, 40_000),
    per_hour=(0.5, 1.5),
    new_connection=True,
    source="assumed (CloudFront 13.225.x seen in cic_echospot_WAN)",
)
ECHO_DOT_APP = BurstProfile(
    name="app-interaction",
    endpoint="avs-alexa-14-na.amazon.com",
    transport="tcp",
    up_bytes=(1_000, 2_400),
    seconds=(0.3, 1.0),
    down_bytes=(800, 1_600),
    per_hour=(2.0, 5.0),
    source="cic_echodot*_LAN/WAN/LOCAL: 1.9-2.1 KB up in one second",
)
ECHO_STUDIO_APP = BurstProfile(
    name="app-interaction",
    endpoint="avs-alexa-14-na.amazon.com",
    transport="tcp",
    up_bytes=(12_700, 18_500),
    seconds=(0.4, 1.0),
    down_bytes=(1_100, 2_000),
    per_hour=(2.0, 5.0),
    source="cic_echostudio_LAN/LOCAL: 12.9-13.5 KB in one second; README: 12.7-18.5 KB/s",
)
ECHO_SPOT_APP = BurstProfile(
    name="app-interaction",
    endpoint="avs-alexa-14-na.amazon.com",
    transport="tcp",
    up_bytes=(18_000, 24_400),
    seconds=(0.5, 1.0),
    down_bytes=(1_600, 2_100),
    per_hour=(2.0, 5.0),
    source="cic_echospot_LAN/WAN/LOCAL: 24.3-24.5 KB in one second (or 12.2 KB x 2 s) "
    "to the voice IP",
)


def _echo(key: str, label: str, app: BurstProfile, hostname: str) -> SpeakerModel:
    return SpeakerModel(
        key=key,
        label_model=label,
        vendor="Amazon",
        assistant="alexa",
        ouis=("68:db:f5", "44:65:0d", "fc:65:de", "74:c2:46"),
        hostname=hostname,
        vendor_class="udhcp 1.29.3",
        persistent="unagi-na.amazon.com",
        heartbeat_s=(25.0, 60.0),
        upload=ECHO_VOICE,
        bursts=(app, ECHO_METRICS, ECHO_FIRMWARE),
        mdns="amzn-wplay",
        ntp_server="pool.ntp.org",
        source="cic_echo*, echodot3a_active, Kennedy captures",
    )


ECHO_DOT = _echo("echo_dot", "Amazon Echo Dot 3rd gen (simulated)", ECHO_DOT_APP, "amazon-{hex}")
ECHO_STUDIO = _echo(
    "echo_studio", "Amazon Echo Studio (simulated)", ECHO_STUDIO_APP, "amazon-{hex}"
)
ECHO_SPOT = _echo("echo_spot", "Amazon Echo Spot (simulated)", ECHO_SPOT_APP, "amazon-{hex}")

NEST_VOICE = UploadProfile(
    transport="quic",
    endpoints=("www.google.com",),
    rate_Bps=(126_000, 202_000),
    duration_s=(1.6, 2.6),
    frame_sizes=(1392,),  # cic_nestmini_VOICE*: 140 of 196 upstream frames are 1392 B
    answer_bytes=(10_000, 20_000),
    followup_p=0.1,
    per_hour=(4.0, 8.0),
    source="cic_nestmini_VOICE*: 193 KB in 2.4 s over QUIC to 172.217.1.4 (140 KB first second); "
    "README: 126-202 KB/s",
)
NEST_APP = BurstProfile(
    name="app-interaction",
    endpoint="googlehomefoyer-pa.googleapis.com",
    transport="quic",
    up_bytes=(4_000, 11_000),
    seconds=(0.3, 0.9),
    down_bytes=(3_000, 5_500),
    per_hour=(2.0, 5.0),
    source="cic_nestmini_LAN/LOCAL: 8.3-11.1 KB QUIC to 172.217.1.14 in < 0.5 s; README 4-11 KB/s",
)
NEST_FIRMWARE = BurstProfile(
    name="firmware-check",
    endpoint="dl.google.com",
    transport="tcp",
    up_bytes=(900, 2_000),
    seconds=(0.3, 1.0),
    down_bytes=(4_000, 20_000),
    per_hour=(0.5, 1.5),
    new_connection=True,
    source="assumed",
)
NEST_MINI = SpeakerModel(
    key="nest_mini",
    label_model="Google Nest Mini (simulated)",
    vendor="Google",
    assistant="google",
    ouis=("1c:f2:9a", "38:8b:59"),
    hostname="Google-Nest-Mini",
    vendor_class="dhcpcd-6.8.2:Linux-4.9.0:armv7l:Marvell",
    persistent="mtalk.google.com",
    heartbeat_s=(120.0, 300.0),
    upload=NEST_VOICE,
    bursts=(NEST_APP, NEST_FIRMWARE),
    ntp_server="time.google.com",
    mdns="googlecast",
    source="cic_nestmini_* captures",
)

HOMEPOD_VOICE = UploadProfile(
    transport="tcp",
    endpoints=("guzzoni.apple.com",),
    rate_Bps=(76_000, 110_000),
    duration_s=(3.0, 5.0),
    frame_sizes=(1514, 1514, 353, 314, 289, 199, 151),
    answer_bytes=(15_000, 45_000),
    followup_p=0.1,
    per_hour=(2.0, 4.0),
    shape="peak",
    tail_Bps=(20_000, 40_000),
    source="assumed: no deliberate HomePod command in the captures; Dubois et al. threshold "
    "76,366 B/s for HomePod activations",
)
HOMEPOD_MISACTIVATION = UploadProfile(
    transport="tcp",
    endpoints=("guzzoni.apple.com",),
    rate_Bps=(15_000, 18_000),
    duration_s=(5.0, 8.0),
    frame_sizes=(353, 339, 314, 289, 199, 186, 175, 157, 151, 1514),
    answer_bytes=(4_000, 12_000),
    per_hour=(1.5, 3.0),
    shape="peak",
    tail_Bps=(5_500, 7_000),
    source="homepod_FNT_S3E10 labelled windows: peak 13-15 KB frame bytes (15-18 KB/s per README) "
    "then 5.7-6.6 KB/s for 5 s, 150-350 B records plus a few 1514s, to 17.174.1.5",
)
HOMEPOD_SESSION = BurstProfile(
    name="siri-session",
    endpoint="guzzoni.apple.com",
    transport="tcp",
    up_bytes=(6_000, 10_000),
    seconds=(2.0, 6.0),
    down_bytes=(4_000, 8_000),
    per_hour=(40.0, 80.0),
    new_connection=True,
    source="homepod_FNT_S3E10: a new guzzoni connection every 30-200 s, 3.8 KB in its first second",
)
HOMEPOD_BLIP = BurstProfile(
    name="blip",
    endpoint="guzzoni.apple.com",
    transport="tcp",
    up_bytes=(8_000, 12_000),
    seconds=(0.5, 1.0),
    down_bytes=(2_000, 5_000),
    per_hour=(1.0, 2.0),
    new_connection=True,
    source="homepod_FNT_S3E10: unlabelled 11.7 KB one-second burst (not an upload)",
)
HOMEPOD_FIRMWARE = BurstProfile(
    name="firmware-check",
    endpoint="mesu.apple.com",
    transport="tcp",
    up_bytes=(1_000, 2_500),
    seconds=(0.3, 1.0),
    down_bytes=(5_000, 30_000),
    per_hour=(0.5, 1.0),
    new_connection=True,
    source="homepod_FNT_S3E10 looks up mesu.apple.com",
)
HOMEPOD = SpeakerModel(
    key="homepod",
    label_model="Apple HomePod 1st gen (simulated)",
    vendor="Apple",
    assistant="siri",
    ouis=("d4:a3:3d", "f0:18:98"),
    hostname="HomePod",
    vendor_class="",
    persistent="gateway.icloud.com",
    heartbeat_s=(60.0, 180.0),
    upload=HOMEPOD_VOICE,
    misactivation=HOMEPOD_MISACTIVATION,
    bursts=(HOMEPOD_SESSION, HOMEPOD_BLIP, HOMEPOD_FIRMWARE),
    ntp_server="time-ios.apple.com",
    mdns="airplay",
    source="homepod_FNT_S3E10",
)

SONOS_METRICS = BurstProfile(
    name="metrics",
    endpoint="msmetrics.ws.sonos.com",
    transport="tcp",
    up_bytes=(1_500, 4_000),
    seconds=(0.3, 1.0),
    down_bytes=(500, 1_200),
    per_hour=(4.0, 8.0),
    new_connection=True,
    source="assumed",
)
SONOS_ONE = SpeakerModel(
    key="sonos_one",
    label_model="Sonos One (simulated)",
    vendor="Sonos",
    assistant="alexa",
    ouis=("48:a6:b8", "5c:aa:fd", "94:9f:3e"),
    hostname="SonosZP",
    vendor_class="",
    persistent="api.ws.sonos.com",
    heartbeat_s=(30.0, 90.0),
    upload=None,
    bursts=(SONOS_METRICS,),
    mdns="sonos",
    ssdp=True,
    music=True,
    source="cic_sonosone_*: music start up to 22 KB/s upstream (ACKs, event posts); streaming "
    "~190 KB downstream every 3 s with ~5 KB of ACKs",
)

# Music on the Sonos (measured from cic_sonosone_ALEXA_PLAY_*).
SONOS_MUSIC_START_Bps: Range = (15_000, 22_000)
SONOS_CHUNK_BYTES: Range = (180_000, 250_000)
SONOS_CHUNK_EVERY_S: Range = (2.7, 3.3)
SONOS_SESSIONS_PER_HOUR: Range = (1.0, 2.0)
SONOS_SESSION_S: Range = (120.0, 600.0)

# Background shared by every device.
DHCP_SPREAD_S = 20.0
NTP_EVERY_S: Range = (600.0, 1200.0)
MDNS_EVERY_S: Range = (60.0, 240.0)
SSDP_EVERY_S: Range = (30.0, 90.0)
ARP_EVERY_S: Range = (60.0, 300.0)

SPEAKERS: dict[str, SpeakerModel] = {
    m.key: m for m in (ECHO_DOT, NEST_MINI, HOMEPOD, SONOS_ONE, ECHO_STUDIO, ECHO_SPOT)
}
# Which models fill the speaker slots, in order (all four vendors first).
SPEAKER_ORDER = ("echo_dot", "nest_mini", "homepod", "sonos_one", "echo_studio", "echo_spot")

_WEB = (
    "www.wikipedia.org",
    "www.bbc.co.uk",
    "github.com",
    "news.ycombinator.com",
    "www.youtube.com",
    "www.reddit.com",
)

OTHERS: dict[str, OtherModel] = {
    "tv": OtherModel(
        key="tv",
        vendor="LG",
        kind="tv",
        ouis=("a8:23:fe",),
        hostname="LGwebOSTV",
        vendor_class="",
        persistent="lgtvsdp.com",
        heartbeat_s=(60.0, 180.0),
        web_sites=("api-global.netflix.com",),
        web_sessions_per_hour=(2.0, 4.0),
        web_bytes=(10_000, 60_000),
        video=True,
        video_kbps=(600.0, 1_200.0),
        ssdp=True,
    ),
    "iphone": OtherModel(
        key="iphone",
        vendor="Apple",
        kind="phone",
        ouis=("3c:22:fb", "f0:18:98"),
        hostname="iPhone",
        vendor_class="",
        persistent="gateway.icloud.com",
        heartbeat_s=(120.0, 300.0),
        web_sites=_WEB,
        web_sessions_per_hour=(10.0, 20.0),
        ntp_server="time.apple.com",
        mdns="",
    ),
    "laptop": OtherModel(
        key="laptop",
        vendor="Intel",
        kind="laptop",
        ouis=("3c:a9:f4",),
        hostname="laptop",
        vendor_class="",
        persistent=None,
        heartbeat_s=(300.0, 600.0),
        web_sites=(*_WEB, "detectportal.firefox.com"),
        web_sessions_per_hour=(15.0, 30.0),
        web_bytes=(30_000, 600_000),
    ),
    "plug": OtherModel(
        key="plug",
        vendor="TP-Link",
        kind="plug",
        ouis=("b0:be:76", "50:c7:bf"),
        hostname="HS100",
        vendor_class="",
        persistent="n-devs.tplinkcloud.com",
        heartbeat_s=(55.0, 65.0),
    ),
    "android": OtherModel(
        key="android",
        vendor="Samsung",
        kind="phone",
        ouis=("8c:77:12", "f4:7b:5e"),
        hostname="Galaxy-S21",
        vendor_class="android-dhcp-13",
        persistent="mtalk.google.com",
        heartbeat_s=(120.0, 300.0),
        web_sites=(*_WEB, "connectivitycheck.gstatic.com"),
        web_sessions_per_hour=(8.0, 16.0),
        ntp_server="time.google.com",
    ),
}
OTHER_ORDER = ("tv", "iphone", "laptop", "plug", "android")

ROUTER_MAC = "04:d4:c4:3a:7e:01"  # ASUSTek OUI
ROUTER_IP = "192.168.1.1"
LAN_PREFIX = "192.168.1."

# Rough packets per second of one device of each kind, to size a household for target_packets
# (measured on seed 1 households; the exact count is reached by cutting the capture).
EST_PPS: dict[str, float] = {
    "echo_dot": 1.0,
    "nest_mini": 1.0,
    "homepod": 1.2,
    "sonos_one": 30.0,
    "echo_studio": 1.0,
    "echo_spot": 1.0,
    "tv": 120.0,
    "iphone": 6.0,
    "laptop": 12.0,
    "plug": 0.1,
    "android": 5.0,
}
