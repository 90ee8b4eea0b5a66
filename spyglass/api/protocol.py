"""The agent API's wire format: versioned JSON lines. Pure (no sockets); server and client share it.

One request per line::

    {"v": 1, "id": 7, "op": "uploads", "device": "68:db:f5:00:00:01", "since": 1700000000}

one response per request, in order::

    {"v": 1, "id": 7, "ok": true, "result": [...]}
    {"v": 1, "id": 7, "ok": false, "error": {"code": "bad_request", "message": "..."}}

and, after ``subscribe``, event lines interleaved with responses::

    {"v": 1, "event": "upload_started", "data": {...}}

Core models become the dicts in ``result`` and ``data`` through spyglass.api.convert.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
SERVER_NAME = "spyglass-agent"

DEFAULT_SOCKET_PATH = "/run/spyglass/agent.sock"
# Lets a user point the GUI/CLI at a forwarded remote agent without a flag.
SOCKET_ENV = "SPYGLASS_SOCKET"

MAX_REQUEST_BYTES = 64 * 1024  # one request line, without its newline
MAX_SERIES_POINTS = 2000

OPS: tuple[str, ...] = (
    "hello", "status", "devices", "uploads", "series", "subscribe", "unsubscribe",
    "watch", "verdict", "sweep", "intercept",
)
# Ops that change something: the server hands them to the agent's controls (see AgentServer).
CONTROL_OPS: tuple[str, ...] = ("watch", "verdict", "sweep", "intercept")
VERDICTS: tuple[str, ...] = ("me", "nobody")
# What a client may subscribe to; "dropped" is the server's own notice and always delivered.
EVENTS: tuple[str, ...] = (
    "device_seen", "upload_started", "upload_ended", "capture_problem", "status",
)
DROPPED_EVENT = "dropped"

BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
UNSUPPORTED_VERSION = "unsupported_version"
TOO_LARGE = "too_large"
FORBIDDEN = "forbidden"
INTERNAL = "internal"
ERROR_CODES: tuple[str, ...] = (
    BAD_JSON, BAD_REQUEST, UNKNOWN_OP, UNSUPPORTED_VERSION, TOO_LARGE, FORBIDDEN, INTERNAL,
)

# Resolutions a series is rounded up to, so buckets fall on round times (a minute, an hour...).
NICE_RESOLUTIONS: tuple[int, ...] = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)

RequestId = int | str | None

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")

_PARAMS: dict[str, frozenset[str]] = {
    "hello": frozenset(),
    "status": frozenset(),
    "devices": frozenset(),
    "uploads": frozenset({"device", "since", "until"}),
    "series": frozenset({"device", "since", "until", "resolution_s"}),
    "subscribe": frozenset({"events"}),
    "unsubscribe": frozenset(),
    "watch": frozenset({"device", "on"}),
    "verdict": frozenset({"upload", "verdict"}),
    "sweep": frozenset(),
    "intercept": frozenset({"device", "on"}),
}
_ENVELOPE = frozenset({"v", "id", "op"})


def default_socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH


class ProtocolError(Exception):
    """A request that cannot be served; becomes an error reply carrying ``code`` and ``id``."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(slots=True, frozen=True)
class Request:
    id: int | str
    op: str
    params: dict[str, Any] = field(default_factory=dict)


# -- encoding ----------------------------------------------------------------------------------


# One encoder for every line: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(message: Mapping[str, Any]) -> bytes:
    """One wire line. NaN/inf are refused: they are not JSON and other clients choke on them."""
    return (_ENCODER.encode(message) + "\n").encode("utf-8")


def request(request_id: int | str, op: str, **params: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": op, **params}


def ok(request_id: RequestId, result: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}


def error(request_id: RequestId, code: str, message: str) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }


