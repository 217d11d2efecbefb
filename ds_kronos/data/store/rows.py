"""A split's rows as one array-like over pieces of several memory-mapped shard arrays, without copying them.

A split of a store is a list of segments (array, first row, rows): each symbol's rows within the split, in symbol
order, a symbol possibly in several shards (bars added by ``--append``). :class:`ConcatRows` answers the indexing
the window code does (integer arrays of rows, slices, single rows, (rows, column) pairs) by mapping each row to its
segment; the values, timestamps and time features of a split share one :class:`Segments`, which keeps the last
mapping, so a batch's rows are located once for all three.
"""

from __future__ import annotations

import numpy as np


class Segments:
    """Rows ``[0, len)`` made of ``segments`` = [(array index, first row in that array, rows)]."""

    def __init__(self, segments: list[tuple[int, int, int]], arrays: int):
        seg = np.asarray(segments, dtype=np.int64).reshape(-1, 3)
        self._array_of, self._first, lengths = seg[:, 0], seg[:, 1], seg[:, 2]
        self._start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.rows = int(self._start[-1])
        self.arrays = arrays
        self._last: tuple[np.ndarray, tuple] | None = None

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, list[tuple[int, np.ndarray | None]]]:
        """(row within its array, [(array, mask of the rows it holds, or None for all)])."""
        if self._last is not None and self._last[0] is rows:
            return self._last[1]
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"row out of range 0..{self.rows - 1}")
        segment = self._segment_of_runs(rows)
        if segment is None:
            segment = np.searchsorted(self._start, rows, side="right") - 1
        else:  # one segment per run of consecutive rows (a window): located once, masks over windows not rows
            local = self._first[segment][:, None] + rows - self._start[segment][:, None]
            return self._remember(rows, local, self._array_of[segment])
        local = self._first[segment] + rows - self._start[segment]
        which = self._array_of[segment]
        return self._remember(rows, local, which)

    def _remember(self, rows: np.ndarray, local: np.ndarray, which: np.ndarray) -> tuple:
        present = np.flatnonzero(np.bincount(which.reshape(-1), minlength=self.arrays)) if which.size else []
        parts = [(int(present[0]), None)] if len(present) == 1 else [(int(a), which == a) for a in present]
        self._last = (rows, (local, parts))
        return local, parts

    def _segment_of_runs(self, rows: np.ndarray) -> np.ndarray | None:
        """For [windows, T] rows that run consecutively along each window, each window's segment when the whole
        window lies in it (the usual case: only a window across an appended boundary spans two); else None."""
        if rows.ndim != 2 or rows.shape[1] < 2 or not rows.size or not (np.diff(rows, axis=1) == 1).all():
            return None
        first = np.searchsorted(self._start, rows[:, 0], side="right") - 1
        last = np.searchsorted(self._start, rows[:, -1], side="right") - 1
        return first if np.array_equal(first, last) else None


class ConcatRows:
    """One array (values, timestamps or time features) of a split, over the shards' memory-mapped arrays."""

    def __init__(self, arrays: list[np.ndarray], segments: Segments, tail: tuple[int, ...], dtype: np.dtype):
        self._arrays, self._segments = arrays, segments
        self.shape = (segments.rows, *tail)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = rows if isinstance(rows, np.ndarray) and rows.dtype == np.int64 else np.asarray(rows, np.int64)
        local, parts = self._segments.locate(rows)
        if len(parts) == 1 and parts[0][1] is None:
            return np.asarray(self._arrays[parts[0][0]][local])
        out = np.empty(rows.shape + self.shape[1:], dtype=self.dtype)
        for a, mask in parts:
            out[mask] = self._arrays[a][local[mask]]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (rows, columns...): the rows gathered from the shards, then the rest applied
            rows = self[key[0]]
            lead = np.ndim(rows) - (len(self.shape) - 1)  # dimensions that come from the row index
            return rows[(slice(None),) * lead + tuple(key[1:])]
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"row {key} out of range 0..{len(self) - 1}")
            return self.take(np.array([key % len(self)]))[0]
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        whole = self.take(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)
