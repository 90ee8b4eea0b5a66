from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spyglass.core.models import SeriesPoint
from spyglass.store.db import Store
from tests.cli.conftest import Ran
from tests.conftest import mounted_tmpfs

ECHO_FILE = "echodot3a_active.pcap"
HOMEPOD_FILE = "homepod_FNT_S3E10.pcap"
Cli = Callable[..., Ran]


@pytest.mark.captures
def test_summary_of_real_captures(cli: Cli, captures: Path, data_dir: Path) -> None:
    ran = cli("analyze", captures / ECHO_FILE, captures / HOMEPOD_FILE)
    assert ran.rc == 0, ran.err
    assert ran.err == ""
    assert f"{ECHO_FILE}: 2,778 packets" in ran.out
    assert f"Stored in {data_dir / 'spyglass.db'}" in ran.out
    assert "Devices (" in ran.out and "68:db:f5:90:19:64" in ran.out
    assert "Top destinations by upstream bytes" in ran.out
    assert "guzzoni.apple.com" in ran.out
    assert "Audio uploads (" in ran.out or "No audio uploads detected." in ran.out


@pytest.mark.captures
def test_json_matches_store(cli: Cli, captures: Path, data_dir: Path) -> None:
    ran = cli("analyze", captures / HOMEPOD_FILE, captures / ECHO_FILE, "--json")
    assert ran.rc == 0, ran.err
    doc = ran.json()
    assert [f["path"] for f in doc["files"]] == [
        str(captures / HOMEPOD_FILE),
        str(captures / ECHO_FILE),
    ]
    assert all(f["capture_id"] and not f["failed"] for f in doc["files"])
    macs = {d["mac"] for d in doc["devices"]}
    assert {"68:db:f5:90:19:64", "d4:a3:3d:6b:1e:97"} <= macs
    for d in doc["devices"]:
        assert {"mac", "vendor", "model", "names"} <= set(d)
    required = {"device", "start", "end", "bytes", "destination", "assistant", "confidence"}
    for u in doc["uploads"]:
        assert required <= set(u)
        assert u["file"] in {str(captures / HOMEPOD_FILE), str(captures / ECHO_FILE)}
    assert doc["top_destinations"][0]["bytes_up"] >= doc["top_destinations"][-1]["bytes_up"]
    with Store.open(data_dir / "spyglass.db") as store:
        stored = [(u.device_mac, u.start, u.bytes_up) for u in store.uploads()]
        assert len(store.captures()) == 2
    assert stored == [(u["device"], u["start"], u["bytes"]) for u in doc["uploads"]]


@pytest.mark.captures
def test_store_is_closed_when_the_command_returns(cli: Cli, captures: Path, tmp_path: Path) -> None:
    """The store closes on a thread while the summary is printed; the command still returns
    only once it is closed: the write-ahead log checkpointed into the file, and removed."""
    db = tmp_path / "x.db"
    ran = cli("analyze", captures / HOMEPOD_FILE, "--db", db)
    assert ran.rc == 0, ran.err
    assert "guzzoni.apple.com" in ran.out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x.db")) == ["x.db"]
    with Store.open(db) as store:
        assert [c.path for c in store.captures()] == [str((captures / HOMEPOD_FILE).resolve())]


@pytest.mark.captures
def test_series_go_to_the_store_as_they_settle(captures: Path, tmp_path: Path) -> None:
    """The CLI keeps no series in memory: they are staged as they settle and stored with the
    capture, the same rows the whole list would give."""
    from spyglass.adapters.oui import vendor_for_mac
    from spyglass.cli.analyze import analyze_paths
    from spyglass.core.analyze import analyze_file

    with Store.open(tmp_path / "x.db") as store:
        report = analyze_paths([captures / HOMEPOD_FILE], store=store)
        (out,) = report.outcomes
        assert out.result is not None and out.result.series == [] and out.capture_id
        stored = store._conn.execute(
            "SELECT device_mac, remote_ip, second, bytes_up, bytes_down, packets_up, "
            "packets_down FROM series ORDER BY 1, 2, 3"
        ).fetchall()
    whole = analyze_file(captures / HOMEPOD_FILE, vendor_lookup=vendor_for_mac).series
    assert stored == sorted(
        (p.device_mac, p.remote_ip, p.second, p.bytes_up, p.bytes_down, p.packets_up,
         p.packets_down)
        for p in whole
    )
    assert not list(tmp_path.glob(".spyglass-stage-*"))


