"""Rolling forecast origins over a prepared split, and the normalised windows around them.

An origin is identified by its first forecast row ``o`` (an index into the split's arrays): the history is rows
``o - lookback .. o - 1`` and the realised future rows ``o .. o + pred_len - 1``, all of one symbol. The
*origin date* is the timestamp of the last history bar (when the forecast is made).

Origins sit on one calendar grid shared by all symbols, so that the cross-sectional IC has many symbols per
date: the calendar is the sorted set of the split's timestamps, and the grid takes every ``stride``-th calendar
bar starting at bar ``lookback - 1`` (the first date any symbol can have a full history). A symbol contributes
an origin at every grid date where it has a bar, ``lookback`` bars of its own history and ``pred_len`` bars
after it inside its rows of the split; a suspended day on a grid date only costs that symbol that origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ds_kronos.data.normalise import normalise_windows
from ds_kronos.data.prepared import SplitArrays


@dataclass(frozen=True)
class Origins:
    """Forecast origins in row order: ``rows`` int64 [n] first forecast rows, ``symbols`` int64 [n] indices."""

    rows: np.ndarray
    symbols: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def for_rank(self, rank: int, world_size: int) -> "Origins":
        """The origins of symbols rank, rank + world_size, ... (each symbol is forecast by one rank)."""
        keep = self.symbols % world_size == rank
        return Origins(self.rows[keep], self.symbols[keep])

    def dates(self, timestamps: np.ndarray) -> np.ndarray:
        """Origin dates (timestamp of the last history bar), int64 ns."""
        return np.asarray(timestamps[self.rows - 1], dtype=np.int64)


def build_origins(timestamps: np.ndarray, offsets: np.ndarray, lookback: int, pred_len: int, stride: int,
                  max_per_symbol: int | None = None) -> Origins:
    """Origins of one split (see the module docstring); ``max_per_symbol`` keeps each symbol's latest ones."""
    timestamps = np.asarray(timestamps, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_rows, n_symbols = int(offsets[-1]), len(offsets) - 1
    empty = Origins(np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n_rows == 0:
        return empty
    calendar = np.unique(timestamps)
    grid = calendar[lookback - 1::stride]
    if grid.size == 0:
        return empty
    lengths = np.diff(offsets)
    symbol_of_row = np.repeat(np.arange(n_symbols, dtype=np.int64), lengths)
    row = np.arange(n_rows, dtype=np.int64)
    local = row - offsets[symbol_of_row]  # position of the row inside its symbol
    # `row` is the last history bar: lookback bars up to and including it, pred_len bars after it.
    fits = (local >= lookback - 1) & (local + pred_len < lengths[symbol_of_row])
    last_history = row[fits & np.isin(timestamps, grid)]
    symbols = symbol_of_row[last_history]
    if max_per_symbol is not None and last_history.size:
        counts = np.bincount(symbols, minlength=n_symbols)
        first = np.concatenate([[0], np.cumsum(counts)])[symbols]  # rows are grouped by symbol, in time order
        position = np.arange(last_history.size) - first
        keep = position >= counts[symbols] - max_per_symbol
        last_history, symbols = last_history[keep], symbols[keep]
    return Origins(last_history + 1, symbols)


@dataclass(frozen=True)
class OriginWindows:
    """History + realised future around origins, normalised by each origin's own history.

    ``norm`` float32 [n, lookback + pred_len, 6] is clipped to [-clip, clip]; ``mean``/``std`` float32 [n, 1, 6]
    are the population mean/std of the history rows; ``raw`` holds the original values and ``stamp`` float32
    [n, lookback + pred_len, 5] the time features.
    """

    raw: np.ndarray
    norm: np.ndarray
    stamp: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def origin_windows(split: SplitArrays, rows: np.ndarray, lookback: int, pred_len: int,
                   clip: float) -> OriginWindows:
    """Windows of the given origins, normalised exactly as :class:`ds_kronos.data.WindowDataset` does."""
    index = np.asarray(rows, dtype=np.int64)[:, None] + np.arange(-lookback, pred_len, dtype=np.int64)
    raw = np.asarray(split.values[index], dtype=np.float32)
    norm, mean, std = normalise_windows(raw, lookback, clip)
    stamp = split.time_features[index].astype(np.float32)
    return OriginWindows(raw=raw, norm=norm, stamp=stamp, mean=mean, std=std)
