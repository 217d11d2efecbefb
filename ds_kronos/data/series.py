"""One symbol's bars in memory while a dataset is being prepared, and the column conventions they follow.

Every source (Qlib provider, CSV files) produces :class:`SymbolSeries` objects; splitting, filtering and writing
work on those only, so the sources never need to know about the on-disk format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Column order of values.npy; the model's input projection depends on it, so it is part of the format.
VALUE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "vol", "amt")
CLOSE = VALUE_COLUMNS.index("close")
"""Column of the close in the [rows, 6] value layout (3)."""
# Column order of time_features.npy (Kronos' calendar embedding inputs).
TIME_FEATURE_COLUMNS: tuple[str, ...] = ("minute", "hour", "weekday", "day", "month")


@dataclass(frozen=True)
class SymbolSeries:
    """Bars of one symbol: ``timestamps`` int64 ns (strictly increasing), ``values`` float32 [rows, 6]."""

    symbol: str
    timestamps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def rows(self, start: int, stop: int) -> "SymbolSeries":
        return SymbolSeries(self.symbol, self.timestamps[start:stop], self.values[start:stop])


def derive_amount(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                  volume: np.ndarray) -> np.ndarray:
    """Traded value when the source has none: mean of OHLC times volume (upstream Kronos' convention)."""
    return (open_ + high + low + close) / 4.0 * volume


def stack_values(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
                 amount: np.ndarray | None) -> np.ndarray:
    """Source columns in the [rows, 6] layout of :data:`VALUE_COLUMNS`, float64 (screened before the cast)."""
    # Derive in float64 so the product of a price and a large volume does not lose digits before the cast.
    cols = [np.asarray(c, dtype=np.float64) for c in (open_, high, low, close, volume)]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by the screening, with its row
        amt = derive_amount(*cols) if amount is None else np.asarray(amount, dtype=np.float64)
    return np.stack(cols + [amt], axis=1)


def time_features(timestamps_ns: np.ndarray) -> np.ndarray:
    """Calendar features [rows, 5] (minute, hour, weekday Monday=0, day of month, month) as int8.

    They come from the bars' own wall-clock timestamps, so lunch breaks and overnight gaps are reflected as is.
    """
    index = pd.DatetimeIndex(np.asarray(timestamps_ns, dtype="datetime64[ns]"))
    columns = (index.minute, index.hour, index.day_of_week, index.day, index.month)
    return np.stack([np.asarray(c, dtype=np.int8) for c in columns], axis=1)


def infer_frequency(timestamps_ns: np.ndarray) -> str:
    """Median bar spacing as a pandas-style string ('5min', '1h', '1D'); '' when there are fewer than 2 bars."""
    if len(timestamps_ns) < 2:
        return ""
    seconds = int(round(float(np.median(np.diff(np.asarray(timestamps_ns, dtype=np.int64)))) / 1e9))
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class SourceData:
    """What a source produced: usable series plus what it skipped and why (for the summary)."""

    series: list[SymbolSeries]
    fields: list[str]
    freq: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (symbol or file, reason)
    notes: list[str] = field(default_factory=list)
    bad_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # symbol -> reason -> rows dropped
