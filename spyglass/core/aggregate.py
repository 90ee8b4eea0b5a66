"""Group-by-and-sum over packet arrays, without a Python loop per packet.

Composite keys (MAC, address halves, protocol, port, time bin) are folded into one 64-bit hash;
np.unique on that is a fast integer sort. A collision would need two keys among a batch's few
thousand to share 64 bits (odds ~1e-12), and would merge two flows' counts, never crash.

Packets of one flow come in bursts, so a batch is first cut into :func:`runs` of consecutive
rows with equal key columns (an exact comparison, no hashing): the hashing and sorting then
work on one entry per run (a few hundred per batch where there are ~17k rows), with the runs'
sums (:func:`run_sums`) as weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from spyglass.core.frames import I64, U64

_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_S31 = np.uint64(31)
_S29 = np.uint64(29)


def mix(*columns: npt.NDArray[np.generic]) -> U64:
    """One uint64 hash per row of the given integer columns (same length)."""
    h = np.zeros(columns[0].shape, dtype=np.uint64)
    for col in columns:
        h ^= col.astype(np.uint64, copy=False)
        h *= _K1
        h ^= h >> _S29
        h *= _K2
        h ^= h >> _S31
    return h


def runs(*columns: npt.NDArray[np.generic]) -> I64:
    """Start row of every run of consecutive rows equal in all ``columns`` (same length >= 1)."""
    n = columns[0].shape[0]
    new = np.empty(n, np.bool_)
    new[0] = True
    if n > 1:
        tail = new[1:]
        np.not_equal(columns[0][1:], columns[0][:-1], out=tail)
        step = np.empty(n - 1, np.bool_)
        for col in columns[1:]:
            np.not_equal(col[1:], col[:-1], out=step)
            tail |= step
    return np.flatnonzero(new)


def run_sums(values: npt.NDArray[np.generic], starts: I64) -> I64:
    """Sum of ``values`` over every run (``starts`` from :func:`runs`), as int64."""
    out: I64 = np.add.reduceat(values, starts, dtype=np.int64)
    return out


@dataclass(slots=True)
class Groups:
    """Result of :func:`group`: one entry per distinct key."""

    first: I64  # index (into the grouped rows) of the first row of each group
    inverse: I64  # group number of every row
    size: int

    def sum(self, values: npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_]) -> I64:
        return np.bincount(self.inverse, weights=values, minlength=self.size).astype(np.int64)

    def count(self) -> I64:
        return np.bincount(self.inverse, minlength=self.size).astype(np.int64)

    def max(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
        out = np.full(self.size, -np.inf)
        np.maximum.at(out, self.inverse, values.astype(np.float64))
        return out

    def min(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
        out = np.full(self.size, np.inf)
        np.minimum.at(out, self.inverse, values.astype(np.float64))
        return out


def group(keys: U64) -> tuple[U64, Groups]:
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return uniq, Groups(first.astype(np.int64), inverse.astype(np.int64).ravel(), len(uniq))
