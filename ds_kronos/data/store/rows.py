"""A split's rows as one array-like over pieces of several memory-mapped shard arrays, without copying them.

A split of a store is a list of segments (array, first row, rows): each symbol's rows within the split, in symbol
order, a symbol possibly in several shards (bars added by ``--append``). :class:`ConcatRows` answers the indexing
the window code does (integer arrays of rows, slices, single rows) by mapping each row to its segment.
"""

from __future__ import annotations

import numpy as np


class ConcatRows:
    """Rows ``[0, len)`` made of ``segments`` = [(array index, first row in that array, rows)] over ``arrays``."""

    def __init__(self, arrays: list[np.ndarray], segments: list[tuple[int, int, int]], tail: tuple[int, ...],
                 dtype: np.dtype):
        self._arrays = arrays
        seg = np.asarray(segments, dtype=np.int64).reshape(-1, 3)
        self._array_of, self._first, lengths = seg[:, 0], seg[:, 1], seg[:, 2]
        self._start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self._start[-1]), *tail)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(rows.shape + self.shape[1:], dtype=self.dtype)
        if rows.size == 0:
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row out of range 0..{len(self) - 1}")
        segment = np.searchsorted(self._start, rows, side="right") - 1
        local = self._first[segment] + rows - self._start[segment]
        which = self._array_of[segment]
        for a in np.unique(which):
            mask = which == a
            out[mask] = self._arrays[int(a)][local[mask]]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (rows, columns...): the rows gathered from the shards, then the rest applied
            rows = self[key[0]]
            lead = np.ndim(rows) - (len(self.shape) - 1)  # dimensions that come from the row index
            return rows[(slice(None),) * lead + tuple(key[1:])]
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([key]))[0]
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)
