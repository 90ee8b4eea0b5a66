from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spyglass.api import convert
from spyglass.api import protocol as p
from spyglass.core.models import Device, Upload

MAC = "68:db:f5:c1:c0:01"


def line(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def code_of(raw: bytes | str) -> tuple[str, p.RequestId]:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(raw)
    assert info.value.message
    return info.value.code, info.value.request_id


# -- requests ----------------------------------------------------------------------------------


def test_valid_requests_and_defaults() -> None:
    assert p.parse_request(line(v=1, id=1, op="hello")) == p.Request(1, "hello", {})
    req = p.parse_request(line(v=1, id="a", op="uploads", device="68-DB-F5-C1-C0-01"))
    assert req.params == {"device": MAC, "since": None, "until": None}
    req = p.parse_request(line(v=1, id=2, op="series", since=10, until=20.5))
    assert req.params == {"device": None, "since": 10.0, "until": 20.5, "resolution_s": 1}
    assert p.parse_request(line(v=1, id=3, op="subscribe")).params == {"events": list(p.EVENTS)}
    req = p.parse_request(line(v=1, id=4, op="subscribe", events=["status", "status"]))
    assert req.params == {"events": ["status"]}
    assert p.parse_request(line(v=1, id=5, op="series", since=0, until=1, resolution_s=60.0))


@pytest.mark.parametrize(
    ("raw", "code", "rid"),
    [
        (b"{", "bad_json", None),
        (b"\xff\xfe", "bad_json", None),
        (b'{"v": 1, "id": 1, "op": "hello", "x": Infinity}', "bad_json", None),
        (b"[" * 100_000, "bad_json", None),
        (b'"hello"', "bad_request", None),
        (line(id=1, op="hello"), "bad_request", 1),
        (line(v=2, id=1, op="hello"), "unsupported_version", 1),
        (line(v="1", id=1, op="hello"), "unsupported_version", 1),
        (line(v=True, id=1, op="hello"), "unsupported_version", 1),
        (line(v=1, op="hello"), "bad_request", None),
        (line(v=1, id=True, op="hello"), "bad_request", None),
        (line(v=1, id=1.5, op="hello"), "bad_request", None),
        (line(v=1, id=[1], op="hello"), "bad_request", None),
        (line(v=1, id=1), "bad_request", 1),
        (line(v=1, id=1, op="format_disk"), "unknown_op", 1),
        (line(v=1, id=1, op="hello", extra=1), "bad_request", 1),
        (line(v=1, id=1, op="uploads", device=5), "bad_request", 1),
        (line(v=1, id=1, op="uploads", device="68:db:f5"), "bad_request", 1),
        (line(v=1, id=1, op="uploads", since=True), "bad_request", 1),
        (line(v=1, id=1, op="uploads", since=5, until=4), "bad_request", 1),
        (line(v=1, id=1, op="series", until=5), "bad_request", 1),
        (line(v=1, id=1, op="series", since=5, until=5), "bad_request", 1),
        (line(v=1, id=1, op="series", since=0, until=5, resolution_s=1.5), "bad_request", 1),
        (line(v=1, id=1, op="series", since=0, until=5, resolution_s=-1), "bad_request", 1),
        (line(v=1, id=1, op="subscribe", events="status"), "bad_request", 1),
        (line(v=1, id=1, op="subscribe", events=["dropped"]), "bad_request", 1),
    ],
)
def test_bad_requests(raw: bytes, code: str, rid: p.RequestId) -> None:
    assert code_of(raw) == (code, rid)


def test_version_error_names_what_is_spoken() -> None:
    with pytest.raises(p.ProtocolError, match=r"version 7 is not supported; this agent speaks 1"):
        p.parse_request(line(v=7, id=1, op="hello"))


@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_protocol_error(raw: bytes) -> None:
    try:
        p.parse_request(raw)
    except p.ProtocolError as exc:
        assert exc.code in p.ERROR_CODES


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@given(
    st.fixed_dictionaries(
        {"v": st.sampled_from([1, 1, 2, "1", None]), "id": JSON,
         "op": st.sampled_from([*p.OPS, "nope"])},
        optional={"device": JSON, "since": JSON, "until": JSON, "resolution_s": JSON,
                  "events": JSON},
    )
)
def test_any_request_object_is_answered_cleanly(obj: dict[str, Any]) -> None:
    try:
        req = p.parse_request(json.dumps(obj))
    except p.ProtocolError as exc:
        assert exc.code in p.ERROR_CODES
        return
    assert req.op in p.OPS
    p.encode(p.ok(req.id, req.params))  # whatever was accepted can be echoed


# -- responses and events ----------------------------------------------------------------------


def test_message_shapes() -> None:
    assert json.loads(p.encode(p.ok(3, [1]))) == {"v": 1, "id": 3, "ok": True, "result": [1]}
    assert json.loads(p.encode(p.error(None, p.TOO_LARGE, "x"))) == {
        "v": 1, "id": None, "ok": False, "error": {"code": "too_large", "message": "x"}
    }
    assert json.loads(p.encode(p.event("status", {"mode": "file"}))) == {
        "v": 1, "event": "status", "data": {"mode": "file"}
    }


def test_encode_is_one_utf8_line_and_refuses_nan() -> None:
    out = p.encode(p.event("device_seen", {"names": ["Küche\nEcho"]}))
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert "Küche".encode() in out
    with pytest.raises(ValueError):
        p.encode(p.ok(1, math.nan))


# -- series resolution -------------------------------------------------------------------------


def test_series_resolution() -> None:
    assert p.series_resolution(0, 60, 1) == 1
    assert p.series_resolution(0, 2000, 1) == 1
    assert p.series_resolution(0, 2001, 1) == 2
    assert p.series_resolution(0, 30 * 86400, 1) == 1800
    assert p.series_resolution(0, 30 * 86400, 7200) == 7200
    assert p.series_resolution(0, 10 * 365 * 86400, 1) == 2 * 86400


@given(
    st.floats(0, 4e9), st.floats(1e-3, 20 * 365 * 86400), st.integers(1, 10 * 86400)
)
def test_series_never_exceeds_the_point_budget(since: float, span: float, requested: int) -> None:
    res = p.series_resolution(since, since + span, requested)
    assert res >= requested
    assert math.ceil(span / res) <= p.MAX_SERIES_POINTS


# -- shared types ------------------------------------------------------------------------------


UPLOAD = Upload(
    device_mac=MAC, start=1.5, end=6.0, bytes_up=31_000, peak_bps=15_000,
    destination="bob-dispatch-prod-na.amazon.com", remote_ip="52.1.2.3", proto="tcp", port=443,
    assistant="alexa", confidence=0.9, evidence=["sustained"],
)


def test_upload_round_trip_and_field_names() -> None:
    d = convert.upload_to_dict(UPLOAD)
    assert list(d)[:13] == ["device", "start", "end", "bytes", "destination", "assistant",
                            "confidence", "peak_bps", "remote_ip", "proto", "port", "evidence",
                            "id"]
    assert d["id"] is None
    back = convert.upload_from_dict(json.loads(json.dumps(d)))
    assert Upload(**{f: getattr(back, f) for f in Upload.__dataclass_fields__}) == UPLOAD
    stored = convert.WireUpload(**{f: getattr(UPLOAD, f) for f in Upload.__dataclass_fields__},
                                id=7, verdict="me")
    assert convert.upload_from_dict(convert.upload_to_dict(stored)) == stored


def test_device_round_trip() -> None:
    dev = Device(MAC, vendor="Amazon", kind="speaker", model="Amazon Echo", assistant="alexa",
                 names=["kitchen"], ips=["192.168.1.20"], evidence=["oui"], first_seen=1.0,
                 last_seen=2.0)
    assert convert.device_from_dict(json.loads(json.dumps(convert.device_to_dict(dev)))) == dev
    assert convert.device_from_dict({"mac": MAC, "future_field": 1}) == Device(MAC)


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"start": 1, "end": 2, "bytes": 3, "destination": "x"}, "device"),
        ({"device": MAC, "start": "1", "end": 2, "bytes": 3, "destination": "x"}, "start"),
        ({"device": MAC, "start": 1, "end": 2, "bytes": 3.5, "destination": "x"}, "bytes"),
        ({"device": MAC, "start": 1, "end": 2, "bytes": 3, "destination": "x", "evidence": [1]},
         "evidence"),
    ],
)
def test_upload_from_dict_names_the_bad_field(d: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"'{field}'"):
        convert.upload_from_dict(d)


