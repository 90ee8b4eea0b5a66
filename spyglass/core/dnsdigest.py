"""A batch's DNS answers, summed up where the batch is prepared.

A DNS-heavy capture has tens of thousands of answers; parsing each and telling the name book
about each, one by one, in the process that holds the state made that process the bottleneck
of a two-process read. What the state needs from a batch's answers does not depend on their
order within the batch, except in ways a summary keeps:

- the names learned: per (device, answer), the first and last time it came (min and max);
- the best name of an address: the last answer naming it wins, so groups are listed in the
  order of their last answer;
- the devices, whose evidence must come in the order of the rows, since a rule keeps the first
  name that matched it and a full inventory the first devices: the row where each device got its
  first answer of the batch, and the asked names that some rule matches (the others tell
  nothing), in row order;
- how many messages parsed, and the faults of those that did not, with their times.

So the preparing process parses (with its own :class:`DnsAnswerMemo`) and groups, and the
stateful side applies one entry per (device, answer) group instead of one per packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spyglass.core.frames import I64, Decoded, FrameBatch
from spyglass.core.identify import domain_may_identify
from spyglass.core.proto import MalformedPayload
from spyglass.core.proto.dnsmemo import DnsAnswerMemo, DnsFacts

Pairs = tuple[tuple[str, str], ...]  # (ip, name) of one answer, as resolve_chain gives them
MAX_QNAMES = 16_384  # names remembered as (not) identifying; the memo starts afresh when full


@dataclass(slots=True)
class DnsDigest:
    """What one batch's DNS messages from port 53 say. MACs are the decoder's integers."""

    parsed: int = 0  # messages parsed (answers or not)
    malformed: list[tuple[float, str]] = field(default_factory=list)  # (time, fault), in order
    # One row per (receiving device, answer), in the order of the group's last answer.
    macs: list[int] = field(default_factory=list)
    pairs: list[Pairs] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    # In row order, so that they take their place among the other evidence about devices:
    # (row, MAC, None, first, last) at a device's first answer of the batch, with the times
    # of all of them; (row, MAC, name, time, time) where it asked a name that may identify it.
    events: list[tuple[int, int, str | None, float, float]] = field(default_factory=list)


class DnsDigester:
    """Builds :class:`DnsDigest` s; keeps the answer memo between batches of one process."""

    def __init__(self) -> None:
        self.memo = DnsAnswerMemo()
        self._identifying: dict[str, bool] = {}

    def digest(self, d: Decoded, batch: FrameBatch, rows: I64) -> DnsDigest:
        """The DNS messages at ``rows`` (UDP from port 53), in row order."""
        out = DnsDigest()
        if not rows.size:
            return out
        # The batch's buffer may be a view (of a mapping, or a reused buffer): the memo files
        # payloads by their bytes.
        buf, facts_of, identifying = batch.buf, self.memo.facts, self._identifying
        # (MAC, id of the memo's facts) -> [mac, facts, first, last]; re-inserted on each
        # answer, so the dict's order is that of the groups' last answers.
        groups: dict[tuple[int, int], list[Any]] = {}
        asked: set[tuple[int, str]] = set()
        events = out.events
        firsts: dict[int, int] = {}  # MAC -> its event of the first answer
        parsed = 0
        for row, ts, off, cap, mac in zip(
            rows.tolist(), d.ts[rows].tolist(), d.payload_off[rows].tolist(),
            d.payload_cap[rows].tolist(), d.dst_mac[rows].tolist(), strict=True,
        ):
            try:
                facts: DnsFacts = facts_of(bytes(buf[off : off + cap]))
            except MalformedPayload as e:
                out.malformed.append((ts, str(e)))
                continue
            parsed += 1
            if not facts.is_response:
                continue
            if mac not in firsts:
                firsts[mac] = len(events)
                events.append((row, mac, None, ts, ts))
            key = (mac, id(facts))
            g = groups.pop(key, None)
            if g is None:
                g = [mac, facts, ts, ts]
                for q in facts.questions:
                    ident = identifying.get(q)
                    if ident is None:
                        if len(identifying) >= MAX_QNAMES:
                            identifying.clear()
                        ident = identifying[q] = domain_may_identify(q)
                    if ident and (mac, q) not in asked:
                        asked.add((mac, q))
                        events.append((row, mac, q, ts, ts))
            else:
                if ts < g[2]:
                    g[2] = ts
                if ts > g[3]:
                    g[3] = ts
            groups[key] = g
        out.parsed = parsed
        span = {mac: [events[i][3], events[i][3]] for mac, i in firsts.items()}
        for mac, facts, lo, hi in groups.values():
            out.macs.append(mac)
            out.pairs.append(facts.pairs)
            out.first.append(lo)
            out.last.append(hi)
            sp = span[mac]
            if lo < sp[0]:
                sp[0] = lo
            if hi > sp[1]:
                sp[1] = hi
        for mac, i in firsts.items():
            lo, hi = span[mac]
            events[i] = (events[i][0], mac, None, lo, hi)
        return out
