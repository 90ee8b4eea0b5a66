"""Core models <-> the dicts the agent API carries (``upload_to_dict``, ``device_from_dict``...).

Readers of untrusted dicts raise ValueError naming the field; the wire format itself (framing,
requests, params checking) is spyglass.api.protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spyglass.api.protocol import kind_of
from spyglass.core.models import Device, Upload


@dataclass(slots=True)
class WireUpload(Upload):
    """An upload as the API carries it: with the store's row id and the user's verdict."""

    id: int | str | None = None
    verdict: str | None = None


def upload_to_dict(u: Upload) -> dict[str, Any]:
    """The same field names as ``spyglass analyze --json`` (plus the user's ``verdict``)."""
    return {
        "device": u.device_mac,
        "start": u.start,
        "end": u.end,
        "bytes": u.bytes_up,
        "destination": u.destination,
        "assistant": u.assistant,
        "confidence": u.confidence,
        "peak_bps": u.peak_bps,
        "remote_ip": u.remote_ip,
        "proto": u.proto,
        "port": u.port,
        "evidence": list(u.evidence),
        "id": getattr(u, "id", None),
        "verdict": getattr(u, "verdict", None),
    }


def upload_from_dict(d: Mapping[str, Any]) -> WireUpload:
    """Raises ValueError naming the field when ``d`` is not an upload; extra keys are ignored."""
    if not isinstance(d, Mapping):
        raise ValueError(f"upload must be an object, not {kind_of(d)}")
    uid = d.get("id")
    if uid is not None and (isinstance(uid, bool) or not isinstance(uid, (int, str))):
        raise ValueError("upload 'id' must be an integer, a string or null")
    return WireUpload(
        device_mac=_str(d, "device"),
        start=_num(d, "start"),
        end=_num(d, "end"),
        bytes_up=_int(d, "bytes"),
        peak_bps=_int(d, "peak_bps", 0),
        destination=_str(d, "destination"),
        remote_ip=_str(d, "remote_ip", ""),
        proto=_str(d, "proto", ""),
        port=_int(d, "port", 0),
        assistant=_opt_str(d, "assistant"),
        confidence=_num(d, "confidence", 0.0),
        evidence=_str_list(d, "evidence"),
        id=uid,
        verdict=_opt_str(d, "verdict"),
    )


def device_to_dict(dev: Device) -> dict[str, Any]:
    return {
        "mac": dev.mac,
        "vendor": dev.vendor,
        "model": dev.model,
        "kind": dev.kind,
        "assistant": dev.assistant,
        "names": list(dev.names),
        "ips": list(dev.ips),
        "evidence": list(dev.evidence),
        "first_seen": dev.first_seen,
        "last_seen": dev.last_seen,
    }


def device_from_dict(d: Mapping[str, Any]) -> Device:
    """Raises ValueError naming the field when ``d`` is not a device; extra keys are ignored."""
    if not isinstance(d, Mapping):
        raise ValueError(f"device must be an object, not {kind_of(d)}")
    return Device(
        mac=_str(d, "mac"),
        vendor=_opt_str(d, "vendor"),
        kind=_opt_str(d, "kind"),
        model=_opt_str(d, "model"),
        assistant=_opt_str(d, "assistant"),
        names=_str_list(d, "names"),
        ips=_str_list(d, "ips"),
        evidence=_str_list(d, "evidence"),
        first_seen=_num(d, "first_seen", 0.0),
        last_seen=_num(d, "last_seen", 0.0),
    )


_MISSING: Any = object()


def _get(d: Mapping[str, Any], key: str, default: Any) -> Any:
    if key in d:
        return d[key]
    if default is _MISSING:
        raise ValueError(f"missing field '{key}'")
    return default


def _str(d: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = _get(d, key, default)
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, not {kind_of(value)}")
    return value


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string or null, not {kind_of(value)}")
    return value


def _num(d: Mapping[str, Any], key: str, default: Any = _MISSING) -> float:
    value = _get(d, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"field '{key}' must be a number, not {kind_of(value)}")
    return float(value)


def _int(d: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    value = _get(d, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field '{key}' must be an integer, not {kind_of(value)}")
    return value


def _str_list(d: Mapping[str, Any], key: str) -> list[str]:
    value = d.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field '{key}' must be a list of strings")
    return list(value)
