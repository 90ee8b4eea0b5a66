from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from spyglass.cli.query import parse_when
from spyglass.store.db import CaptureSource, Store
from tests.cli.conftest import Ran
from tests.store.helpers import ECHO, NEST, T0, result, upload

Cli = Callable[..., Ran]


@pytest.fixture
def berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def db(data_dir: Path) -> Path:
    path = data_dir / "spyglass.db"
    with Store.open(path) as store:
        r = result()
        r.uploads = [upload(T0 + 10), upload(T0 + 7200, mac=NEST), upload(T0 + 86400)]
        store.record_analysis(CaptureSource("/a.pcap", "a" * 64, 1), r)
        store.set_verdict(store.uploads()[0].id, "me")
    return path


def test_empty(cli: Cli) -> None:
    ran = cli("devices")
    assert ran.rc == 0 and ran.out == "" and "No data yet" in ran.err
    assert cli("devices", "--json").json() == {"devices": []}
    assert cli("uploads", "--json").json() == {"uploads": []}


def test_devices(cli: Cli, db: Path) -> None:
    ran = cli("devices")
    assert ran.rc == 0
    assert ECHO in ran.out and "kitchen-echo" in ran.out and "Amazon Echo" in ran.out
    doc = cli("devices", "--json").json()
    by_mac = {d["mac"]: d for d in doc["devices"]}
    assert by_mac[ECHO]["uploads"] == 2 and by_mac[ECHO]["names"] == ["kitchen-echo"]
    assert by_mac[NEST]["uploads"] == 1


def test_uploads(cli: Cli, db: Path, berlin: None) -> None:
    ran = cli("uploads")
    lines = ran.out.splitlines()
    assert lines[0].split() == [
        "ID", "WHEN", "DURATION", "SIZE", "DEVICE", "DESTINATION", "ASSISTANT", "CONFIDENCE",
        "VERDICT",
    ]
    assert len(lines) == 4
    assert "2023-11-14 23:13:30 CET" in lines[1] and "31 KB" in lines[1]
    assert "that was me" in lines[1] and "4.5 s" in lines[1]
    doc = cli("uploads", "--json").json()
    assert [u["verdict"] for u in doc["uploads"]] == ["me", None, None]
    first = doc["uploads"][0]
    assert first["device"] == ECHO and first["bytes"] == 31_000 and first["start"] == T0 + 10
    assert first["start_local"] == "2023-11-14T23:13:30.000+01:00"


def test_uploads_filters(cli: Cli, db: Path) -> None:
    def starts(*args: str) -> list[float]:
        ran = cli("uploads", "--json", *args)
        assert ran.rc == 0, ran.err
        return [u["start"] for u in ran.json()["uploads"]]

    assert starts("--device", NEST.upper().replace(":", "-")) == [T0 + 7200]
    assert starts("--device", "Kitchen-Echo") == [T0 + 10, T0 + 86400]
    iso = datetime.fromtimestamp(T0 + 3600).isoformat()
    assert starts("--since", iso) == [T0 + 7200, T0 + 86400]
    assert starts("--since", iso, "--until", datetime.fromtimestamp(T0 + 80000).isoformat()) == [
        T0 + 7200
    ]
    assert starts("--since", "1d") == []
    ran = cli("uploads", "--device", "toaster")
    assert ran.rc == 2 and "no single device matches 'toaster'" in ran.err


def test_bad_when(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli("uploads", "--since", "last tuesday-ish")
    assert "cannot read the time 'last tuesday-ish'" in capsys.readouterr().err


def test_parse_when(berlin: None) -> None:
    now = datetime(2024, 3, 31, 12, 0).timestamp()  # the day Berlin moves to summer time
    assert parse_when("now", now) == now
    assert parse_when("2h", now) == now - 7200
    assert parse_when("30 min", now) == now - 1800
    assert parse_when("3d ago", now) == now - 3 * 86400
    assert parse_when("1w", now) == now - 7 * 86400
    assert parse_when("today", now) == datetime(2024, 3, 31).timestamp()
    assert parse_when("yesterday", now) == datetime(2024, 3, 30).timestamp()
    assert parse_when("2024-03-30", now) == datetime(2024, 3, 30).timestamp()
    assert parse_when("2024-03-30T07:30", now) == datetime(2024, 3, 30, 7, 30).timestamp()
    assert parse_when("2024-03-30T07:30:00+00:00", now) == 1711783800.0
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when("soonish", now)
    assert os.environ["TZ"] == "Europe/Berlin"
