"""DNS and mDNS messages (RFC 1035 wire format, RFC 6762 for the mDNS bits).

Names keep their case as sent (mDNS instance names are for people: "Living Room"); labels are
decoded as UTF-8 with U+FFFD for bad bytes. :func:`resolve_chain` lower-cases, since it feeds
name matching.

Record values (``DnsRecord.value``):
- A / AAAA: dotted IPv4 / compressed IPv6;
- CNAME, PTR, NS: the target name;
- SRV: ``"priority weight port target"``;
- TXT: the character-strings (``"k=v"``) joined by ``"\\x1f"`` (unit separator: TXT values
  contain commas and spaces, e.g. ``model=AudioAccessory1,1``);
- anything else: the rdata in hex.
The mDNS cache-flush / unicast-response bit (top bit of the class) is ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from spyglass.core.proto import MalformedPayload, ipv6_str

A, NS, CNAME, PTR, TXT, AAAA, SRV = 1, 2, 5, 12, 16, 28, 33

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type, class, ttl, rdlength (after the owner name)
_SRV = struct.Struct("!HHH")
_MAX_NAME = 255  # RFC 1035 §2.3.4, on the wire
_MAX_JUMPS = 128  # more pointers than a 255-byte name can need: a loop


@dataclass(slots=True)
class DnsRecord:
    name: str
    rtype: int
    ttl: int
    value: str


@dataclass(slots=True)
class DnsMessage:
    id: int
    is_response: bool
    rcode: int
    questions: list[tuple[str, int]]  # (name, qtype)
    answers: list[DnsRecord]
    additionals: list[DnsRecord]  # the authority section is read past, not kept


def _labels(raw: bytes) -> str:
    """Dotted text of uncompressed wire labels (length bytes included, no terminator)."""
    out: list[bytes] = []
    p = 0
    while p < len(raw):
        q = p + 1 + raw[p]
        out.append(raw[p + 1 : q])
        p = q
    return b".".join(out).decode("utf-8", "replace")


# Wire label runs -> text. A household resolves the same few hundred names over and over, so the
# decode is memoised across messages; cleared when full to stay bounded.
_MEMO: dict[bytes, str] = {}
_IP4: dict[bytes, str] = {}  # the same for A rdata
_MEMO_MAX = 8192


def _name(buf: bytes, off: int, cache: dict[int, str]) -> tuple[str, int]:
    """The name at ``off`` and the offset just after it (after the first pointer, if any).

    ``cache`` maps offsets of names already decoded in this message to their text: compression
    pointers mostly point at an earlier name, so most pointers end in one dict lookup.
    """
    end = len(buf)
    if off + 1 < end and buf[off] >= 0xC0:  # fast path: the whole name is one known pointer
        hit = cache.get(((buf[off] & 0x3F) << 8) | buf[off + 1])
        if hit is not None:
            return hit, off + 2
    first = off
    parts: list[str] = []
    after = -1
    hops = 0
    wire = 0
    jumped: list[tuple[int, int]] = []
    while True:
        start = off
        if off >= end:
            raise MalformedPayload(f"DNS: name runs past end at byte {off}")
        n = buf[off]
        while 0 < n < 64:  # scan a run of plain labels
            off += n + 1
            if off >= end:
                raise MalformedPayload(f"DNS: label runs past end at byte {start}")
            n = buf[off]
        if off > start:
            wire += off - start
            if wire > _MAX_NAME - 1:
                raise MalformedPayload(f"DNS: name longer than 255 bytes at byte {first}")
            raw = buf[start:off]
            text = _MEMO.get(raw)
            if text is None:
                text = _labels(raw)
                if len(_MEMO) >= _MEMO_MAX:
                    _MEMO.clear()
                _MEMO[raw] = text
            parts.append(text)
        if n == 0:
            off += 1
            break
        if n < 0xC0:
            raise MalformedPayload(f"DNS: unknown label type 0x{n:02x} at byte {off}")
        if off + 1 >= end:
            raise MalformedPayload(f"DNS: compression pointer cut at byte {off}")
        if after < 0:
            after = off + 2
        target = ((n & 0x3F) << 8) | buf[off + 1]
        hit = cache.get(target)
        if hit is not None:
            if hit:
                parts.append(hit)
            break
        hops += 1
        if hops > _MAX_JUMPS:
            raise MalformedPayload(f"DNS: compression loop in name at byte {first}")
        jumped.append((target, len(parts)))
        off = target
    name = parts[0] if len(parts) == 1 else ".".join(parts)
    cache[first] = name
    for target, index in jumped:  # the suffixes we jumped to: later pointers hit them at once
        cache[target] = ".".join(parts[index:])
    return name, (after if after >= 0 else off)


def _records(
    buf: bytes, off: int, count: int, cache: dict[int, str], keep: bool,
    ttls: list[int] | None = None,
) -> tuple[list[DnsRecord], int]:
    out: list[DnsRecord] = []
    end = len(buf)
    unpack = _RR.unpack_from
    for _ in range(count):
        # Inline fast path: an owner name that is one pointer to a name already decoded.
        hit = None
        if off + 1 < end and buf[off] >= 0xC0:
            hit = cache.get(((buf[off] & 0x3F) << 8) | buf[off + 1])
        if hit is None:
            name, off = _name(buf, off, cache)
        else:
            name = hit
            off += 2
        if off + 10 > end:
            raise MalformedPayload(f"DNS: record header cut at byte {off}")
        rtype, _cls, ttl, rdlen = unpack(buf, off)
        if ttls is not None:
            ttls.append(off + 4)
        off += 10
        rend = off + rdlen
        if rend > end:
            raise MalformedPayload(f"DNS: rdata of {name!r} runs past end at byte {off}")
        if keep:
            if rtype == A and rdlen == 4:  # the common case, inline and memoised
                raw = buf[off:rend]
                value = _IP4.get(raw)
                if value is None:
                    value = f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"
                    if len(_IP4) >= _MEMO_MAX:
                        _IP4.clear()
                    _IP4[raw] = value
            else:
                value = _value(buf, off, rend, rtype, cache)
            out.append(DnsRecord(name, rtype, ttl, value))
        off = rend
    return out, off


def _value(buf: bytes, off: int, rend: int, rtype: int, cache: dict[int, str]) -> str:
    rdlen = rend - off
    if rtype in (CNAME, PTR, NS):
        target, nend = _name(buf, off, cache)
        if nend > rend:
            raise MalformedPayload(f"DNS: target name overruns its rdata at byte {off}")
        return target
    if rtype == A:
        raise MalformedPayload(f"DNS: A record with {rdlen} bytes at byte {off}")
    if rtype == AAAA:
        if rdlen != 16:
            raise MalformedPayload(f"DNS: AAAA record with {rdlen} bytes at byte {off}")
        return ipv6_str(buf[off:rend])
    if rtype == TXT:
        parts: list[str] = []
        p = off
        while p < rend:
            q = p + 1 + buf[p]
            if q > rend:
                raise MalformedPayload(f"DNS: TXT string runs past its rdata at byte {p}")
            if q > p + 1:
                parts.append(buf[p + 1 : q].decode("utf-8", "replace"))
            p = q
        return "\x1f".join(parts)
    if rtype == SRV:
        if rdlen < 7:
            raise MalformedPayload(f"DNS: SRV record with {rdlen} bytes at byte {off}")
        prio, weight, port = _SRV.unpack_from(buf, off)
        target, nend = _name(buf, off + 6, cache)
        if nend > rend:
            raise MalformedPayload(f"DNS: SRV target overruns its rdata at byte {off}")
        return f"{prio} {weight} {port} {target}"
    return buf[off:rend].hex()


def parse_dns(payload: bytes, ttls: list[int] | None = None) -> DnsMessage:
    """Parse a DNS or mDNS message; raises :class:`MalformedPayload` when it is broken.

    ``ttls``, if given, gets the offset of every record's TTL field (all three sections)."""
    if len(payload) < 12:
        raise MalformedPayload(f"DNS: {len(payload)} bytes, shorter than the 12-byte header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(payload, 0)
    cache: dict[int, str] = {}
    questions: list[tuple[str, int]] = []
    off = 12
    end = len(payload)
    for _ in range(qd):
        name, off = _name(payload, off, cache)
        if off + 4 > end:
            raise MalformedPayload(f"DNS: question type/class cut at byte {off}")
        questions.append((name, (payload[off] << 8) | payload[off + 1]))
        off += 4
    answers, off = _records(payload, off, an, cache, True, ttls)
    _, off = _records(payload, off, ns, cache, False, ttls)
    additionals, off = _records(payload, off, ar, cache, True, ttls)
    return DnsMessage(ident, bool(flags & 0x8000), flags & 0xF, questions, answers, additionals)


def resolve_chain(msg: DnsMessage) -> list[tuple[str, str]]:
    """``(ip, name)`` for each A/AAAA answer, names lower-cased.

    The name is the one the client asked for (CNAME chain followed back to the question), plus
    the final owner name when it differs. Without a question (mDNS announcements) the head of
    the chain stands in for it.
    """
    back: dict[str, str] = {}  # CNAME target -> owner
    addrs: list[DnsRecord] = []
    for rec in msg.answers:
        rtype = rec.rtype
        if rtype in (A, AAAA):
            addrs.append(rec)
        elif rtype == CNAME:
            back.setdefault(rec.value.lower(), rec.name.lower())
    if not addrs:
        return []
    asked = {q.lower() for q, _ in msg.questions}
    heads: dict[str, str] = {}  # owner -> asked-for name, walked once per owner
    out: list[tuple[str, str]] = []
    for rec in addrs:
        owner = rec.name.lower()
        head = heads.get(owner)
        if head is None:
            head = owner
            steps = 0
            while head not in asked and head in back and steps < len(back):  # bounded: loops
                head = back[head]
                steps += 1
            heads[owner] = head
        out.append((rec.value, head))
        if owner != head:
            out.append((rec.value, owner))
    if len(out) != len(set(out)):  # a repeated record: keep the first of each pair
        out = list(dict.fromkeys(out))
    return out
