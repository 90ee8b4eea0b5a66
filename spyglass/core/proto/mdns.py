"""What an mDNS / DNS-SD announcement says about the device that sent it.

Only responses count: the answers in a query are "known answers" the asker already holds about
*other* devices. Names are as announced (``Living Room``, ``Living-Room.local``); services are
``_type._proto`` without ``.local``; TXT keys are lower-cased (RFC 6763 §6.4 says they are
case-insensitive) and the first value seen for a key wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spyglass.core.proto.dns import AAAA, PTR, SRV, TXT, A, DnsMessage

_META = "_services._dns-sd._udp"


@dataclass(slots=True)
class MdnsInfo:
    hostnames: list[str] = field(default_factory=list)  # "Living-Room.local"
    instance_names: list[str] = field(default_factory=list)  # "Living Room", "Kitchen speaker"
    services: list[str] = field(default_factory=list)  # "_airplay._tcp"
    txt: dict[str, str] = field(default_factory=dict)  # "model" -> "AudioAccessory1,1"
    addresses: list[str] = field(default_factory=list)


def _add(items: list[str], item: str) -> None:
    if item and item not in items:
        items.append(item)


def _strip_local(name: str) -> str:
    return name[:-6] if name.lower().endswith(".local") else name


def split_service(name: str) -> tuple[str | None, str | None]:
    """``"Living Room._airplay._tcp.local"`` -> ``("Living Room", "_airplay._tcp")``.

    ``(None, service)`` for a bare service type, ``(None, None)`` when it is no DNS-SD name.
    """
    base = _strip_local(name)
    for proto in ("._tcp", "._udp"):
        if not base.lower().endswith(proto):
            continue
        head = base[: -len(proto)]
        dot = head.rfind(".")
        label = head[dot + 1 :]
        if not label.startswith("_"):
            return None, None
        service = label + proto
        instance = head[:dot] if dot > 0 else None
        if instance is not None and instance.lower().endswith("._sub"):
            instance = None  # a subtype ("_printer._sub._http._tcp"), not an instance
        return instance, service
    return None, None


def mdns_info(msg: DnsMessage) -> MdnsInfo:
    """Collect names, services, TXT keys and addresses from an mDNS response."""
    info = MdnsInfo()
    if not msg.is_response:
        return info
    for rec in (*msg.answers, *msg.additionals):
        rtype = rec.rtype
        if rtype in (A, AAAA):
            _add(info.hostnames, rec.name)
            _add(info.addresses, rec.value)
        elif rtype == PTR:
            owner = _strip_local(rec.name)
            if owner.lower() == _META:
                _add(info.services, split_service(rec.value)[1] or "")
            elif owner.lower().endswith((".in-addr.arpa", ".ip6.arpa")):
                _add(info.hostnames, rec.value)
            else:
                instance, service = split_service(rec.value)
                _add(info.services, service or "")
                _add(info.instance_names, instance or "")
        elif rtype == SRV:
            instance, service = split_service(rec.name)
            _add(info.services, service or "")
            _add(info.instance_names, instance or "")
            target = rec.value.split(" ", 3)[-1]
            _add(info.hostnames, target)
        elif rtype == TXT:
            instance, service = split_service(rec.name)
            _add(info.services, service or "")
            _add(info.instance_names, instance or "")
            for item in rec.value.split("\x1f"):
                key, _, value = item.partition("=")
                key = key.strip().lower()
                if key and key not in info.txt:
                    info.txt[key] = value
    return info
