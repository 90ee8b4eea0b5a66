"""NameBook: DNS answers learned in bulk say what one learn() per name says."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spyglass.core import inventory
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
            bulk.learn_dns(mac, pairs, ts, ts)
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


IPS = ("52.94.233.1", "52.94.233.2", "52.94.233.3", "10.9.0.1")
NAMES = ("a.amazon.com", "b.amazon.com", "www.google.com")
# Answers as a memo hands them out: the same tuple object each time (some with an IP twice).
POOL = [
    ((IPS[0], NAMES[0]),),
    ((IPS[0], NAMES[1]), (IPS[1], NAMES[1])),
    ((IPS[1], NAMES[0]), (IPS[2], NAMES[0]), (IPS[1], NAMES[2])),
    ((IPS[3], NAMES[2]), (IPS[0], NAMES[2])),
]
MACS = (MAC, "44:65:0d:00:00:02")

Op = tuple[str, int, int, int, int]  # ("dns", mac, answer, copy, t) / ("sni", mac, ip, name, t)
_op = st.one_of(
    st.tuples(st.just("dns"), st.integers(0, 1), st.integers(0, len(POOL) - 1),
              st.integers(0, 1), st.integers(0, 50)),
    st.tuples(st.just("sni"), st.integers(0, 1), st.integers(0, len(IPS) - 1),
              st.integers(0, len(NAMES) - 1), st.integers(0, 50)),
    st.just(("pop", 0, 0, 0, 0)),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=40), cap=st.sampled_from([1, 2, 16_384]))
def test_repeated_answers_say_what_one_learn_per_name_says(ops: list[Op], cap: int) -> None:
    """Repeats (kept per device and answer, applied when read) against plain learn() calls,
    with SNI names in between, entries read in between, and the repeat memo overflowing."""
    old_cap = inventory.MAX_ANSWERS
    inventory.MAX_ANSWERS = cap
    try:
        one, bulk = NameBook(), NameBook()
        for kind, m, a, b, t in ops:
            if kind == "dns":
                pairs = POOL[a]
                for ip, name in pairs:
                    one.learn(MACS[m], ip, name, "dns", float(t))
                # A copy: an equal answer that is not the same tuple (a memo that forgot it).
                bulk.learn_dns(MACS[m], tuple(list(pairs)) if b else pairs, float(t), float(t))
            elif kind == "sni":
                for book in (one, bulk):
                    book.learn(MACS[m], IPS[a], NAMES[b], "sni", float(t))
            else:
                assert sorted(map(repr, one.pop_changed())) == sorted(
                    map(repr, bulk.pop_changed())
                )
            assert all(one.name_for(m, ip) == bulk.name_for(m, ip) for m in MACS for ip in IPS)
        assert same(one, bulk)
        assert list(map(repr, one.entries())) == list(map(repr, bulk.entries()))
    finally:
        inventory.MAX_ANSWERS = old_cap
