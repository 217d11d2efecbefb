"""One split of a dataset as the window code reads it: values, timestamps and time features by row, and the
offsets that say which rows belong to which symbol. A prepared folder (format 1) gives memory-mapped arrays; a
store (format 2) gives row views over its shards (:class:`ds_kronos.data.store.rows.ConcatRows`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SplitArrays:
    """One split of a prepared dataset: memory-mapped arrays plus the symbol names in row order."""

    name: str
    values: np.ndarray
    timestamps: np.ndarray
    time_features: np.ndarray
    offsets: np.ndarray
    symbols: tuple[str, ...]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def symbol_rows(self, symbol: str) -> slice:
        i = self.symbols.index(symbol)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))