def test_device_from_dict_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="'names'"):
        convert.device_from_dict({"mac": MAC, "names": "kitchen"})
    with pytest.raises(ValueError, match="object"):
        convert.device_from_dict([MAC])  # type: ignore[arg-type]


def test_mac_normalisation() -> None:
    assert p.normalize_mac(" 68:DB:F5:C1:C0:01 ") == MAC
    assert p.normalize_mac("68-db-f5-c1-c0-01") == MAC
    for bad in ("68:db-f5:c1:c0:01", "68dbf5c1c001", "zz:db:f5:c1:c0:01"):
        with pytest.raises(ValueError, match="not a MAC"):
            p.normalize_mac(bad)


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(p.SOCKET_ENV, raising=False)
    assert p.default_socket_path() == "/run/spyglass/agent.sock"
    monkeypatch.setenv(p.SOCKET_ENV, "/tmp/spyglass.sock")
    assert p.default_socket_path() == "/tmp/spyglass.sock"


# -- intercept ---------------------------------------------------------------------------------


def test_intercept_request() -> None:
    assert "intercept" in p.OPS and "intercept" in p.CONTROL_OPS
    req = p.parse_request(line(v=1, id=1, op="intercept", device="192.168.1.20", on=False))
    assert req == p.Request(1, "intercept", {"device": "192.168.1.20", "on": False})
    # "on" defaults to true, like watch; surrounding blanks are forgiven.
    req = p.parse_request(line(v=1, id=2, op="intercept", device=" 10.0.0.7 "))
    assert req.params == {"device": "10.0.0.7", "on": True}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "'device' (an IPv4 address) is required"),
        ({"device": None}, "'device' (an IPv4 address) is required"),
        ({"device": 3232235796}, "IPv4 address string, not the number"),
        ({"device": ["10.0.0.1"]}, "IPv4 address string, not a list"),
        ({"device": "192.168.1.300"}, "not an IPv4 address"),
        ({"device": "192.168.1"}, "not an IPv4 address"),
        ({"device": "fe80::1"}, "not an IPv4 address"),
        ({"device": MAC}, "not an IPv4 address"),
        ({"device": "010.0.0.1"}, "not an IPv4 address"),  # leading zeros: octal to some tools
        ({"device": "10.0.0.1", "on": "yes"}, "'on' must be true or false"),
        ({"device": "10.0.0.1", "on": 1}, "'on' must be true or false"),
        ({"device": "10.0.0.1", "router": "10.0.0.254"}, "unknown parameter"),
    ],
)
def test_intercept_bad_requests(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_request(line(v=1, id=9, op="intercept", **fields))
    assert (info.value.code, info.value.request_id) == (p.BAD_REQUEST, 9)
    assert message in info.value.message