@pytest.mark.captures
def test_only_the_last_files_pipeline_is_kept(captures: Path) -> None:
    """Each result may keep its pipeline (freeing a large one costs tens of ms at exit), but
    over many files they would add up: only the last file's stays."""
    from spyglass.cli.analyze import analyze_paths

    report = analyze_paths([captures / ECHO_FILE, captures / HOMEPOD_FILE], store=None)
    first, last = (o.result for o in report.outcomes)
    assert first is not None and last is not None
    assert first.pipeline is None and last.pipeline is not None


@pytest.mark.captures
def test_reanalysis_does_not_double(cli: Cli, captures: Path, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    first = cli("analyze", captures / HOMEPOD_FILE, "--db", db, "--json").json()
    # The same content under another name is the same capture.
    copy = tmp_path / "copy.pcap"
    shutil.copy(captures / HOMEPOD_FILE, copy)
    cli("analyze", copy, "--db", db)
    with Store.open(db) as store:
        assert len(store.captures()) == 1
        assert len(store.uploads()) == len(first["uploads"])
        rows = store.db.execute("SELECT COUNT(*) FROM series").fetchone()[0]
        flows = store.db.execute("SELECT COUNT(*) FROM flows").fetchone()[0]
    cli("analyze", captures / HOMEPOD_FILE, "--db", db)
    with Store.open(db) as store:
        assert store.db.execute("SELECT COUNT(*) FROM series").fetchone()[0] == rows
        assert store.db.execute("SELECT COUNT(*) FROM flows").fetchone()[0] == flows


@pytest.mark.captures
def test_truncated_capture(cli: Cli, captures: Path, tmp_path: Path, data_dir: Path) -> None:
    cut = tmp_path / "capture.pcap"
    cut.write_bytes((captures / ECHO_FILE).read_bytes()[:300_000])
    ran = cli("analyze", cut, captures / HOMEPOD_FILE)
    assert ran.rc == 1
    (line,) = ran.err.splitlines()
    assert line.startswith("capture.pcap: cut short at byte 299648 (")
    assert line.endswith("); kept 1,451 packets")
    assert "capture.pcap: 1,451 packets" in ran.out and "(cut short)" in ran.out
    assert f"{HOMEPOD_FILE}: 4,257 packets" in ran.out
    # What was read before the cut is stored.
    with Store.open(data_dir / "spyglass.db") as store:
        (cap,) = [c for c in store.captures() if c.path == str(cut)]
        assert cap.packets == 1451 and cap.problems[0].startswith("byte 299648: ")


@pytest.mark.captures
def test_bad_files_do_not_stop_the_others(cli: Cli, captures: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"GIF89a not a capture" * 10)
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.pcap"
    ran = cli("analyze", garbage, captures / ECHO_FILE, empty, missing, "--json")
    assert ran.rc == 1
    errors = ran.err.splitlines()
    assert errors[0].startswith("garbage.pcap: not a pcap or pcapng file")
    assert errors[0].endswith(" at byte 0; nothing was kept")
    assert errors[1] == "empty.pcap: empty file at byte 0; nothing was kept"
    assert errors[2] == "missing.pcap: cannot read: No such file or directory; nothing was kept"
    doc = ran.json()
    assert [f["failed"] for f in doc["files"]] == [True, False, True, True]
    assert doc["files"][1]["packets"] == 2778
    assert doc["files"][0]["error"] == errors[0]


def _corrupt_mid_file(src: Path, dst: Path, record: int) -> int:
    data = bytearray(src.read_bytes())
    assert data[:4] == b"\xd4\xc3\xb2\xa1"  # classic little-endian pcap
    off = 24
    for _ in range(record):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 0x7FFFFFFF)
    dst.write_bytes(data)
    return off


