"""What a DNS answer says, remembered across answers that differ only in id and TTLs.

A household asks the same few hundred names again and again, and the resolver's answers repeat
byte for byte apart from the transaction id and the TTLs counting down in its cache. Parsing one
costs 10-20 µs of Python; recognising a repeat costs about one. Two answers of the same length
that are equal once the id and every record's TTL field are zeroed have the same structure, since
neither field is a length or a pointer, so they name the same addresses: the facts of the first
hold for the second.

Answers are filed under their header flags, counts and question (the bytes after the id up to
the end of the question), a few shapes per question, because round-robin resolvers reorder the
addresses.
"""

from __future__ import annotations

from dataclasses import dataclass

from spyglass.core.proto.dns import parse_dns, resolve_chain

MAX_QUESTIONS = 4096  # questions remembered; the memo starts afresh when full
SHAPES_PER_QUESTION = 4  # answer shapes kept per question (the newest)
_ZERO4 = bytes(4)


@dataclass(frozen=True, slots=True)
class DnsFacts:
    is_response: bool
    pairs: tuple[tuple[str, str], ...]  # (ip, name) as resolve_chain gives them
    questions: tuple[str, ...]  # the names asked for, as sent


@dataclass(frozen=True, slots=True)
class _Shape:
    size: int
    # The answer as a big-endian integer, with the id and TTL bytes masked out: one integer
    # AND and compare recognise a repeat (the bytes are handled in C, not a Python step each).
    mask: int
    value: int
    facts: DnsFacts


def _shape(payload: bytes, ttls: list[int], facts: DnsFacts) -> _Shape:
    keep = bytearray(b"\xff") * len(payload)
    keep[0:2] = b"\0\0"
    for at in ttls:
        keep[at : at + 4] = _ZERO4
    mask = int.from_bytes(keep)
    return _Shape(len(payload), mask, int.from_bytes(payload) & mask, facts)


class DnsAnswerMemo:
    """:meth:`facts` of a DNS message, parsed once per shape."""

    def __init__(self) -> None:
        self._shapes: dict[bytes, list[_Shape]] = {}
        self.hits = 0
        self.parses = 0

    def facts(self, payload: bytes) -> DnsFacts:
        """Raises :class:`spyglass.core.proto.MalformedPayload` as parse_dns does."""
        # The flags, counts and question of a one-question message (a question name is plain
        # labels, so its first zero ends it), or None.
        key = None
        if len(payload) >= 17 and payload[4:6] == b"\x00\x01":
            end = payload.find(b"\0", 12)
            if end >= 0 and end + 5 <= len(payload):
                key = payload[2 : end + 5]
        shapes = self._shapes.get(key) if key is not None else None
        if shapes:
            size = len(payload)
            value = -1
            for shape in shapes:
                if shape.size == size:
                    if value < 0:
                        value = int.from_bytes(payload)
                    if value & shape.mask == shape.value:
                        self.hits += 1
                        return shape.facts
        ttls: list[int] = []
        msg = parse_dns(payload, ttls)
        self.parses += 1
        facts = DnsFacts(
            msg.is_response,
            tuple(resolve_chain(msg)) if msg.is_response else (),
            tuple(q for q, _ in msg.questions),
        )
        if key is not None:
            if shapes is None:
                if len(self._shapes) >= MAX_QUESTIONS:
                    self._shapes.clear()
                shapes = self._shapes.setdefault(key, [])
            if len(shapes) >= SHAPES_PER_QUESTION:
                del shapes[0]
            shapes.append(_shape(payload, ttls, facts))
        return facts
