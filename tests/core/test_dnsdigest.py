"""DNS answers summed up per batch (core.dnsdigest) say what the answers say one by one.

The reference is the same pipeline fed one packet per batch: each digest then holds a single
answer, applied in packet order. Fed in one or a few batches, the names learned, the best name
of every address, what the devices are taken for (evidence in the same order) and the counts
and faults must come out the same. The packets mix repeated and new answers (ids and TTLs
vary, as a resolver's do), CNAME chains, addresses shared between names, names that identify
a device and names that do not, queries sent from port 53, malformed answers, TLS ClientHellos
whose SNI competes with the DNS names, and times that step back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spyglass.adapters.oui import vendor_for_mac
from spyglass.core.capfile import open_capture
from spyglass.core.decode import decode
from spyglass.core.dnsdigest import DnsDigester
from spyglass.core.frames import LINKTYPE_ETHERNET, FrameBatch
from spyglass.core.pipeline import Pipeline
from spyglass.core.proto.dns import parse_dns, resolve_chain
from spyglass.core.slowpath import dns_rows, select_rows
from spyglass.sim import craft
from spyglass.sim.household import simulate_household
from tests.benchmarks.dnsmix import mix

ROUTER_MAC, ROUTER_IP = craft.mac("c0:ff:ee:00:00:01"), craft.ip4("192.168.1.1")
DEVICES = [(craft.mac(f"44:65:0d:00:00:0{i}"), craft.ip4(f"192.168.1.{20 + i}")) for i in range(3)]
REMOTES = ["52.94.233.109", "52.94.233.110", "17.174.1.5", "8.8.4.4"]
# (question, CNAME chain, addresses): some names identify a device, most do not, and some
# addresses are shared between names.
ANSWERS = [
    ("avs-alexa-14-na.amazon.com", ["pitangui.amazon.com"], REMOTES[:2]),
    ("www.example.com", [], [REMOTES[0]]),
    ("guzzoni.apple.com", ["origin.guzzoni-apple.com.akadns.net"], [REMOTES[2]]),
    ("cdn.example.net", ["edge.example.net"], REMOTES[1:3]),
    ("embeddedassistant.googleapis.com", [], [REMOTES[3], REMOTES[0]]),
    ("ntp.example.org", [], []),  # an answer without addresses
]
SNIS = ["avs-alexa-14-na.amazon.com", "www.example.com", "guzzoni.apple.com"]

# (kind, device, answer or name, variant, time step): "dns" an answer (variant: its id and TTL),
# "query" a question sent from port 53, "bad" an answer cut short, "sni" a ClientHello.
Packet = tuple[str, int, int, int, int]
_packet = st.tuples(
    st.sampled_from(["dns", "dns", "dns", "query", "bad", "sni"]),
    st.integers(0, len(DEVICES) - 1),
    st.integers(0, len(ANSWERS) - 1),
    st.integers(0, 3),
    st.integers(-3, 10),
)


def _frame(kind: str, dev: int, which: int, variant: int) -> bytes:
    mac, ip = DEVICES[dev]
    if kind == "sni":
        name = SNIS[which % len(SNIS)]
        hello = craft.tls_client_hello(name, bytes(32))
        remote = craft.ip4(REMOTES[which % len(REMOTES)])
        seg = craft.tcp(40000 + dev, 443, 1, 1, 0x18, hello)
        return craft.ethernet(ROUTER_MAC, mac, 0x0800, craft.ipv4(ip, remote, 6, seg))
    qname, cnames, addrs = ANSWERS[which]
    if kind == "query":
        payload = craft.dns_query(variant, qname)
    else:
        payload = craft.dns_response(
            variant * 7, qname, cnames=cnames, addrs=addrs, ttl=60 + variant
        )
        if kind == "bad":
            payload = payload[: len(payload) - 3]
    seg = craft.udp(53, 50000 + dev, payload)
    return craft.ethernet(mac, ROUTER_MAC, 0x0800, craft.ipv4(ROUTER_IP, ip, 17, seg))


def _batch(frames: list[bytes], times: list[float]) -> FrameBatch:
    cap = np.array([len(f) for f in frames], np.int32)
    off = np.zeros(len(frames), np.int64)
    if len(frames) > 1:
        np.cumsum(cap[:-1], out=off[1:])
    lt = np.full(len(frames), LINKTYPE_ETHERNET, np.uint16)
    return FrameBatch(b"".join(frames), off, cap, cap.copy(), np.array(times), lt)


def _fed(frames: list[bytes], times: list[float], cuts: list[int]) -> Pipeline:
    pipe = Pipeline(vendor_lookup=vendor_for_mac)
    bounds = [0, *cuts, len(frames)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b > a:
            pipe.feed(_batch(frames[a:b], times[a:b]))
    pipe.flush()
    return pipe


def _said(pipe: Pipeline) -> tuple[object, ...]:
    book = pipe.names.entries()  # all of them, the addresses never contacted too
    names = sorted(  # entries learned at the same time come in either order
        (e.device_mac, e.ip, e.name, e.source, e.first_seen, e.last_seen) for e in book
    )
    # Every address named for any device, asked of every device.
    macs = sorted({e.device_mac for e in book} | {m.hex(":") for m, _ in DEVICES})
    ips = sorted({e.ip for e in book} | set(REMOTES))
    best = [pipe.names.name_for(m, ip) for m in macs for ip in ips]
    devices = [
        (d.mac, d.kind, d.model, d.assistant, d.evidence, d.first_seen, d.last_seen)
        for d in sorted(pipe.devices(), key=lambda d: d.mac)  # equal times: either order
    ]
    st_ = pipe.slow.stats
    return names, best, devices, st_.parsed, st_.malformed, sorted(st_.samples)


@settings(max_examples=150, deadline=None)
@given(
    packets=st.lists(_packet, min_size=1, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=3),
)
def test_a_batch_says_what_its_answers_say_one_by_one(
    packets: list[Packet], cuts: list[int]
) -> None:
    frames = [_frame(k, d, w, v) for k, d, w, v, _ in packets]
    times, t = [], 1_700_000_000.0
    for *_, step in packets:
        t += step / 4
        times.append(t)
    one_by_one = _fed(frames, times, list(range(1, len(frames))))
    batched = _fed(frames, times, sorted(cuts))
    assert _said(batched) == _said(one_by_one)


def test_digest_groups_repeats_and_keeps_row_order() -> None:
    """Five answers of two shapes (ids and TTLs differ) to one device make two groups, listed
    by their last answer; the device's first answer and its one identifying question are
    events at their rows."""
    order = [(0, 1), (1, 1), (0, 2), (0, 3), (1, 2)]  # (answer, variant)
    frames = [_frame("dns", 0, a, v) for a, v in order]
    batch = _batch(frames, [10.0, 11.0, 9.0, 12.0, 13.0])
    d = decode(batch)
    rows = select_rows(d, np.frombuffer(batch.buf, np.uint8), np.zeros(len(d), np.bool_))
    dg = DnsDigester().digest(d, batch, rows[dns_rows(d, rows)])
    assert dg.parsed == 5 and dg.malformed == []
    mac = int.from_bytes(DEVICES[0][0])
    assert dg.macs == [mac, mac]
    answer = [craft.dns_response(0, q, cnames=c, addrs=a) for q, c, a in ANSWERS[:2]]
    assert dg.pairs == [tuple(resolve_chain(parse_dns(p))) for p in answer]
    assert (dg.first, dg.last) == ([9.0, 11.0], [12.0, 13.0])
    assert dg.events == [
        (0, mac, None, 9.0, 13.0),
        (0, mac, "avs-alexa-14-na.amazon.com", 10.0, 10.0),
    ]


def test_a_dns_heavy_household_in_small_batches_and_in_one(tmp_path: Path) -> None:
    """The simulated household with a fifth of its packets DNS lookups (the speed benchmark's
    mix: hundreds of names, shared addresses), in 64 KiB batches and in one batch."""
    plain, path = tmp_path / "h.pcap", tmp_path / "dns.pcap"
    simulate_household(plain, duration_s=120, seed=3)
    mix(plain, path, 0.2)
    small = Pipeline(vendor_lookup=vendor_for_mac)
    for b in open_capture(path, chunk_bytes=1 << 16):
        small.feed(b)
    small.flush()
    big = Pipeline(vendor_lookup=vendor_for_mac)
    for b in open_capture(path, chunk_bytes=1 << 30):
        big.feed(b)
    big.flush()
    assert small.slow.stats.parsed.get("dns", 0) > 200
    assert _said(small) == _said(big)


@pytest.mark.parametrize("name", ["homepod_FNT_S3E10.pcap", "sean_kennedy__alexa_5_40s.pcap"])
def test_real_captures_one_packet_per_batch(captures: Path, name: str) -> None:
    path = captures / name
    one = Pipeline(vendor_lookup=vendor_for_mac)
    for b in open_capture(path):
        for i in range(len(b)):
            sl = slice(i, i + 1)
            one.feed(FrameBatch(b.buf, b.offset[sl], b.caplen[sl], b.wirelen[sl], b.ts[sl],
                                b.linktype[sl]))
    one.flush()
    whole = Pipeline(vendor_lookup=vendor_for_mac)
    for b in open_capture(path):
        whole.feed(b)
    whole.flush()
    assert whole.slow.stats.parsed.get("dns", 0) > 0
    assert _said(whole)[:4] == _said(one)[:4]


def test_names_of_addresses_never_contacted_stay_out_of_the_endpoints() -> None:
    """A device resolves two addresses and talks to one: only that one's names are endpoint
    names (and changed names, for the agent's writes); the other's wait in the book until the
    device talks to it."""
    mac, ip = DEVICES[0]
    dev = mac.hex(":")
    qname, cnames, (used, unused) = ANSWERS[0]

    def to(remote: str) -> bytes:
        seg = craft.tcp(40000, 443, 1, 1, 0x18, b"x" * 200)
        return craft.ethernet(ROUTER_MAC, mac, 0x0800, craft.ipv4(ip, craft.ip4(remote), 6, seg))

    pipe = Pipeline(vendor_lookup=vendor_for_mac)
    pipe.feed(_batch([_frame("dns", 0, 0, 0), to(used)], [100.0, 101.0]))
    assert {(e.ip, e.name) for e in pipe.names.entries()} == {
        (a, n) for a in (used, unused) for n in (qname, *cnames)
    }
    want = {(dev, used, n) for n in (qname, *cnames)}
    assert {(e.device_mac, e.ip, e.name) for e in pipe.endpoint_names()} == want
    assert {(e.device_mac, e.ip, e.name) for e in pipe.changed_names()} == want
    assert pipe.changed_names() == []
    pipe.feed(_batch([to(unused)], [105.0]))  # now it talks to the other address too
    changed = pipe.changed_names()
    assert {(e.ip, e.name) for e in changed} == {(unused, n) for n in (qname, *cnames)}
    assert all(e.first_seen == e.last_seen == 100.0 for e in changed)
    assert len(pipe.endpoint_names()) == len(pipe.names.entries())