def test_corrupt_record_stops_early(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "home.pcap"
    assert cli("simulate", home, "--duration", "20", "--seed", "2").rc == 0
    bad = tmp_path / "bad.pcap"
    off = _corrupt_mid_file(home, bad, 50)
    ran = cli("analyze", bad, "--no-store")
    assert ran.rc == 1
    (line,) = ran.err.splitlines()
    assert line.startswith(f"bad.pcap: stopped early at byte {off} (")
    assert line.endswith("; kept 50 packets")


def test_no_store(cli: Cli, tmp_path: Path, data_dir: Path) -> None:
    home = tmp_path / "home.pcap"
    cli("simulate", home, "--duration", "20")
    ran = cli("analyze", home, "--no-store", "--json")
    assert ran.rc == 0
    assert ran.json()["db"] is None
    assert not (data_dir / "spyglass.db").exists()


def test_bad_lan(cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli("analyze", tmp_path / "x.pcap", "--lan", "10.0.0/33")
    assert exit_.value.code == 2
    assert "not a network in CIDR form" in capsys.readouterr().err


def test_lan_option_is_used(cli: Cli, tmp_path: Path) -> None:
    home = tmp_path / "home.pcap"
    cli("simulate", home, "--duration", "20")
    default = cli("analyze", home, "--no-store", "--json").json()
    # Declaring an unrelated LAN makes the household's hosts remote: what is "upstream" changes.
    other = cli("analyze", home, "--no-store", "--json", "--lan", "10.99.0.0/16").json()
    assert default["top_destinations"] != other["top_destinations"]


def test_store_failure_is_one_line(cli: Cli, tmp_path: Path) -> None:
    db = tmp_path / "not.db"
    db.write_bytes(b"plain text, not a database\n" * 100)
    ran = cli("analyze", tmp_path / "whatever.pcap", "--db", db)
    assert ran.rc == 2
    assert ran.err == (
        "spyglass: store: not a Spyglass database or damaged (file is not a database) "
        f"opening {db}; nothing was changed\n"
    )


def test_store_that_cannot_be_opened_stops_the_analysis(cli: Cli, tmp_path: Path) -> None:
    # The store opens on a thread while the file is read; its failure still ends everything
    # with one line and nothing on stdout.
    home = tmp_path / "home.pcap"
    cli("simulate", home, "--duration", "20")
    db = tmp_path / "a-directory.db"
    db.mkdir()
    ran = cli("analyze", home, "--db", db, "--json")
    assert ran.rc == 2
    assert ran.out == ""
    assert ran.err.startswith("spyglass: store: ") and str(db) in ran.err
    assert ran.err.count("\n") == 1


def test_simulate_and_demo(cli: Cli, tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "sim.pcap"
    ran = cli("simulate", out, "--duration", "30", "--seed", "5")
    assert ran.rc == 0
    assert ran.out.startswith(f"Wrote {out}: ") and "audio upload" in ran.out
    assert out.stat().st_size > 0
    demo = cli("demo", "--duration", "60")
    assert demo.rc == 0, demo.err
    assert demo.out.startswith("Simulated a household for 1 min 0 s") or "Simulated" in demo.out
    assert "Devices (" in demo.out
    assert (data_dir / "demo.db").is_file()
    assert not (data_dir / "spyglass.db").exists()
    doc = cli("demo", "--duration", "60", "--json").json()
    assert doc["devices"] and doc["files"][0]["packets"] > 0
    with Store.open(data_dir / "demo.db") as store:
        assert len(store.captures()) == 1  # a new demo replaces the previous household


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "300k") as mnt:
        yield mnt


@pytest.mark.root
@pytest.mark.captures
def test_disk_full_while_storing(
    cli: Cli, captures: Path, tmp_path: Path, small_tmpfs: Path
) -> None:
    home = tmp_path / "home.pcap"
    cli("simulate", home, "--duration", "300")
    db = small_tmpfs / "spyglass.db"
    ran = cli("analyze", "--db", db, captures / ECHO_FILE, home)
    assert ran.rc == 1
    assert ran.err == (
        f"home.pcap: not stored: store: disk full writing {db}; "
        "the capture's rows were not written, earlier data is intact\n"
    )
    # The summary still shows both files, and the first one's rows are in the store.
    assert "home.pcap: " in ran.out and f"{ECHO_FILE}: 2,778 packets" in ran.out
    with Store.open(db) as store:
        assert [Path(c.path).name for c in store.captures()] == [ECHO_FILE]


@pytest.mark.captures
def test_a_full_disk_while_staging_series(
    cli: Cli, captures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage filling up (SQLite's own error, raised where it would be) makes that file
    'not stored' with the reason; the summary still shows it and the other file is stored
    whole."""
    import sqlite3

    from spyglass.store import staging

    real_add = staging.SeriesStage.add
    calls: list[int] = []

    def add(self: staging.SeriesStage, points: list[SeriesPoint]) -> None:
        calls.append(len(points))
        if len(calls) == 1:  # the first file's first series
            raise sqlite3.OperationalError("database or disk is full")
        real_add(self, points)

    monkeypatch.setattr(staging.SeriesStage, "add", add)
    db = tmp_path / "x.db"
    ran = cli("analyze", "--db", db, captures / HOMEPOD_FILE, captures / ECHO_FILE)
    assert ran.rc == 1
    assert f"{HOMEPOD_FILE}: not stored: store: disk full staging series for {db}" in ran.err
    assert f"{HOMEPOD_FILE}: 4,257 packets" in ran.out
    with Store.open(db) as store:
        assert [Path(c.path).name for c in store.captures()] == [ECHO_FILE]
        assert store._conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] > 0
    assert not list(tmp_path.glob(".spyglass-stage-*"))
