"""The vectorized decoder against scapy's dissection, malformed frames, and the real captures."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Packet, Raw

from spyglass.core.capfile import open_capture
from spyglass.core.decode import decode, ip_key, ip_str, is_v4_mapped, mac_str
from spyglass.core.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    Decoded,
    FrameBatch,
)
from tests.core.test_capfile import ng_epb, ng_idb, ng_shb

A = "68:db:f5:c1:c0:01"
B = "00:11:22:33:44:55"
SLL_ADDR = bytes.fromhex("68dbf5c1c0010000")
V6A, V6B = "2001:db8::1", "fe80::1c2:3ff:fe04:506"
LOAD = bytes(range(256)) * 2


@dataclass
class Case:
    name: str
    linktype: int
    pkt: Packet
    snap: int | None = None  # captured bytes, when the capture cut the frame


def cases() -> list[Case]:
    eth = Ether(src=A, dst=B)
    tcp = TCP(sport=51234, dport=443, flags="PA", options=[("NOP", None), ("NOP", None)])
    return [
        Case("eth-ip-tcp", 1, eth / IP(src="192.168.1.20", dst="52.1.2.3") / tcp / LOAD[:300]),
        Case("eth-ip-opts", 1, eth / IP(options=b"\x94\x04\x00\x00") / TCP(flags="S") / b"x"),
        Case("eth-udp-pad", 1, eth / IP(dst="8.8.8.8") / UDP(sport=5353, dport=53) / b"q"),
        Case("eth-icmp", 1, eth / IP() / ICMP() / LOAD[:56]),
        Case("eth-arp", 1, eth / ARP(psrc="192.168.1.20", pdst="192.168.1.1")),
        Case("dot1q", 1, eth / Dot1Q(vlan=42) / IP() / UDP(dport=123) / LOAD[:48]),
        Case("qinq", 1, eth / Dot1AD(vlan=7) / Dot1Q(vlan=99) / IPv6(src=V6A) / TCP() / b"hi"),
        Case("ip-frag-first", 1, eth / IP(flags="MF", frag=0) / UDP(dport=9) / LOAD[:100]),
        Case("ip-frag-later", 1, eth / IP(proto=17, frag=25) / LOAD[:80]),
        Case("v6-tcp", 1, eth / IPv6(src=V6A, dst=V6B) / TCP(dport=8009) / LOAD[:120]),
        Case(
            "v6-ext",
            1,
            eth
            / IPv6(src=V6B, dst=V6A)
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrRouting()
            / IPv6ExtHdrDestOpt()
            / UDP(sport=1, dport=2)
            / LOAD[:20],
        ),
        Case("v6-frag-first", 1, eth / IPv6() / IPv6ExtHdrFragment(m=1) / UDP() / LOAD[:64]),
        Case("v6-frag-later", 1, eth / IPv6() / IPv6ExtHdrFragment(offset=9, nh=17) / LOAD[:64]),
        Case("v6-ah", 1, eth / IPv6() / AH(nh=6, payloadlen=4, icv=b"\x01" * 12) / TCP() / b"ah"),
        Case("v6-icmp", 1, eth / IPv6() / ICMPv6EchoRequest(data=LOAD[:32])),
        Case("snaplen-cut", 1, eth / IP() / TCP() / LOAD[:400], snap=96),
        Case("sll", 113, CookedLinux(lladdrlen=6, src=SLL_ADDR) / IP() / UDP() / b"abc"),
        Case("sll2", 276, CookedLinuxV2(lladdrlen=6, src=SLL_ADDR) / IPv6() / TCP() / b"z"),
        Case("raw-v4", LINKTYPE_RAW, IP(src="10.0.0.1") / TCP(dport=22) / b"ssh"),
        Case("raw-v6", LINKTYPE_RAW, IPv6() / UDP() / b"u"),
        Case("ipv4-link", LINKTYPE_IPV4, IP() / UDP() / b"u4"),
        Case("ipv6-link", LINKTYPE_IPV6, IPv6() / UDP() / b"u6"),
        Case("null-v4", LINKTYPE_NULL, Loopback(type=2) / IP() / TCP() / b"lo"),
        Case("null-v6", LINKTYPE_NULL, Loopback(type=10) / IPv6() / UDP() / b"lo6"),
    ]


def dissect(linktype: int, data: bytes) -> Packet:
    first = {
        LINKTYPE_ETHERNET: Ether,
        LINKTYPE_LINUX_SLL: CookedLinux,
        LINKTYPE_LINUX_SLL2: CookedLinuxV2,
        LINKTYPE_NULL: Loopback,
        LINKTYPE_IPV4: IP,
        LINKTYPE_IPV6: IPv6,
    }.get(linktype)
    if first is None:
        first = IP if data[0] >> 4 == 4 else IPv6
    pkt: Packet = first(data)
    return pkt


def expected(linktype: int, data: bytes) -> dict[str, Any]:
    """The fields as scapy dissects them (on the full frame)."""
    pkt = dissect(linktype, data)
    exp: dict[str, Any] = dict.fromkeys(
        ["src_mac", "dst_mac", "vlan", "ipver", "proto", "sport", "dport", "tcp_flags"], 0
    )
    if Ether in pkt:
        exp["src_mac"] = int(pkt[Ether].src.replace(":", ""), 16)
        exp["dst_mac"] = int(pkt[Ether].dst.replace(":", ""), 16)
        exp["ethertype"] = pkt[Ether].type
    for cooked in (CookedLinux, CookedLinuxV2):
        if cooked in pkt:
            exp["src_mac"] = int.from_bytes(bytes(pkt[cooked].src)[:6], "big")
            exp["ethertype"] = pkt[cooked].proto
    for tag in (Dot1AD, Dot1Q):
        if tag in pkt:
            exp["vlan"] = pkt[tag].vlan
            break
    if Dot1Q in pkt:
        exp["ethertype"] = pkt[Dot1Q].type
    ip: Any = None
    if IP in pkt:
        ip = pkt[IP]
        exp.update(ipver=4, proto=ip.proto, src=ip_key(ip.src), dst=ip_key(ip.dst))
        exp["ethertype"] = 0x0800
        l4len = ip.len - ip.ihl * 4
        later = ip.frag != 0
    elif IPv6 in pkt:
        ip = pkt[IPv6]
        exp.update(ipver=6, src=ip_key(ip.src), dst=ip_key(ip.dst))
        exp["ethertype"] = 0x86DD
        layer, l4len, nh, later = ip.payload, ip.plen, ip.nh, False
        while nh in (0, 43, 44, 60, 51):
            size = len(layer) - len(layer.payload)
            if isinstance(layer, IPv6ExtHdrFragment):
                size = 8
                later = layer.offset != 0
            nh, l4len, layer = layer.nh, l4len - size, layer.payload
            if later:
                break
        exp["proto"] = nh
        # scapy leaves what follows AH undissected: dissect it as the AH header says.
        if not later and nh in (6, 17) and not isinstance(layer, (TCP, UDP)):
            pkt = (TCP if nh == 6 else UDP)(bytes(layer))
    elif ARP in pkt:
        exp["ethertype"] = 0x0806
    if ip is None:
        exp["payload_len"] = 0
        return exp
    if TCP in pkt and not later:
        t = pkt[TCP]
        exp.update(sport=t.sport, dport=t.dport, tcp_flags=int(t.flags))
        exp["payload_len"] = l4len - t.dataofs * 4
    elif UDP in pkt and not later:
        exp.update(sport=pkt[UDP].sport, dport=pkt[UDP].dport)
        exp["payload_len"] = pkt[UDP].len - 8
    elif exp["proto"] in (1, 58) and not later:
        exp["payload_len"] = l4len - 8
    else:
        exp["payload_len"] = l4len
    return exp


def decode_frames(
    tmp_path: Path, frames: list[tuple[int, bytes, int]]
) -> tuple[Decoded, FrameBatch]:
    """Write (linktype, frame, wirelen) rows as one pcapng (an interface per linktype); decode."""
    links = sorted({lt for lt, _, _ in frames})
    parts = [ng_shb()] + [ng_idb(lt) for lt in links]
    for i, (lt, frame, wire) in enumerate(frames):
        parts.append(ng_epb(links.index(lt), 1_000_000 * (i + 1), frame, wire=wire))
    path = tmp_path / "cases.pcapng"
    path.write_bytes(b"".join(parts))
    reader = open_capture(path)
    (batch,) = list(reader)
    assert reader.report.problems == []
    return decode(batch), batch


def test_decode_matches_scapy(tmp_path: Path) -> None:
    all_cases = cases()
    rows = []
    for case in all_cases:
        data = bytes(case.pkt)
        if case.linktype == LINKTYPE_ETHERNET and len(data) < 60:
            data += bytes(60 - len(data))  # Ethernet padding: must not count as payload
        rows.append((case.linktype, data[: case.snap] if case.snap else data, len(data)))
    d, batch = decode_frames(tmp_path, rows)
    assert not d.malformed.any(), [c.name for c, m in zip(all_cases, d.malformed, strict=True) if m]
    for i, (case, (lt, _, _)) in enumerate(zip(all_cases, rows, strict=True)):
        full = bytes(case.pkt)
        exp = expected(lt, full)
        got: dict[str, Any] = {
            "src_mac": int(d.src_mac[i]),
            "dst_mac": int(d.dst_mac[i]),
            "vlan": int(d.vlan[i]),
            "ipver": int(d.ipver[i]),
            "proto": int(d.proto[i]),
            "sport": int(d.sport[i]),
            "dport": int(d.dport[i]),
            "tcp_flags": int(d.tcp_flags[i]),
            "payload_len": int(d.payload_len[i]),
            "ethertype": int(d.ethertype[i]),
        }
        if exp["ipver"]:
            got["src"] = (int(d.src_hi[i]), int(d.src_lo[i]))
            got["dst"] = (int(d.dst_hi[i]), int(d.dst_lo[i]))
        assert got == exp, case.name
        # The payload window: inside the frame, the declared bytes, cut only by the snaplen.
        start = int(d.payload_off[i]) - int(batch.offset[i])
        cap, plen = int(d.payload_cap[i]), int(d.payload_len[i])
        assert 0 <= cap <= plen and start + cap <= int(batch.caplen[i])
        frame_at = full[start : start + plen]
        assert len(frame_at) == plen, case.name
        if case.snap is None:
            assert cap == plen, case.name
        else:
            assert cap == case.snap - start
        if plen and Raw in case.pkt and not isinstance(case.pkt.lastlayer(), ICMPv6EchoRequest):
            assert frame_at == case.pkt[Raw].load[:plen] or case.name.startswith("v6-frag")
    assert (d.ts == batch.ts).all() and (d.wirelen == batch.wirelen).all()


def _ip_tcp(load: int = 40) -> bytes:
    return bytes(Ether(src=A, dst=B) / IP(src="1.2.3.4", dst="5.6.7.8") / TCP() / LOAD[:load])


def _patch(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


@pytest.mark.parametrize(
    ("name", "linktype", "frame", "keeps_ip"),
    [
        ("ihl<5", 1, _patch(_ip_tcp(), 14, b"\x44"), False),
        ("ip version 5", 1, _patch(_ip_tcp(), 14, b"\x55"), False),
        ("total<header", 1, _patch(_ip_tcp(), 16, b"\x00\x0a"), False),
        ("total>frame", 1, _patch(_ip_tcp(), 16, b"\x05\xdc"), False),
        ("tcp doff<5", 1, _patch(_ip_tcp(), 14 + 20 + 12, b"\x30"), True),
        ("tcp doff>len", 1, _patch(_ip_tcp(8), 14 + 20 + 12, b"\xf0"), True),
        ("cut in tcp", 1, _ip_tcp()[: 14 + 20 + 10], True),
        ("cut in ip", 1, _ip_tcp()[: 14 + 12], False),
        ("cut in eth", 1, _ip_tcp()[:9], False),
        ("cut in vlan", 1, bytes(Ether() / Dot1Q(vlan=5) / IP())[:16], False),
        (
            "udp len<8",
            1,
            _patch(bytes(Ether() / IP() / UDP() / b"abcd"), 14 + 20 + 4, b"\x00\x03"),
            True,
        ),
        ("unknown link", 147, _ip_tcp(), False),
        ("raw not ip", LINKTYPE_RAW, b"\x00" * 40, False),
        ("v6 cut", 1, bytes(Ether() / IPv6() / TCP())[: 14 + 30], False),
        ("v6 ext cut", 1, bytes(Ether() / IPv6() / IPv6ExtHdrDestOpt() / UDP())[: 14 + 44], True),
    ],
)
def test_malformed(tmp_path: Path, name: str, linktype: int, frame: bytes, keeps_ip: bool) -> None:
    good = _ip_tcp()
    wire = 1514 if name.startswith(("cut", "v6")) else len(frame)  # the capture cut these
    d, _ = decode_frames(tmp_path, [(1, good, len(good)), (linktype, frame, wire)])
    assert not d.malformed[0] and d.sport[0] == 20 and d.payload_len[0] == 40
    assert d.malformed[1], name
    assert (d.ipver[1] != 0) == keeps_ip, name
    assert d.sport[1] == d.dport[1] == d.tcp_flags[1] == 0
    assert d.payload_len[1] == d.payload_cap[1] == d.payload_off[1] == 0


def _alone_and_amid(frames: list[tuple[int, bytes, int]]) -> None:
    """Every frame decodes to the same fields in the batch as in a batch of its own."""
    buf = b"".join(f for _, f, _ in frames)
    cap = np.array([len(f) for _, f, _ in frames], np.int32)
    off = np.zeros(len(frames), np.int64)
    np.cumsum(cap[:-1], out=off[1:])
    ts = np.arange(len(frames), dtype=np.float64)
    lts = np.array([lt for lt, _, _ in frames], np.uint16)
    wire = np.array([w for _, _, w in frames], np.int32)
    d = decode(FrameBatch(buf, off, cap, wire, ts, lts))
    for i, (_, frame, _) in enumerate(frames):
        one = FrameBatch(frame, np.zeros(1, np.int64), cap[i : i + 1], wire[i : i + 1],
                         ts[i : i + 1], lts[i : i + 1])
        alone = decode(one)
        for name in alone.__slots__:
            got, want = getattr(d, name)[i], getattr(alone, name)[0]
            if name == "payload_off" and want:
                want += off[i]
            assert got == want, (i, name)


def test_a_frame_decodes_the_same_amid_any_batch() -> None:
    """Batches that are nearly all plain IPv4 (decoded as all rows plus a mask), all of it (no
    mask) or a mix (row indices), with every case and malformed frame in between."""
    plain = [(1, _ip_tcp(n), 14 + 20 + 20 + n) for n in (0, 40, 200)]
    plain.append((1, bytes(Ether(src=B, dst=A) / IP() / UDP(sport=53) / LOAD[:80]), 14 + 28 + 80))
    others = [(c.linktype, bytes(c.pkt)[: c.snap], len(bytes(c.pkt))) for c in cases()]
    others += [(1, _patch(_ip_tcp(), 14, b"\x44"), 94), (1, _patch(_ip_tcp(), 46, b"\x30"), 94),
               (1, _ip_tcp()[:44], 1514), (1, _patch(_ip_tcp(), 16, b"\x00\x00"), 94)]
    _alone_and_amid(plain * 3)
    for k, extra in enumerate(others):
        _alone_and_amid(plain * 2 + [extra] + plain[k % 4 :])  # >= 75 % plain IPv4
    _alone_and_amid(plain + others)


@pytest.mark.parametrize("family", [b"\x18\x00\x00\x00", b"\x00\x00\x00\x1c", b"\x1e\x00\x00\x00"])
def test_bsd_loopback_ipv6_families(tmp_path: Path, family: bytes) -> None:
    frame = family + bytes(IPv6(src=V6A) / UDP(dport=5) / b"x")
    d, _ = decode_frames(tmp_path, [(LINKTYPE_NULL, frame, len(frame))])
    assert d.ipver[0] == 6 and d.dport[0] == 5 and not d.malformed[0]
    assert ip_str(int(d.src_hi[0]), int(d.src_lo[0])) == V6A


def test_arp_is_not_malformed(tmp_path: Path) -> None:
    arp = bytes(Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP())
    d, _ = decode_frames(tmp_path, [(1, arp, len(arp))])
    assert d.ethertype[0] == 0x0806 and d.ipver[0] == 0 and not d.malformed[0]
    assert mac_str(int(d.src_mac[0])) == A and d.dst_mac[0] == 0xFFFFFFFFFFFF


def test_frame_at_very_end_of_buffer() -> None:
    frame = bytes(Ether(src=A, dst=B) / IP() / UDP(sport=1, dport=2) / b"xy")
    buf = bytes(7) + frame
    batch = FrameBatch(
        buf,
        np.array([7], np.int64),
        np.array([len(frame)], np.int32),
        np.array([len(frame)], np.int32),
        np.zeros(1),
        np.array([1], np.uint16),
    )
    d = decode(batch)
    assert not d.malformed[0] and d.dport[0] == 2 and d.payload_len[0] == 2
    assert buf[int(d.payload_off[0]) :] == b"xy"


def test_empty_batch() -> None:
    z = np.zeros(0, np.int64)
    i32 = z.astype(np.int32)
    batch = FrameBatch(b"", z, i32, i32, np.zeros(0), z.astype(np.uint16))
    assert len(decode(batch)) == 0


def test_helpers() -> None:
    assert mac_str(0x68DBF5C1C001) == "68:db:f5:c1:c0:01"
    assert ip_key("192.168.1.2") == (0, 0xFFFF_C0A8_0102)
    assert ip_str(*ip_key("192.168.1.2")) == "192.168.1.2"
    assert ip_str(*ip_key(V6B)) == V6B
    assert ip_str(*ip_key("::ffff:10.0.0.1")) == "10.0.0.1"
    hi = np.array([0, 0x20010DB8 << 32], np.uint64)
    lo = np.array([0xFFFF_0A00_0001, 1], np.uint64)
    assert is_v4_mapped(hi, lo).tolist() == [True, False]


# ---- real captures against tshark ----------------------------------------------------------


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize(
    "name",
    ["echodot3a_active.pcap", "cic_nestmini_VOICE_VOLUMEON_1.pcap", "homepod_FNT_S3E10.pcap"],
)
def test_real_capture_fields_match_tshark(captures: Path, name: str) -> None:
    fields = ["eth.src", "ip.src", "ip.dst", "ipv6.src", "ip.proto", "tcp.srcport", "tcp.dstport"]
    fields += ["udp.srcport", "udp.dstport", "tcp.len", "udp.length", "vlan.id"]
    cmd = ["tshark", "-r", str(captures / name), "-T", "fields", "-E", "separator=|"]
    out = subprocess.run(
        cmd + [x for f in fields for x in ("-e", f)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.splitlines()
    reader = open_capture(captures / name)
    decoded = [decode(b) for b in reader]
    d = {
        k: np.concatenate([getattr(x, k) for x in decoded])
        for k in ("src_mac", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto")
        + ("payload_len", "ipver", "malformed", "vlan")
    }
    assert len(out) == len(d["ipver"])
    for i, line in enumerate(out):
        v = dict(zip(fields, line.split("|"), strict=True))
        first = {k: s.split(",")[0] for k, s in v.items()}  # tunnelled packets: outer header
        assert mac_str(int(d["src_mac"][i])) == first["eth.src"], i
        if first["ip.src"]:
            assert ip_str(int(d["src_hi"][i]), int(d["src_lo"][i])) == first["ip.src"], i
            assert ip_str(int(d["dst_hi"][i]), int(d["dst_lo"][i])) == first["ip.dst"], i
            assert int(d["proto"][i]) == int(first["ip.proto"]), i
        elif first["ipv6.src"]:
            assert ip_str(int(d["src_hi"][i]), int(d["src_lo"][i])) == first["ipv6.src"], i
        else:
            assert d["ipver"][i] == 0, i
        if first["ip.proto"] in ("1", "58") or "," in v["tcp.srcport"] + v["udp.srcport"]:
            continue  # ICMP errors quote a TCP/UDP header, which tshark lists
        if first["tcp.srcport"]:
            assert (d["sport"][i], d["dport"][i]) == (
                int(first["tcp.srcport"]),
                int(first["tcp.dstport"]),
            ), i
            assert d["payload_len"][i] == int(first["tcp.len"]), i
        elif first["udp.srcport"]:
            assert (d["sport"][i], d["dport"][i]) == (
                int(first["udp.srcport"]),
                int(first["udp.dstport"]),
            ), i
            assert d["payload_len"][i] == int(first["udp.length"]) - 8, i
        assert d["vlan"][i] == int(first["vlan.id"] or 0), i
    assert not d["malformed"].any()
