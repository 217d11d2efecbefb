"""A synthetic market's bar grid: business days, and within a day the bars of its sessions (an intraday bar is
labelled with its end time; the last bar of a session may be shorter), with each bar's seasonal scale and the share
of its variance that falls in the gap before it opens (overnight, or a lunch break).

A day's variance is spread over its bars: the gaps take ``overnight`` (before the first bar) and ``lunch`` (before
the first bar of each later session); the rest follows the trading minutes weighted by the U-shape
``1 + u_shape (2x - 1)^2`` (x: the bar's middle as a fraction of the trading day). A bar's scale s is the square
root of its share times the bars per day, so that s^2 averages 1 over a day. Daily bars: one bar, s = 1, gap
``overnight``. Everything is a function of a bar's wall-clock time, so the oracle finds it from timestamps alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ds_kronos.data.synthetic.spec import frequency_minutes, session_minutes
from ds_kronos.errors import DataError

NS_PER_MINUTE = 60 * 10**9
NS_PER_DAY = 24 * 60 * NS_PER_MINUTE


@dataclass(frozen=True)
class DayTemplate:
    """The bars of one trading day: end time (ns after midnight), seasonal scale s, gap share of the variance."""

    offsets: np.ndarray  # int64 [K]
    scale: np.ndarray    # float64 [K]
    gap: np.ndarray      # float64 [K] in [0, 1)

    @property
    def bars_per_day(self) -> int:
        return int(self.offsets.shape[0])


def day_template(sessions: list[str] | tuple[str, ...], freq: str, overnight: float, lunch: float,
                 u_shape: float) -> DayTemplate:
    minutes = frequency_minutes(freq)
    if minutes == 0:
        return DayTemplate(np.zeros(1, np.int64), np.ones(1), np.array([overnight]))
    ends, durations, gaps = [], [], []
    for i, (start, end) in enumerate(session_minutes(list(sessions))):
        for bar_start in range(start, end, minutes):
            ends.append(min(bar_start + minutes, end))
            durations.append(ends[-1] - bar_start)
            gaps.append((overnight if i == 0 else lunch) if bar_start == start else 0.0)
    d = np.asarray(durations, dtype=np.float64)
    middle = (np.cumsum(d) - d / 2.0) / d.sum()
    rate = d * (1.0 + u_shape * (2.0 * middle - 1.0) ** 2)
    gap = np.asarray(gaps)
    share = (1.0 - gap.sum()) * rate / rate.sum() + gap
    return DayTemplate(np.asarray(ends, dtype=np.int64) * NS_PER_MINUTE, np.sqrt(share * len(d)), gap / share)


def first_day(start: str) -> np.datetime64:
    """The first business day on or after ``start`` (YYYY-MM-DD)."""
    return np.busday_offset(np.datetime64(start, "D"), 0, roll="forward")


def grid_stamps(template: DayTemplate, day0: np.datetime64, bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock timestamps (int64 ns) and positions in the day of the bars numbered ``bars`` from ``day0``."""
    k = bars % template.bars_per_day
    days = np.busday_offset(day0, bars // template.bars_per_day, roll="forward")
    return days.astype("datetime64[ns]").astype(np.int64) + template.offsets[k], k


def positions(template: DayTemplate, stamps: np.ndarray) -> np.ndarray:
    """Each timestamp's bar position in the day (a DataError for a time that is no bar of this market)."""
    stamps = np.asarray(stamps, dtype=np.int64)
    time_of_day = stamps - stamps // NS_PER_DAY * NS_PER_DAY
    k = np.minimum(np.searchsorted(template.offsets, time_of_day), template.bars_per_day - 1)
    if not np.array_equal(template.offsets[k], time_of_day):
        bad = stamps[template.offsets[k] != time_of_day][0].astype("datetime64[ns]")
        raise DataError(f"{bad}: not a bar time of this market and frequency")
    return k


def following_stamps(template: DayTemplate, last: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps and positions of the ``count`` bars after the bar at ``last`` (int64 ns)."""
    day = np.datetime64(int(last // NS_PER_DAY), "D")
    k = int(positions(template, np.array([last]))[0])
    return grid_stamps(template, day, k + 1 + np.arange(count))
