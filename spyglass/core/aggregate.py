"""Group-by-and-sum over packet arrays, without a Python loop per packet.

Composite keys (MAC, address halves, protocol, port, time bin) are folded into one 64-bit hash;
np.unique on that is a fast integer sort. A collision would need two keys among a batch's few
thousand to share 64 bits (odds ~1e-12), and would merge two flows' counts, never crash.
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