def event(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "event": name, "data": dict(data)}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(line: bytes | str) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity; raises ValueError with a one-line reason."""
    try:
        text = line.decode("utf-8") if isinstance(line, bytes) else line
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at column {exc.colno}") from None


# -- requests ----------------------------------------------------------------------------------


def parse_request(line: bytes | str) -> Request:
    """Decode and validate one request line; raises :class:`ProtocolError`."""
    try:
        obj = loads(line)
    except ValueError as exc:
        raise ProtocolError(BAD_JSON, f"request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"request must be a JSON object, not {kind_of(obj)}")
    rid = obj.get("id")
    valid_id = isinstance(rid, (int, str)) and not isinstance(rid, bool)
    reply_id: RequestId = rid if valid_id else None
    version = obj.get("v")
    if "v" not in obj:
        raise ProtocolError(
            BAD_REQUEST,
            f"request has no protocol version 'v'; this agent speaks {_versions()}",
            reply_id,
        )
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {json.dumps(version)} is not supported; "
            f"this agent speaks {_versions()}",
            reply_id,
        )
    if not valid_id:
        raise ProtocolError(BAD_REQUEST, "request 'id' must be an integer or a string")
    assert rid is not None and not isinstance(rid, bool)
    op = obj.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "request 'op' must be a string", rid)
    if op not in _PARAMS:
        raise ProtocolError(
            UNKNOWN_OP, f"unknown op {op!r}; known ops: {', '.join(OPS)}", rid
        )
    params = {k: v for k, v in obj.items() if k not in _ENVELOPE}
    unknown = sorted(set(params) - _PARAMS[op])
    if unknown:
        allowed = ", ".join(sorted(_PARAMS[op])) or "none"
        raise ProtocolError(
            BAD_REQUEST,
            f"unknown parameter(s) for {op}: {', '.join(unknown)} (allowed: {allowed})",
            rid,
        )
    try:
        return Request(rid, op, _check_params(op, params))
    except ValueError as exc:
        raise ProtocolError(BAD_REQUEST, f"{op}: {exc}", rid) from None


def _check_params(op: str, params: dict[str, Any]) -> dict[str, Any]:
    if op == "uploads":
        since = _time_param("since", params.get("since"))
        until = _time_param("until", params.get("until"))
        if since is not None and until is not None and until < since:
            raise ValueError("'until' is before 'since'")
        return {"device": _mac_param(params.get("device")), "since": since, "until": until}
    if op == "series":
        for name in ("since", "until"):
            if params.get(name) is None:
                raise ValueError(f"'{name}' is required (UNIX epoch seconds)")
        since = _time_param("since", params["since"])
        until = _time_param("until", params["until"])
        assert since is not None and until is not None
        if until <= since:
            raise ValueError("'until' must be after 'since'")
        return {
            "device": _mac_param(params.get("device")),
            "since": since,
            "until": until,
            "resolution_s": _resolution_param(params.get("resolution_s", 1)),
        }
    if op == "subscribe":
        return {"events": _events_param(params.get("events"))}
    if op == "watch":
        mac = _mac_param(params.get("device"))
        if mac is None:
            raise ValueError("'device' (a MAC) is required")
        on = params.get("on", True)
        if not isinstance(on, bool):
            raise ValueError("'on' must be true or false")
        return {"device": mac, "on": on}
    if op == "intercept":
        ip = _ipv4_param(params.get("device"))
        on = params.get("on", True)
        if not isinstance(on, bool):
            raise ValueError("'on' must be true or false")
        return {"device": ip, "on": on}
    if op == "verdict":
        upload = params.get("upload")
        if not isinstance(upload, int) or isinstance(upload, bool) or upload < 1:
            raise ValueError("'upload' must be an upload id (a positive integer)")
        verdict = params.get("verdict")
        if verdict is not None and verdict not in VERDICTS:
            raise ValueError(f"'verdict' must be one of {', '.join(VERDICTS)} or null")
        return {"upload": upload, "verdict": verdict}
    return {}


def normalize_mac(value: str) -> str:
    """``AA-BB-...`` or ``aa:bb:...`` → ``aa:bb:...``; raises ValueError otherwise."""
    mac = value.strip().lower()
    if not _MAC.match(mac):
        raise ValueError(f"{value!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
    return mac.replace("-", ":")


def _mac_param(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'device' must be a MAC address string, not {kind_of(value)}")
    return normalize_mac(value)


def _ipv4_param(value: Any) -> str:
    """A device chosen for interception is named by its IPv4 address (ARP is IPv4 only)."""
    if value is None:
        raise ValueError("'device' (an IPv4 address) is required")
    if not isinstance(value, str):
        raise ValueError(f"'device' must be an IPv4 address string, not {kind_of(value)}")
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise ValueError(f"'device' {value!r} is not an IPv4 address like 192.168.1.20") from None


def _time_param(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"'{name}' must be UNIX epoch seconds (a number), not {kind_of(value)}")
    return float(value)


def _resolution_param(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'resolution_s' must be a whole number of seconds, not {kind_of(value)}")
    if not math.isfinite(value) or value != int(value) or value < 1:
        raise ValueError(f"'resolution_s' must be a whole number of seconds >= 1, not {value}")
    return int(value)


def _events_param(value: Any) -> list[str]:
    if value is None:
        return list(EVENTS)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("'events' must be a list of event names")
    unknown = [v for v in value if v not in EVENTS]
    if unknown:
        raise ValueError(f"unknown event(s) {', '.join(unknown)}; known: {', '.join(EVENTS)}")
    return list(dict.fromkeys(value))


def kind_of(value: Any) -> str:
    """How error messages name a JSON value: "null", "a string", "the number 3"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        finite = isinstance(value, int) or math.isfinite(value)
        return f"the number {value}" if finite else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _versions() -> str:
    return ", ".join(str(v) for v in SUPPORTED_VERSIONS)


# -- series ------------------------------------------------------------------------------------


def series_resolution(
    since: float, until: float, requested: int, max_points: int = MAX_SERIES_POINTS
) -> int:
    """The resolution actually served: ``requested``, raised so at most ~max_points come back."""
    needed = math.ceil((until - since) / max_points)
    if requested >= needed:
        return requested
    for nice in NICE_RESOLUTIONS:
        if nice >= needed:
            return nice
    # Beyond a day per point: whole days.
    return math.ceil(needed / 86400) * 86400
