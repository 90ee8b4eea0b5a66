from __future__ import annotations

import io
import time
from collections.abc import Iterator

import pytest

from spyglass.cli import render
from spyglass.core.models import Device, Flow


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_size() -> None:
    assert [render.size(n) for n in (0, 999, 1000, 4_540, 31_000, 999_400, 999_600, 2_345_678)] == [
        "0 B", "999 B", "1.0 KB", "4.5 KB", "31 KB", "999 KB", "1.0 MB", "2.3 MB",
    ]
    assert render.size(5 * 10**12) == "5.0 TB"


def test_times(tz: None) -> None:
    assert render.local_time(1_700_000_000) == "2023-11-14 17:13:20 EST"
    assert render.local_time(1_690_000_000, date=False) == "00:26:40 EDT"
    assert render.local_iso(1_700_000_000.25) == "2023-11-14T17:13:20.250-05:00"


def test_duration() -> None:
    assert [render.duration(s) for s in (4.54, 59.9, 60, 125, 3600, 7260)] == [
        "4.5 s", "59.9 s", "1 min", "2 min 5 s", "1 h", "2 h 1 min",
    ]


def test_table_alignment() -> None:
    text = render.table(["NAME", "SIZE"], [["echo", "31 KB"], ["homepod", "1.2 MB"]], right=(1,))
    assert text.splitlines() == ["  NAME       SIZE", "  echo      31 KB", "  homepod  1.2 MB"]


def test_device_label() -> None:
    mac = "68:db:f5:90:19:64"
    assert render.device_label(None, mac) == mac
    assert render.device_label(Device(mac), mac) == mac
    assert render.device_label(Device(mac, model="Amazon Echo"), mac) == "Amazon Echo (90:19:64)"
    named = Device(mac, model="Amazon Echo", names=["Kitchen"])
    assert render.device_label(named, mac) == "Kitchen (90:19:64)"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_for_big_files() -> None:
    assert render.ProgressBar.for_file(io.StringIO(), "x", 1 << 30) is None
    assert render.ProgressBar.for_file(Terminal(), "x", 1000) is None
    term = Terminal()
    bar = render.ProgressBar.for_file(term, "big.pcap", 1 << 30)
    assert bar is not None
    bar.update(0, 100_000_000)
    bar.update(1, 100_000_000)  # too soon: not redrawn
    bar.update(100_000_000, 100_000_000)
    bar.close()
    frames = term.getvalue().split("\r")
    assert frames[1].startswith("big.pcap [") and "0%" in frames[1]
    assert frames[2].endswith("100% 100 MB/100 MB")
    assert frames[3] == "\x1b[K"


def test_destinations_group_by_name() -> None:
    mac = "68:db:f5:90:19:64"
    flows = [
        Flow(mac, "52.1.1.1", "tcp", 443, bytes_up=5_000, bytes_down=100, remote_name="unagi"),
        Flow(mac, "52.1.1.2", "tcp", 443, bytes_up=6_000, bytes_down=100, remote_name="unagi"),
        Flow(mac, "52.9.9.9", "tcp", 443, bytes_up=9_000, bytes_down=0),
        Flow(mac, "52.9.9.9", "udp", 53, bytes_up=0, bytes_down=500),
    ]
    lines = render.destinations_table(flows, {mac: Device(mac, model="Echo")}, 5).splitlines()
    assert [line.split() for line in lines[1:]] == [
        ["Echo", "(90:19:64)", "unagi", "tcp/443", "11", "KB", "200", "B"],
        ["52.9.9.9", "tcp/443", "9.0", "KB", "0", "B"],
    ]
