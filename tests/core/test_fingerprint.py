"""A capture's identity: the same content gives the same fingerprint, other content another."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from spyglass.core.fingerprint import BLOCK, END_BYTES, STRIDE, capture_fingerprint, sample_spans


def poke(path: Path, offset: int, value: bytes = b"\x01") -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(value)


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)  # zeros without writing them
    return path


def test_same_content_same_fingerprint_and_size(tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(data)
    b.write_bytes(data)
    fa = capture_fingerprint(a)
    assert fa == capture_fingerprint(b)
    assert fa[0].startswith("fp1:") and fa[1] == len(data)


def test_small_files_are_hashed_whole(tmp_path: Path) -> None:
    # Up to 2 x END_BYTES every byte counts: flip each of a few spread-out bytes in turn.
    path = tmp_path / "small.pcap"
    path.write_bytes(os.urandom(2 * END_BYTES))
    base = capture_fingerprint(path)[0]
    for offset in (0, 1234, END_BYTES - 1, END_BYTES, END_BYTES + 77_777, 2 * END_BYTES - 1):
        original = path.read_bytes()[offset : offset + 1]
        poke(path, offset, bytes([original[0] ^ 0xFF]))
        assert capture_fingerprint(path)[0] != base, offset
        poke(path, offset, original)
    assert capture_fingerprint(path)[0] == base


def test_large_files_changed_at_a_sampled_place_or_in_size(tmp_path: Path) -> None:
    path = sparse(tmp_path / "big.pcap", 100 << 20)
    base = capture_fingerprint(path)[0]
    spans = sample_spans(100 << 20)
    for offset in (0, END_BYTES - 1, spans[1][0], spans[len(spans) // 2][0] + BLOCK - 1,
                   (100 << 20) - 1):  # fmt: skip
        poke(path, offset)
        assert capture_fingerprint(path)[0] != base, offset
        poke(path, offset, b"\x00")
    with open(path, "ab") as fh:
        fh.write(b"\x00")  # the same bytes plus one: another file
    assert capture_fingerprint(path)[0] != base


def test_a_change_between_samples_is_not_seen(tmp_path: Path) -> None:
    # The documented price of sampling: an edit in place, of the same size, that misses every
    # sampled block and both ends keeps the identity.
    path = sparse(tmp_path / "big.pcap", 100 << 20)
    base = capture_fingerprint(path)[0]
    poke(path, END_BYTES + STRIDE // 2)
    assert capture_fingerprint(path)[0] == base


@pytest.mark.parametrize("size", [0, 1, END_BYTES, 2 * END_BYTES, 2 * END_BYTES + 1,
                                  2 * END_BYTES + STRIDE, 1 << 30, (1 << 30) + 12_345])  # fmt: skip
def test_sample_spans_cover_both_ends_in_order(size: int) -> None:
    spans = sample_spans(size)
    assert sum(n for _, n in spans) <= max(size, 0)
    if size == 0:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == size
    ends = [at + n for at, n in spans]
    assert all(e <= nxt for e, (nxt, _) in zip(ends, spans[1:], strict=False))
    if size <= 2 * END_BYTES:
        assert spans == [(0, size)]
    else:
        assert sum(n for _, n in spans) <= 2 * END_BYTES + BLOCK * (size // STRIDE)


def test_every_real_capture_has_its_own_fingerprint(captures: Path) -> None:
    files = sorted(p for p in captures.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    assert files
    prints = {capture_fingerprint(p)[0] for p in files}
    contents = {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    assert len(prints) == len(contents)


def test_unreadable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        capture_fingerprint(tmp_path / "missing.pcap")
