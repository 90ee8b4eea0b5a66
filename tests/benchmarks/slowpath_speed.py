"""Slow-path parse cost in µs per payload (not collected by pytest: a plain script).

    .venv/bin/python tests/benchmarks/slowpath_speed.py

Each figure is the best of many runs, in CPU time of this process (the machine's noise only ever
adds, and on a shared machine wall time counts other work too). "warm" is the
steady state of a household (the DNS name and address memo already holds the names); "cold"
clears the memo before every parse, the cost of a never-seen-before response.
"""

from __future__ import annotations

import re
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scapy.layers.dhcp import BOOTP, DHCP  # noqa: E402
from scapy.packet import raw  # noqa: E402

from spyglass.core.proto import dns as dns_mod  # noqa: E402
from spyglass.core.proto.dhcp import parse_dhcp  # noqa: E402
from spyglass.core.proto.dns import parse_dns, resolve_chain  # noqa: E402
from spyglass.core.proto.dnsmemo import DnsAnswerMemo  # noqa: E402
from spyglass.core.proto.mdns import mdns_info  # noqa: E402
from spyglass.core.proto.ssdp import parse_ssdp  # noqa: E402
from spyglass.core.proto.tls import client_hello_sni  # noqa: E402
from tests.core.proto.packets import client_hello, frame  # noqa: E402
from tests.core.proto.test_dns import alexa_response  # noqa: E402
from tests.core.proto.test_mdns import googlecast_announcement  # noqa: E402
from tests.core.proto.test_ssdp import SONOS_NOTIFY  # noqa: E402

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "captures"


def best_us(fn: Callable[[], object], number: int = 500, repeat: int = 40) -> float:
    # CPU time of this process, not wall time: other work on the machine does not count.
    runs = timeit.repeat(fn, number=number, repeat=repeat, timer=time.process_time)
    return min(runs) / number * 1e6


def cold(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        dns_mod._MEMO.clear()
        dns_mod._IP4.clear()
        return fn()

    return run


def main() -> None:
    dns_resp = alexa_response()
    dhcp_req = raw(
        BOOTP(op=1, chaddr=b"\x68\xdb\xf5\x90\x19\x64")
        / DHCP(
            options=[
                ("message-type", "request"),
                ("client_id", b"\x01\x68\xdb\xf5\x90\x19\x64"),
                ("requested_addr", "192.168.12.112"),
                ("hostname", b"amazon-4c1f7a2b"),
                ("vendor_class_id", b"android-dhcp-7.1.2"),
                ("param_req_list", [1, 3, 6, 15, 26, 28, 51, 58, 59, 43]),
                "end",
            ]
        )
    )
    mdns = googlecast_announcement()
    cases: list[tuple[str, bytes, Callable[[bytes], object]]] = [
        ("DNS response, 2 CNAME + 4 A (parse)", dns_resp, parse_dns),
        (
            "DNS response, 2 CNAME + 4 A (parse + resolve_chain)",
            dns_resp,
            lambda b: resolve_chain(parse_dns(b)),
        ),
        (
            "TLS ClientHello (crafted, SNI 3rd ext)",
            client_hello("unagi-na.amazon.com", before=2),
            client_hello_sni,
        ),
        ("DHCP request (6 options)", dhcp_req, parse_dhcp),
        ("mDNS googlecast announcement (parse)", mdns, parse_dns),
        (
            "mDNS googlecast announcement (parse + mdns_info)",
            mdns,
            lambda b: mdns_info(parse_dns(b)),
        ),
        ("SSDP NOTIFY (Sonos)", SONOS_NOTIFY, parse_ssdp),
    ]
    if (CAPTURES / "homepod_FNT_S3E10.pcap").is_file():
        homepod = CAPTURES / "homepod_FNT_S3E10.pcap"
        cases.append(
            (
                "TLS ClientHello (real, HomePod frame 23)",
                frame(homepod, 23).payload,
                client_hello_sni,
            )
        )
        cases.append(
            (
                "mDNS real HomePod airplay TXT (frame 1697)",
                frame(homepod, 1697).payload,
                lambda b: mdns_info(parse_dns(b)),
            )
        )
        cases.append(
            (
                "mDNS real HomePod 9-record response (frame 1068)",
                frame(homepod, 1068).payload,
                lambda b: mdns_info(parse_dns(b)),
            )
        )
    base = best_us(lambda: sum(range(100)))
    print(f"machine yardstick: sum(range(100)) = {base:.2f} µs")
    print(f"{'payload':58} {'bytes':>5} {'warm µs':>8} {'cold µs':>8}")
    dns_warm = 0.0
    for label, payload, parse in cases:
        warm = best_us(lambda p=payload, f=parse: f(p))  # type: ignore[misc]
        cold_us = best_us(cold(lambda p=payload, f=parse: f(p)))  # type: ignore[misc]
        if label.startswith("DNS response") and not dns_warm:
            dns_warm = warm
        print(f"{label:58} {len(payload):5d} {warm:8.2f} {cold_us:8.2f}")
    # The pipeline's path: the answer memo, on the same answer with another id and TTLs.
    memo = DnsAnswerMemo()
    memo.facts(dns_resp)
    again = b"\x99\x99" + dns_resp[2:]
    at = [m.start() for m in re.finditer(re.escape(b"\x00\x00\x00\x3c"), dns_resp)]
    for ttl in at:  # TTL 60 -> 59 wherever a record's TTL field says 60
        again = again[:ttl] + b"\x00\x00\x00\x3b" + again[ttl + 4 :]
    memo_us = best_us(lambda: memo.facts(again))
    assert memo.hits > 0, "the repeat was not recognised"
    print(f"{'DNS response repeated, other id and TTLs (answer memo)':58} "
          f"{len(again):5d} {memo_us:8.2f}")  # fmt: skip
    answers = 0.025 * 1_000_000  # 5 % DNS: half of it queries, half answers
    print(f"\n5 % DNS at 1M packets/s: {answers * dns_warm / 1e6:.2f} s of one core per second "
          f"if every answer were parsed, {answers * memo_us / 1e6:.2f} s through the memo")


if __name__ == "__main__":
    main()
