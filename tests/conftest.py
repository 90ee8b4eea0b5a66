"""Shared fixtures: where the real captures live, and a skip (or, in CI, a failure) without them."""

from __future__ import annotations

import csv
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "captures"


def captures_dir() -> Path:
    """The real labelled captures, or a skip with the reason (a hard failure in CI)."""
    if not (CAPTURES / "labels.csv").is_file():
        msg = f"real captures not found at {CAPTURES} (they live in ../shared beside the checkout)"
        if os.environ.get("SPYGLASS_REQUIRE_CAPTURES"):
            pytest.fail(msg)
        pytest.skip(msg)
    return CAPTURES


@pytest.fixture
def captures() -> Path:
    return captures_dir()


@pytest.fixture
def labels(captures: Path) -> list[dict[str, str]]:
    with open(captures / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@contextmanager
def mounted_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real small filesystem (root only; skips otherwise) for disk-full tests."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
