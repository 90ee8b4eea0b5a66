from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from spyglass import __version__
from spyglass.cli.main import COMMANDS, build_parser
from tests.cli.conftest import Ran

Cli = Callable[..., Ran]


def test_help_without_command(cli: Cli) -> None:
    ran = cli()
    assert ran.rc == 0
    for name in ("analyze", "devices", "uploads", "simulate", "demo"):
        assert name in ran.out


def test_registry_skips_modules_not_written_yet() -> None:
    _, handlers = build_parser([*COMMANDS, ("later", "spyglass.cli.not_written_yet")])
    assert {"analyze", "devices", "uploads", "simulate", "demo"} <= set(handlers)
    assert "later" not in handlers


def test_registry_reports_broken_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "brokencmd.py"
    pkg.write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        build_parser([("broken", "brokencmd")])


def test_entry_point_runs(tmp_path: Path) -> None:
    env = {**os.environ, "SPYGLASS_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "spyglass", "--version"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == f"spyglass {__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "spyglass", "uploads", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0 and done.stdout.strip() == '{"uploads": []}'
    script = Path(sys.executable).parent / "spyglass"
    if script.exists():
        done = subprocess.run([script, "devices"], capture_output=True, text=True, env=env)
        assert done.returncode == 0 and "No data yet" in done.stderr


def test_packet_commands_exit_quickly_without_losing_output(tmp_path: Path) -> None:
    # analyze ends with os._exit (no interpreter teardown): its whole output, the stored
    # database and the exit status must still be there, through pipes.
    env = {**os.environ, "SPYGLASS_DATA_DIR": str(tmp_path)}
    capture = tmp_path / "home.pcap"
    sim = [sys.executable, "-m", "spyglass", "simulate", str(capture), "--duration", "120"]
    assert subprocess.run(sim, capture_output=True, env=env).returncode == 0
    db = tmp_path / "s.db"
    cmd = [sys.executable, "-m", "spyglass", "analyze", str(capture), "--db", str(db), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # complete: it parses
    assert report["devices"] and report["files"][0]["packets"] > 0
    listed = subprocess.run(
        [sys.executable, "-m", "spyglass", "devices", "--db", str(db), "--json"],
        capture_output=True, text=True, env=env,
    )
    assert len(json.loads(listed.stdout)["devices"]) == len(report["devices"])
    missing = subprocess.run(
        [sys.executable, "-m", "spyglass", "analyze", str(tmp_path / "none.pcap"), "--db",
         str(db)], capture_output=True, text=True, env=env,
    )
    assert missing.returncode == 1 and "none.pcap: cannot read" in missing.stderr


def test_only_the_chosen_command_is_loaded() -> None:
    # A fresh interpreter: what `spyglass status` imports, not what this test process has.
    code = (
        "import sys; from spyglass.cli import main as m; "
        "p, h = m.build_parser(only=m.chosen_command(['status', '--json'])); "
        "print(sorted(h), 'sqlite_utils' in sys.modules, 'spyglass.cli.analyze' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["['status']", "False", "False"]


@pytest.mark.parametrize(
    ("argv", "chosen"),
    [(["analyze", "x.pcap"], "analyze"), (["--version"], None), ([], None),
     (["bogus"], None), (["--json", "uploads"], "uploads")],
)  # fmt: skip
def test_chosen_command(argv: list[str], chosen: str | None) -> None:
    from spyglass.cli.main import chosen_command

    assert chosen_command(argv) == chosen
