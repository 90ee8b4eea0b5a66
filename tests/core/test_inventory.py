"""NameBook: DNS answers learned in bulk say what one learn() per name says."""

from __future__ import annotations

from spyglass.core.inventory import NameBook

MAC = "44:65:0d:00:00:01"
PAIRS = (
    ("52.94.233.109", "bob-dispatch-prod-na.amazon.com"),
    ("52.94.233.110", "alexa.amazon.com"),
)
Step = tuple[str, tuple[tuple[str, str], ...], str, float]  # mac, (ip, name) pairs, source, ts


def both(steps: list[Step]) -> tuple[NameBook, NameBook]:
    one, bulk = NameBook(), NameBook()
    for mac, pairs, source, ts in steps:
        for ip, name in pairs:
            one.learn(mac, ip, name, source, ts)
        if source == "dns":
            bulk.learn_dns(mac, pairs, ts)
        else:
            for ip, name in pairs:
                bulk.learn(mac, ip, name, source, ts)
    return one, bulk


def same(a: NameBook, b: NameBook) -> bool:
    keys = {(e.device_mac, e.ip) for e in a.entries()}
    return (
        [(e.device_mac, e.ip, e.name, e.source, e.first_seen, e.last_seen) for e in a.entries()]
        == [(e.device_mac, e.ip, e.name, e.source, e.first_seen, e.last_seen) for e in b.entries()]
        and all(a.name_for(m, ip) == b.name_for(m, ip) for m, ip in keys)
        and sorted(map(repr, a.pop_changed())) == sorted(map(repr, b.pop_changed()))
    )


def test_learn_dns_matches_learn_including_times_out_of_order() -> None:
    one, bulk = both([(MAC, PAIRS, "dns", t) for t in (10.0, 5.0, 7.0)])
    assert same(one, bulk)
    assert one.entries()[0].first_seen == 5.0 and one.entries()[0].last_seen == 10.0


def test_sni_outranks_later_dns_answers_either_way() -> None:
    sni = ((PAIRS[0][0], "avs-alexa-14-na.amazon.com"),)
    one, bulk = both([(MAC, PAIRS, "dns", 1.0), (MAC, sni, "sni", 2.0), (MAC, PAIRS, "dns", 3.0)])
    assert same(one, bulk)
    assert bulk.name_for(MAC, PAIRS[0][0]) == "avs-alexa-14-na.amazon.com"
    assert bulk.name_for(MAC, PAIRS[1][0]) == "alexa.amazon.com"
    assert bulk.name_for("44:65:0d:00:00:02", PAIRS[0][0]) is None  # another device: unknown
