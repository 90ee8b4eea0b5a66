"""Where the database lives: platformdirs' user data dir, private to the user."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

APP = "spyglass"
DB_NAME = "spyglass.db"
DEMO_DB_NAME = "demo.db"
# Lets tests, CI and packagers keep Spyglass out of the real home directory.
DATA_DIR_ENV = "SPYGLASS_DATA_DIR"


def data_dir() -> Path:
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override) if override else Path(user_data_dir(APP))


def default_db_path() -> Path:
    return data_dir() / DB_NAME


def demo_db_path() -> Path:
    """The demo's own database, so simulated traffic never mixes with real observations."""
    return data_dir() / DEMO_DB_NAME


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by the owner only; existing dirs are left alone."""
    if path.is_dir():
        return
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask, which may be looser or stricter than we want.
    os.chmod(path, 0o700)


def ensure_private_file(path: Path) -> None:
    """Create an empty file with mode 0600 unless it exists (SQLite gives -wal/-shm the same)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, 0o600)
