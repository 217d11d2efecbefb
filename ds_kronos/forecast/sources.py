"""The series to forecast: CSV files or Qlib symbols, read as ``launch/prepare_data.py`` reads them, each cut to
its last ``lookback`` bars, with the timestamps of the bars to forecast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ds_kronos.data.csv_source import read_csv_files
from ds_kronos.data.qlib_source import read_qlib
from ds_kronos.data.series import SymbolSeries
from ds_kronos.errors import DataError
from ds_kronos.forecast.calendar import continue_timestamps, read_timestamps, timestamps_after
from ds_kronos.forecast.config import ForecastConfig

# Calendar days of history read per lookback bar from a Qlib folder: room for suspensions before the last bars.
QLIB_HISTORY_FACTOR = 2


@dataclass(frozen=True)
class Inputs:
    """Series to forecast (each its last ``lookback`` bars) in a fixed order, their future bar timestamps (int64
    ns [pred_len] each), and the (symbol or file, reason) of those left out."""

    series: list[SymbolSeries]
    future: list[np.ndarray]
    skipped: list[tuple[str, str]]
    source: str


def qlib_history_range(qlib_dir: str, end: str | None, lookback: int) -> tuple[str, str]:
    """(first, last) day to read: ``end`` (default: the provider's last calendar day) and enough calendar days
    before it for ``lookback`` bars with some suspended days."""
    calendar_file = Path(qlib_dir).expanduser() / "calendars" / "day.txt"
    if not calendar_file.is_file():
        raise DataError(f"{qlib_dir}: not a Qlib provider folder with daily data (missing calendars/day.txt)")
    days = pd.DatetimeIndex(pd.to_datetime(calendar_file.read_text().split()))
    if days.empty:
        raise DataError(f"{calendar_file}: empty calendar")
    try:
        last = pd.Timestamp(end) if end else days[-1]
    except ValueError:
        raise DataError(f"--end {end!r}: not a date") from None
    position = int(days.searchsorted(last, side="right")) - 1
    if position < 0:
        raise DataError(f"--end {end}: before the first day of {calendar_file} ({days[0].date()})")
    first = days[max(0, position - QLIB_HISTORY_FACTOR * lookback)]
    return str(first.date()), str(days[position].date())


def read_series(config: ForecastConfig) -> tuple[list[SymbolSeries], list[tuple[str, str]], str]:
    if config.csv:
        data = read_csv_files(config.csv)
        if data.skipped:
            # Every file was named by the user: forecasting only some of them would hide a problem.
            more = f" (and {len(data.skipped) - 1} more file(s) unusable)" if len(data.skipped) > 1 else ""
            raise DataError(data.skipped[0][1] + more)
        return data.series, [], f"{len(config.csv)} CSV file(s)"
    first, last = qlib_history_range(config.qlib_dir, config.end, config.lookback)
    data = read_qlib(config.qlib_dir, config.instrument, first, last)
    return data.series, list(data.skipped), f"{config.qlib_dir} ({config.instrument}, {first}..{last})"


def load_inputs(config: ForecastConfig) -> Inputs:
    """Read, cut and date every series; raises DataError when nothing can be forecast."""
    series, skipped, source = read_series(config)
    usable = [s for s in series if len(s) >= config.lookback]
    skipped += [(s.symbol, f"{len(s)} bars, --lookback needs {config.lookback}") for s in series
                if len(s) < config.lookback]
    if not usable:
        symbol, reason = skipped[0] if skipped else ("", "no series")
        raise DataError(f"nothing to forecast: {symbol}: {reason}" + (
            f" (and {len(skipped) - 1} more series skipped)" if len(skipped) > 1 else ""))
    future = []
    available = read_timestamps(config.future_timestamps) if config.future_timestamps else None
    for s in usable:
        if available is not None:
            future.append(timestamps_after(available, int(s.timestamps[-1]), config.pred_len,
                                           config.future_timestamps, s.symbol))
            continue
        try:  # the whole history, not only the lookback, shows the series' calendar
            future.append(continue_timestamps(s.timestamps, config.pred_len))
        except DataError as exc:
            raise DataError(f"{s.symbol}: {exc}") from None
    cut = [s.rows(len(s) - config.lookback, len(s)) for s in usable]
    return Inputs(cut, future, skipped, source)
