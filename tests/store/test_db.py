from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spyglass.core.models import Device, Flow, SeriesPoint
from spyglass.store import migrations
from spyglass.store.db import CaptureSource, Store, StoreError
from tests.conftest import mounted_tmpfs
from tests.store.helpers import ECHO, NEST, T0, result, upload


def src(tag: str = "a") -> CaptureSource:
    return CaptureSource(path=f"/tmp/{tag}.pcap", fingerprint=tag * 64, size=100)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "spyglass.db")
    yield s
    s.close()


def count(store: Store, table: str) -> int:
    return int(store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# -- opening -------------------------------------------------------------------------------------


def test_open_creates_private_file_and_dir(tmp_path: Path) -> None:
    path = tmp_path / "data" / "deeper" / "spyglass.db"
    with Store.open(path) as s:
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert s.schema_version == len(migrations.known())
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == s.schema_version
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_default_path_is_under_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPYGLASS_DATA_DIR", str(tmp_path / "home"))
    with Store.open() as s:
        assert s.path == tmp_path / "home" / "spyglass.db"
    assert (tmp_path / "home" / "spyglass.db").is_file()


def test_reopen_keeps_data_and_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        s.record_analysis(src(), result())
    with Store.open(path) as s:
        assert count(s, "_sqlite_migrations") == len(migrations.known())
        assert len(s.uploads()) == 1


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        s.db.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('spyglass', 'm999_future', 'x')"
        )
    expected = r"newer Spyglass \(unknown migrations: m999_future\); nothing was changed"
    with pytest.raises(StoreError, match=expected):
        Store.open(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(StoreError) as err:
        Store.open(path)
    assert str(err.value).startswith("store: not a Spyglass database or damaged")
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_directory_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create .*nothing was written"):
        Store.open(tmp_path / "file" / "sub" / "s.db")


# -- importing -----------------------------------------------------------------------------------


def test_record_and_read_back(store: Store) -> None:
    cid = store.record_analysis(src(), result())
    (cap,) = store.captures()
    assert (cap.id, cap.kind, cap.packets) == (cid, "file", 420)
    assert (cap.first_ts, cap.last_ts) == (T0, T0 + 60)
    (dev,) = store.devices()
    assert dev.mac == ECHO and dev.model == "Amazon Echo" and dev.names == ["kitchen-echo"]
    assert dev.ips == ["192.168.1.20"]
    (up,) = store.uploads()
    assert up.device_mac == ECHO and up.bytes_up == 31_000 and up.verdict is None
    assert up.capture_id == cid and up.evidence == ["sustained upstream 4.5 s"]
    assert up.duration == pytest.approx(4.5)
    (flow,) = store.flows()
    assert flow.remote_name == "bob-dispatch-prod-na.amazon.com"
    assert count(store, "series") == 60
    assert [n.name for n in store.endpoint_names(ECHO)] == ["bob-dispatch-prod-na.amazon.com"]


def test_reimport_replaces_and_keeps_verdicts(store: Store) -> None:
    cid = store.record_analysis(src(), result())
    (up,) = store.uploads()
    store.set_verdict(up.id, "me")
    again = store.record_analysis(src(), result())
    assert again == cid
    assert count(store, "captures") == 1
    assert count(store, "series") == 60
    assert count(store, "flows") == 1
    (up2,) = store.uploads()
    assert (up2.id, up2.verdict) == (up.id, "me")


def test_reimport_drops_uploads_no_longer_found(store: Store) -> None:
    store.record_analysis(src(), result())
    shorter = result()
    shorter.uploads = []
    store.record_analysis(src(), shorter)
    assert store.uploads() == []


def test_second_capture_merges_devices(store: Store) -> None:
    store.record_analysis(src("a"), result(T0))
    later = result(T0 + 3600, names=("Kitchen Echo", "kitchen-echo"))
    later.devices[0].model = None  # unknown this time: keeps what was known
    later.devices.append(Device(mac=NEST, vendor="Google", first_seen=T0 + 3600.0))
    store.record_analysis(src("b"), later)
    echo, nest = sorted(store.devices(), key=lambda d: d.mac != ECHO)
    assert echo.names == ["kitchen-echo", "Kitchen Echo"]
    assert echo.model == "Amazon Echo"
    assert (echo.first_seen, echo.last_seen) == (T0, T0 + 3660)
    assert nest.vendor == "Google"
    assert len(store.uploads()) == 2
    assert count(store, "series") == 120
    # Flows of the same endpoint are summed over captures.
    (flow,) = store.flows(ECHO)
    assert flow.packets_up == 360 and flow.first_seen == T0 and flow.last_seen == T0 + 3660


def test_same_upload_from_two_files_is_stored_once(store: Store) -> None:
    store.record_analysis(src("a"), result())
    store.record_analysis(src("b"), result())
    assert len(store.uploads()) == 1


def test_traffic_of_unknown_devices_gets_a_device_row(store: Store) -> None:
    r = result()
    r.devices = []
    r.series.append(SeriesPoint(NEST, "8.8.8.8", T0, 10, 10, 1, 1))
    store.record_analysis(src(), r)
    assert sorted(d.mac for d in store.devices()) == sorted([ECHO, NEST])


def test_problems_are_recorded(store: Store) -> None:
    from tests.store.helpers import Problem, Report

    r = result()
    r.stats.problems = ["3 malformed packets"]
    r.read_report = Report(problems=[Problem(1234, "cut short")], cut_short=True)
    store.record_analysis(src(), r)
    assert store.captures()[0].problems == ["3 malformed packets", "byte 1234: cut short"]


def test_capture_source_fingerprints_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(b"\x00" * 3_000_000)
    b.write_bytes(b"\x00" * 3_000_000)
    sa, sb = CaptureSource.from_file(a), CaptureSource.from_file(b)
    assert sa.fingerprint == sb.fingerprint and sa.size == 3_000_000
    assert sa.path == str(a.resolve())
    b.write_bytes(b"\x01")
    assert CaptureSource.from_file(b).fingerprint != sa.fingerprint


def test_forget_capture(store: Store) -> None:
    a = store.record_analysis(src("a"), result(T0))
    store.record_analysis(src("b"), result(T0 + 3600))
    store.forget_capture(a)
    assert count(store, "series") == 60
    assert count(store, "flows") == 1
    assert [u.start for u in store.uploads()] == [T0 + 3610.25]
    with pytest.raises(KeyError):
        store.forget_capture(a)


def test_bulk_series(store: Store) -> None:
    r = result()
    r.series = [
        SeriesPoint(f"aa:bb:cc:00:00:{i % 10:02x}", f"10.0.0.{i % 7}", T0 + i // 70, 100, 1, 1, 1)
        for i in range(100_000)
    ]
    store.record_analysis(src(), r)
    assert count(store, "series") == 100_000
    store.record_analysis(src(), r)
    assert count(store, "series") == 100_000
    total = sum(p.bytes_up for p in store.series(None, resolution_s=3600))
    assert total == 100 * 100_000


# -- live ----------------------------------------------------------------------------------------


def test_live_writes_merge(store: Store) -> None:
    cid = store.live_capture("eth0")
    assert store.live_capture("eth0") == cid
    assert store.live_capture("wlan0") != cid
    point = SeriesPoint(ECHO, "52.1.2.3", T0, 100, 50, 1, 1)
    flow = Flow(ECHO, "52.1.2.3", "tcp", 443, 1, 100, 1, 50, T0, T0 + 1)
    store.write_live(cid, series=[point], flows=[flow])
    flow2 = Flow(ECHO, "52.1.2.3", "tcp", 443, 2, 300, 2, 80, T0, T0 + 2)
    ids = store.write_live(cid, series=[point], flows=[flow2], uploads=[upload(T0 + 1)])
    assert len(ids) == 1
    assert store.write_live(cid, uploads=[upload(T0 + 1)]) == ids
    (p,) = store.series(ECHO)
    assert (p.bytes_up, p.packets_up) == (200, 2)
    (f,) = store.flows()
    assert (f.bytes_up, f.last_seen) == (300, T0 + 2)
    assert [d.mac for d in store.devices()] == [ECHO]
    (cap,) = [c for c in store.captures() if c.path == "eth0"]
    assert (cap.kind, cap.first_ts, cap.last_ts) == ("live", T0, T0 + 1)


# -- queries -------------------------------------------------------------------------------------


def test_uploads_filters(store: Store) -> None:
    r = result()
    r.uploads = [upload(T0 + 10), upload(T0 + 100), upload(T0 + 50, mac=NEST)]
    store.record_analysis(src(), r)
    assert [u.start for u in store.uploads()] == [T0 + 10, T0 + 50, T0 + 100]
    assert [u.start for u in store.uploads(ECHO)] == [T0 + 10, T0 + 100]
    assert [u.start for u in store.uploads(since=T0 + 50)] == [T0 + 50, T0 + 100]
    assert [u.start for u in store.uploads(ECHO, since=T0, until=T0 + 50)] == [T0 + 10]
    up = store.uploads(NEST)[0]
    assert store.upload(up.id) == up
    assert store.upload(12345) is None


def test_series_downsampling(store: Store) -> None:
    store.record_analysis(src(), result(T0, seconds=60))
    minute = store.series(ECHO, resolution_s=60)
    assert [p.second for p in minute] == [T0 // 60 * 60, T0 // 60 * 60 + 60]
    assert sum(p.bytes_up for p in minute) == sum(1000 + s for s in range(60))
    assert all(p.remote_ip == "*" for p in minute)
    window = store.series(ECHO, since=T0 + 10, until=T0 + 20)
    assert [p.second for p in window] == list(range(T0 + 10, T0 + 20))
    assert store.series(ECHO, remote_ip="1.1.1.1") == []
    assert store.series(NEST) == []
    with pytest.raises(ValueError):
        store.series(ECHO, resolution_s=0)


@settings(max_examples=30, deadline=None)
@given(
    seconds=st.lists(st.integers(0, 10_000), min_size=1, max_size=50, unique=True),
    res=st.integers(1, 5000),
)
def test_downsampling_keeps_totals(seconds: list[int], res: int) -> None:
    with Store.memory() as s:
        r = result()
        r.series = [SeriesPoint(ECHO, "1.2.3.4", T0 + x, x + 1, 1, 1, 1) for x in seconds]
        s.record_analysis(src(), r)
        buckets = s.series(ECHO, resolution_s=res)
        assert sum(p.bytes_up for p in buckets) == sum(x + 1 for x in seconds)
        assert all(p.second % res == 0 for p in buckets)
        assert len(buckets) == len({(T0 + x) // res for x in seconds})


def test_flows_top(store: Store) -> None:
    r = result()
    r.flows.append(Flow(ECHO, "9.9.9.9", "udp", 53, 1, 10**6, 1, 1, T0, T0 + 1, "dns.quad9.net"))
    store.record_analysis(src(), r)
    top = store.flows(limit=1)
    assert [(f.remote_ip, f.remote_name) for f in top] == [("9.9.9.9", "dns.quad9.net")]
    assert store.flows(since=T0 + 100) == []


# -- verdicts, retention -------------------------------------------------------------------------


def test_verdicts(store: Store) -> None:
    store.record_analysis(src(), result())
    (up,) = store.uploads()
    store.set_verdict(up.id, "nobody")
    assert store.uploads()[0].verdict == "nobody"
    store.set_verdict(up.id, None)
    assert store.uploads()[0].verdict is None
    with pytest.raises(ValueError, match="verdict must be one of me, nobody"):
        store.set_verdict(up.id, "maybe")
    with pytest.raises(KeyError):
        store.set_verdict(up.id + 1, "me")


def test_prune_live_data_by_its_age(store: Store) -> None:
    day = 86400
    cid = store.live_capture("eth0")
    old = [SeriesPoint(ECHO, "52.1.2.3", T0 + s, 100, 1, 1, 1) for s in range(10)]
    new = [SeriesPoint(ECHO, "52.1.2.3", T0 + 300 * day + s, 100, 1, 1, 1) for s in range(5)]
    old_flow = Flow(ECHO, "52.1.2.3", "tcp", 443, 1, 1, 1, 1, T0, T0 + 10)
    store.write_live(cid, series=old, flows=[old_flow], uploads=[upload(T0 + 1)])
    store.write_live(cid, series=new, uploads=[upload(T0 + 300 * day)])
    assert store.retention_days == 365
    none = store.prune(now=T0 + 200 * day)
    assert none == {"series": 0, "flows": 0, "uploads": 0, "captures": 0}
    store.set_retention_days(30)
    counts = store.prune(now=T0 + 301 * day)
    assert counts == {"series": 10, "flows": 1, "uploads": 1, "captures": 0}
    assert [u.start for u in store.uploads()] == [T0 + 300 * day]
    assert count(store, "series") == 5
    with pytest.raises(ValueError):
        store.set_retention_days(0)


def test_prune_files_by_import_time(store: Store) -> None:
    day = 86400
    store.set_retention_days(30)
    # Recorded long ago, imported now: kept.
    store.record_analysis(src("old"), result(T0))
    assert store.prune(now=time.time())["series"] == 0
    assert count(store, "series") == 60
    counts = store.prune(now=time.time() + 31 * day)
    assert counts == {"series": 60, "flows": 1, "uploads": 1, "captures": 1}
    assert count(store, "series") == 0 and count(store, "flows") == 0
    assert store.uploads() == [] and store.captures() == []


def test_bad_retention_setting_falls_back(store: Store) -> None:
    store.set_setting("retention_days", "forever")
    assert store.retention_days == 365


# -- failures ------------------------------------------------------------------------------------


def test_disk_full_keeps_earlier_data(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        store.record_analysis(src("a"), result())
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages + 2}")
        big = result(T0 + 7200, seconds=20_000)
        with pytest.raises(StoreError) as err:
            store.record_analysis(src("b"), big)
        msg = str(err.value)
        assert msg == (
            f"store: disk full writing {tmp_path / 's.db'}; "
            "the capture's rows were not written, earlier data is intact"
        )
        assert count(store, "series") == 60
        assert count(store, "captures") == 1
        assert len(store.uploads()) == 1


def test_locked_database(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as s:
        s.record_analysis(src("a"), result())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with Store.open(path, timeout=0.05) as store:
            with pytest.raises(StoreError, match="database locked by another process writing"):
                store.record_analysis(src("b"), result(T0 + 3600))
            assert len(store.uploads()) == 1
    finally:
        other.rollback()
        other.close()


def test_query_only_reports_read_only(store: Store) -> None:
    store.db.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="read-only file writing .*rows were not written"):
        store.record_analysis(src(), result())
    with pytest.raises(StoreError, match="read-only file writing .*the setting was not saved"):
        store.set_setting("retention_days", "3")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mnt:
        yield mnt


@pytest.mark.root
def test_real_disk_full(tmpfs: Path) -> None:
    path = tmpfs / "spyglass.db"
    with Store.open(path) as store:
        store.record_analysis(src("a"), result())
        with pytest.raises(StoreError) as err:
            store.record_analysis(src("b"), result(T0 + 7200, seconds=20_000))
        assert str(err.value).startswith(f"store: disk full writing {path};")
        assert "earlier data is intact" in str(err.value)
    with Store.open(path) as store:
        assert count(store, "series") == 60
        assert len(store.uploads()) == 1


@pytest.mark.root
def test_real_read_only_filesystem(tmpfs: Path) -> None:
    import subprocess

    path = tmpfs / "spyglass.db"
    with Store.open(path) as store:
        store.record_analysis(src("a"), result())
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(StoreError) as err, Store.open(path) as store:
        store.record_analysis(src("b"), result(T0 + 7200))
    print(err.value)
    assert "read-only" in str(err.value)
    assert str(path) in str(err.value)


def test_any_thread(tmp_path: Path) -> None:
    import threading

    errors: list[BaseException] = []
    with Store.open(tmp_path / "s.db", any_thread=True) as store:

        def write() -> None:
            try:
                store.record_analysis(src(), result())
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=write)
        t.start()
        t.join()
        assert errors == [] and len(store.uploads()) == 1
