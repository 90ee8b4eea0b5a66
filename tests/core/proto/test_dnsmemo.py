"""The DNS answer memo: a repeat is recognised, and it never says anything a parse would not."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.packet import raw

from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.dns import parse_dns, resolve_chain
from spyglass.core.proto.dnsmemo import SHAPES_PER_QUESTION, DnsAnswerMemo, DnsFacts
from tests.core.proto.packets import udp_payloads
from tests.core.proto.test_dns import ALEXA
from tests.core.proto.test_fuzz import mutated


def answer(ident: int = 0x1234, ttl: int = 60, last: int = 109, *, extra_ttl: int = 0) -> bytes:
    edge = "e123.a.akamaiedge.net"
    an = [DNSRR(rrname=ALEXA, type="CNAME", ttl=ttl, rdata=edge)]
    an += [DNSRR(rrname=edge, type="A", ttl=ttl + i, rdata=f"52.94.233.{last + i}")
           for i in range(3)]  # fmt: skip
    ar = [DNSRR(rrname="ns.example", type="A", ttl=extra_ttl, rdata="10.0.0.1")]
    pkt = DNS(id=ident, qr=1, rd=1, ra=1, qd=[DNSQR(qname=ALEXA)], an=an, ar=ar)
    return raw(pkt.compress())


def fresh(payload: bytes) -> DnsFacts:
    msg = parse_dns(payload)
    pairs = tuple(resolve_chain(msg)) if msg.is_response else ()
    return DnsFacts(msg.is_response, pairs, tuple(q for q, _ in msg.questions))


def test_repeat_with_other_id_and_ttls_is_not_parsed_again() -> None:
    memo = DnsAnswerMemo()
    first = memo.facts(answer())
    assert first == fresh(answer())
    assert first.pairs[0] == ("52.94.233.109", ALEXA.lower())
    again = memo.facts(answer(ident=0x9999, ttl=3, extra_ttl=77))
    assert again == first and memo.parses == 1 and memo.hits == 1


def test_another_address_is_another_answer() -> None:
    memo = DnsAnswerMemo()
    memo.facts(answer())
    other = memo.facts(answer(last=10))
    assert other == fresh(answer(last=10)) and other.pairs[0][0] == "52.94.233.10"
    assert memo.parses == 2


def test_shapes_per_question_are_bounded_and_newest_kept() -> None:
    memo = DnsAnswerMemo()
    for last in range(SHAPES_PER_QUESTION + 2):
        memo.facts(answer(last=100 + last))
    newest = answer(ident=7, last=100 + SHAPES_PER_QUESTION + 1)
    assert memo.facts(newest) == fresh(newest)
    assert memo.hits == 1
    oldest = answer(ident=8, last=100)
    assert memo.facts(oldest) == fresh(oldest)
    assert memo.hits == 1  # forgotten, parsed again


def test_malformed_raises_every_time() -> None:
    memo = DnsAnswerMemo()
    broken = answer()[:40]
    for _ in range(2):
        with pytest.raises(MalformedPayload):
            memo.facts(broken)


@settings(max_examples=600, deadline=None)
@given(st.lists(mutated(), min_size=1, max_size=6))
def test_memo_agrees_with_a_fresh_parse(payloads: list[bytes]) -> None:
    # Whatever came before (the memo's state), the facts are a fresh parse's, or both fail.
    memo = DnsAnswerMemo()
    for payload in [answer(), *payloads, answer(ident=5, ttl=1)]:
        try:
            want: DnsFacts | type[MalformedPayload] = fresh(payload)
        except MalformedPayload:
            want = MalformedPayload
        try:
            got: DnsFacts | type[MalformedPayload] = memo.facts(payload)
        except MalformedPayload:
            got = MalformedPayload
        assert got == want


@pytest.mark.captures
def test_real_answers_through_the_memo(captures: Path) -> None:
    memo = DnsAnswerMemo()
    answers = [f.payload for p in sorted(captures.glob("*.pcap*"))
               for f in udp_payloads(p, 53) if f.sport == 53]  # fmt: skip
    assert len(answers) > 50
    for payload in answers * 2:  # the second round is all repeats
        assert memo.facts(payload) == fresh(payload)
    # Some are anonymised to zeros (no question: never remembered), some questions have more
    # answer shapes than are kept; most repeats are still recognised.
    assert memo.hits > len(answers) // 2
