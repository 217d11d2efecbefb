"""Timestamps of the bars to forecast: continuing a series' own calendar, or read from a file.

A series' calendar is inferred from its own timestamps (wall clock, as the data preparation keeps them):

* bars a day apart or closer (intraday and daily bars): the *session* is the set of times of day at which the
  series has bars, the *trading days* are the weekdays on which it has any (a history shorter than three weeks
  cannot show that a weekday is closed: Monday to Friday then count as trading days too). Future bars take the
  session times left on the last day, then every session time of each next trading day, so lunch breaks,
  overnight gaps and weekends are kept. A time of day seen on fewer than half as many days as the most common
  one (a stray or shortened-session bar) is not part of the session. Exchange holidays cannot be inferred from
  one series and are not skipped: give the real calendar with ``--future_timestamps`` where that matters.
* longer bars (weekly, monthly): pandas' inferred frequency of the last bars where it finds one (so month ends
  stay month ends), else the median spacing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ds_kronos.data.csv_source import TIME_NAMES
from ds_kronos.errors import DataError

DAY_NS = 86_400 * 10**9
THURSDAY = 3  # 1970-01-01, day 0 of the epoch, was a Thursday (Monday = 0)
SURE_OF_WEEKDAYS_NS = 21 * DAY_NS  # a weekday absent from three weeks of bars is taken as closed


def weekday(days: np.ndarray) -> np.ndarray:
    """Weekday (Monday = 0) of days counted from the epoch."""
    return (np.asarray(days) + THURSDAY) % 7


def continue_timestamps(history_ns: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` bar timestamps (int64 ns) after ``history_ns`` (sorted), on the series' own calendar."""
    ts = np.asarray(history_ns, dtype=np.int64)
    if ts.size < 2:
        raise DataError("cannot continue a calendar from fewer than 2 bars; give --future_timestamps")
    spacing = int(np.median(np.diff(ts)))
    if spacing <= DAY_NS:
        return _session_calendar(ts, count)
    try:
        with warnings.catch_warnings():
            # pandas 3 announces that infer_freq will return an offset instead of a string: date_range takes both.
            warnings.simplefilter("ignore", DeprecationWarning)
            freq = pd.infer_freq(pd.DatetimeIndex(ts[-min(ts.size, 25):].astype("datetime64[ns]")))
    except (TypeError, ValueError):
        freq = None
    if freq:
        future = pd.date_range(start=pd.Timestamp(ts[-1]), periods=count + 1, freq=freq)[1:]
        return future.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return ts[-1] + spacing * np.arange(1, count + 1, dtype=np.int64)


def _session_calendar(ts: np.ndarray, count: int) -> np.ndarray:
    times, days_seen = np.unique(ts % DAY_NS, return_counts=True)  # timestamps are unique: one bar per day
    session = times[days_seen * 2 >= days_seen.max()]
    trading = np.unique(weekday(ts // DAY_NS))
    if ts[-1] - ts[0] < SURE_OF_WEEKDAYS_NS:
        trading = np.union1d(trading, np.arange(5))
    # Enough calendar days for `count` bars: whole weeks of the trading days, plus the partial last day.
    weeks = count // (len(session) * len(trading)) + 2
    days = np.arange(ts[-1] // DAY_NS, ts[-1] // DAY_NS + 7 * weeks + 1, dtype=np.int64)
    days = days[np.isin(weekday(days), trading)]
    grid = (days[:, None] * DAY_NS + session[None, :]).ravel()
    return grid[grid > ts[-1]][:count]


def read_timestamps(path: str | Path) -> np.ndarray:
    """Sorted unique int64 ns timestamps from a CSV file: its time column (timestamps, timestamp, date, datetime
    or time, any case), else its only column. Time zones are dropped (wall clock), as the data reader does."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read timestamps ({str(exc).splitlines()[0]})") from None
    columns = {str(c).strip().lower(): c for c in frame.columns}
    column = next((columns[n] for n in TIME_NAMES if n in columns), None)
    if column is None:
        if len(frame.columns) != 1:
            raise DataError(f"{path}: no time column (one of {', '.join(TIME_NAMES)}) among "
                            f"{', '.join(map(str, frame.columns))}")
        column = frame.columns[0]
    stamps = pd.to_datetime(frame[column].dropna(), errors="coerce")
    if stamps.isna().any():
        bad = frame[column].dropna()[stamps.isna()].iloc[0]
        raise DataError(f"{path}: cannot parse time {bad!r}")
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_localize(None)
    values = np.unique(stamps.to_numpy().astype("datetime64[ns]").astype(np.int64))
    if values.size == 0:
        raise DataError(f"{path}: no timestamps")
    return values


def timestamps_after(available: np.ndarray, last_ns: int, count: int, source: str, symbol: str) -> np.ndarray:
    """The first ``count`` of ``available`` timestamps after a series' last bar."""
    after = available[available > last_ns][:count]
    if after.size < count:
        raise DataError(f"{source}: {after.size} timestamp(s) after the last bar of {symbol} "
                        f"({pd.Timestamp(last_ns)}), --pred_len needs {count}")
    return after
