"""Cutting each symbol's bars into train/val/test, by date ranges or by time-ordered fractions.

Date ranges may overlap on purpose (upstream's defaults start val and test a few months before the previous split
ends) so the first windows of a split have their lookback. Fraction splits get the same effect explicitly: val and
test start ``lookback`` bars before their first target bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ds_kronos.data.manifest import SPLITS
from ds_kronos.data.series import SymbolSeries


@dataclass(frozen=True)
class DateRange:
    """[start, stop) in ns; a date-only end such as 2022-12-31 includes that whole day."""

    start: int
    stop: int
    text: str

    def __str__(self) -> str:
        return self.text


def parse_range(value: object) -> DateRange:
    """Parse 'START,END' (or a two-item list); raises ValueError with a readable message."""
    parts = [str(p).strip() for p in (value if isinstance(value, (list, tuple)) else str(value).split(","))]
    parts = [p for p in parts if p]
    if len(parts) != 2:
        raise ValueError(f"expected START,END, got {value!r}")
    try:
        start, end = pd.Timestamp(parts[0]), pd.Timestamp(parts[1])
    except (ValueError, TypeError):
        raise ValueError(f"cannot parse dates in {value!r}") from None
    # A bare date as the end means "through that day", which is what people expect from 2022-12-31.
    stop = end + pd.Timedelta(days=1) if end == end.normalize() and len(parts[1]) <= 10 else end + pd.Timedelta(1)
    if stop <= start:
        raise ValueError(f"range {value!r} ends before it starts")
    return DateRange(int(start.value), int(stop.value), f"{parts[0]}..{parts[1]}")


@dataclass
class SplitResult:
    series: dict[str, list[SymbolSeries]]
    # split -> symbols dropped from that split because they have fewer rows than one window there
    too_short: dict[str, list[str]] = field(default_factory=dict)


def split_by_ranges(series: list[SymbolSeries], ranges: dict[str, DateRange], window: int) -> SplitResult:
    result = SplitResult({name: [] for name in SPLITS}, {name: [] for name in SPLITS})
    for s in series:
        for name in SPLITS:
            r = ranges[name]
            lo, hi = np.searchsorted(s.timestamps, [r.start, r.stop], side="left")
            _keep(result, name, s.rows(int(lo), int(hi)), window)
    return result


def split_by_fractions(series: list[SymbolSeries], fractions: tuple[float, float, float], lookback: int,
                       window: int) -> SplitResult:
    """Cut at common timestamps (quantiles of all bar times), so every symbol's test period is the same."""
    result = SplitResult({name: [] for name in SPLITS}, {name: [] for name in SPLITS})
    stamps = np.unique(np.concatenate([s.timestamps for s in series]))
    n = len(stamps)
    bounds = np.cumsum([0.0, *fractions])
    cut_index = [min(int(round(b * n)), n) for b in bounds]
    # Times at which each split's targets begin / end; the last split runs to the end when fractions sum to 1.
    cut_time = [int(stamps[i]) if i < n else int(stamps[-1]) + 1 for i in cut_index]
    for s in series:
        edges = np.searchsorted(s.timestamps, cut_time, side="left")
        for k, name in enumerate(SPLITS):
            first_target, stop = int(edges[k]), int(edges[k + 1])
            begin = first_target if k == 0 else max(0, first_target - lookback)
            _keep(result, name, s.rows(begin, stop), window)
    return result


def _keep(result: SplitResult, name: str, part: SymbolSeries, window: int) -> None:
    if len(part) >= window:
        result.series[name].append(part)
    elif len(part) > 0:
        result.too_short[name].append(part.symbol)
