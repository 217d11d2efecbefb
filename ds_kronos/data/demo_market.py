"""A synthetic market written as a real Qlib provider folder, for demos, tests and benchmarks.

Layout written (what pyqlib's file storage reads)::

    calendars/day.txt                      business days, one YYYY-MM-DD per line
    instruments/all.txt, csi300.txt        SYMBOL<TAB>start<TAB>end (upper-case symbols, e.g. SH600000)
    features/<symbol lower-case>/<field>.day.bin
                                           little-endian float32: first value = calendar index of the first bar,
                                           then one value per calendar day from there (NaN = suspended day)

    instruments/benchmark.txt              only with a benchmark: the index symbol (kept out of all.txt and
                                           csi300.txt, so it never becomes a training symbol)

Fields: open, high, low, close, volume, and amount only when asked (by default it is left out, so the "derive amt =
mean(OHLC) x volume" path of the preparation is the one exercised); for Qlib's backtest exchange also factor (1.0:
prices are taken as already adjusted) and change (close / previous traded close - 1, NaN on suspended days; the
exchange's price-limit check reads it). Each symbol follows a market factor plus its own GARCH(1,1) volatility with
Student-t innovations (volatility clustering, fat tails); volume rises with the absolute return; high/low bracket
open and close. By default prices are martingales (only volatility is predictable); ``ar`` gives each symbol's own
daily return an AR(1) coefficient (negative: mean reversion, positive: momentum), a market whose returns a model
can learn to forecast, at the same long-run volatility. Symbols list and delist at different dates and have a few
suspended days; csi300 is a subset whose membership may start after listing. With ``benchmark`` (e.g. SH000300),
an index is written too: the equal-weighted average of the daily close-to-close returns of the csi300 members
trading that day, compounded from 1000 (open = previous close, high/low = max/min of the two, volume = members'
total). Everything is a pure function of the seed and ``ar``
(the benchmark draws no random numbers, so the symbols do not depend on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ds_kronos.config import option
from ds_kronos.data.output import staged_output
from ds_kronos.errors import DataError

FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
BENCHMARK_LIST = "benchmark.txt"  # instruments/ file naming the demo's benchmark index (not a training universe)


@dataclass(kw_only=True)
class DemoMarketConfig:
    """Write a synthetic daily market as a Qlib provider folder."""

    out: str | None = option(None, help="folder to create (must not exist unless --overwrite)")
    symbols: int = option(40, help="number of symbols", ge=1, le=2000)
    seed: int = option(0, help="random seed (same seed, same market)")
    start: str = option("2011-01-01", help="first calendar day")
    end: str = option("2025-06-30", help="last calendar day")
    amount: bool = option(False, help="also write amount.day.bin (by default amt is derived at preparation)")
    ar: float = option(0.0, gt=-1, lt=1, help="AR(1) coefficient of each symbol's own daily return (0: a "
                                              "martingale; < 0 mean reversion, > 0 momentum)")
    benchmark: str = option("SH000300", help="index symbol written as a benchmark series for the evaluation's "
                                             "--backtest ('' for none)")
    overwrite: bool = option(False, help="replace an existing demo market folder at --out")

    def problems(self) -> list[str]:
        problems = []
        if not self.out:
            problems.append("--out is required")
        if self.benchmark and self.benchmark.upper() in _symbol_names(self.symbols):
            problems.append(f"--benchmark {self.benchmark} clashes with a demo symbol name")
        try:
            if pd.Timestamp(self.end) - pd.Timestamp(self.start) < pd.Timedelta(days=30):
                problems.append(f"--start {self.start} .. --end {self.end} must span at least 30 days")
        except ValueError:
            problems.append(f"cannot parse --start {self.start!r} / --end {self.end!r} as dates")
        return problems


def _symbol_names(n: int) -> list[str]:
    half = (n + 1) // 2
    return [f"SH{600000 + i}" for i in range(half)] + [f"SZ{1 + i:06d}" for i in range(n - half)]


def _garch_returns(rng: np.random.Generator, n: int, daily_vol: float, alpha: float, beta: float,
                   dof: float) -> np.ndarray:
    """GARCH(1,1) returns with unit-variance Student-t shocks; long-run std = daily_vol."""
    omega = daily_vol ** 2 * (1.0 - alpha - beta)
    shocks = rng.standard_t(dof, size=n) / np.sqrt(dof / (dof - 2.0))
    returns = np.empty(n)
    var = daily_vol ** 2
    for t in range(n):  # the recursion is inherently sequential; n is a few thousand days
        returns[t] = np.sqrt(var) * shocks[t]
        var = omega + alpha * returns[t] ** 2 + beta * var
    return returns


def _autoregressive(shocks: np.ndarray, ar: float) -> np.ndarray:
    """x_t = ar x_{t-1} + sqrt(1 - ar^2) e_t: an AR(1) with the shocks' long-run variance (ar 0: the shocks)."""
    if ar == 0.0:
        return shocks
    from scipy.signal import lfilter

    return lfilter([np.sqrt(1.0 - ar * ar)], [1.0, -ar], shocks)


def _simulate_symbol(rng: np.random.Generator, market: np.ndarray, ar: float = 0.0) -> dict[str, np.ndarray]:
    n = len(market)
    loading = rng.uniform(0.6, 1.3)
    idio = _garch_returns(rng, n, daily_vol=rng.uniform(0.012, 0.025), alpha=rng.uniform(0.05, 0.1),
                          beta=rng.uniform(0.85, 0.9), dof=rng.uniform(3.5, 6.0))
    ret = loading * market + _autoregressive(idio, ar)
    close = rng.uniform(5.0, 60.0) * np.exp(np.cumsum(ret))
    prev_close = np.r_[close[0] * np.exp(-ret[0]), close[:-1]]
    scale = np.abs(ret).mean()
    # The overnight gap takes part of the day's move, so open sits between the previous and the current close.
    open_ = prev_close * np.exp(ret * rng.uniform(0.0, 0.4, n) + rng.normal(0.0, 0.2 * scale, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.6 * scale, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.6 * scale, n)))
    base = np.exp(rng.uniform(np.log(2e5), np.log(2e7)))
    volume = np.round(base * (1.0 + 25.0 * np.abs(ret)) * np.exp(rng.normal(0.0, 0.25, n)))
    amount = (open_ + high + low + close) / 4.0 * volume * np.exp(rng.normal(0.0, 0.002, n))
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "amount": amount}


def write_demo_market(out: str | os.PathLike, *, symbols: int = 40, seed: int = 0, start: str = "2011-01-01",
                      end: str = "2025-06-30", amount: bool = False, overwrite: bool = False,
                      benchmark: str | None = None, ar: float = 0.0) -> Path:
    """Write the synthetic market to ``out`` (atomically: temp folder, then rename); returns the path.

    ``benchmark``: also write this index symbol (see the module docstring); None or '' for none. ``ar``: the AR(1)
    coefficient of each symbol's own daily return (0: martingale prices, the market of earlier versions)."""
    out = Path(out)
    names = _symbol_names(symbols)
    if benchmark and benchmark.upper() in names:
        raise DataError(f"benchmark {benchmark} clashes with a demo symbol name")
    with staged_output(out, overwrite, lambda folder: (folder / "calendars" / "day.txt").is_file(),
                       "a Qlib folder") as tmp:
        _write_market(tmp, names, seed, start, end, amount, benchmark, ar)
    return out


def _write_market(tmp: Path, names: list[str], seed: int, start: str, end: str, amount: bool,
                  benchmark: str | None, ar: float) -> None:
    calendar = pd.bdate_range(start, end)
    n_days = len(calendar)
    rng = np.random.default_rng(seed)
    market = _garch_returns(rng, n_days, daily_vol=0.011, alpha=0.08, beta=0.9, dof=5.0)
    fields = FIELDS + (("amount",) if amount else ())
    (tmp / "calendars").mkdir()
    (tmp / "instruments").mkdir()
    (tmp / "calendars" / "day.txt").write_text("\n".join(calendar.strftime("%Y-%m-%d")) + "\n")
    all_lines, index_lines = [], []
    members: list[tuple[np.ndarray, np.ndarray]] = []  # (close, volume) over the calendar of csi300 members
    for k, name in enumerate(names):
        # About 60% trade over the whole calendar (so the default splits all have data); the rest list late
        # and/or delist early, with at least ~250 days of history.
        first, last = 0, n_days - 1
        kind = rng.uniform()
        if kind > 0.6:
            first = int(rng.integers(0, max(1, n_days - 300)))
        if kind > 0.8 or rng.uniform() < 0.1:
            last = int(rng.integers(min(first + 250, n_days - 1), n_days))
        bars = _simulate_symbol(rng, market[first:last + 1], ar)
        halted = rng.choice(last - first + 1, size=min(3, last - first), replace=False)
        folder = tmp / "features" / name.lower()
        folder.mkdir(parents=True)
        for field in fields:
            bars[field] = bars[field].astype(np.float64)
            bars[field][halted] = np.nan
        bars["factor"] = np.ones(last - first + 1)
        bars["change"] = _change(bars["close"])
        for field in fields + ("factor", "change"):
            np.concatenate([[first], bars[field]]).astype("<f4").tofile(folder / f"{field}.day.bin")
        span = f"{calendar[first]:%Y-%m-%d}\t{calendar[last]:%Y-%m-%d}"
        all_lines.append(f"{name}\t{span}")
        if k % 3 != 2:
            joined = first if k % 4 else min(last, first + 120)
            index_lines.append(f"{name}\t{calendar[joined]:%Y-%m-%d}\t{calendar[last]:%Y-%m-%d}")
            close, volume = np.full(n_days, np.nan), np.full(n_days, np.nan)
            close[joined:last + 1] = bars["close"][joined - first:]
            volume[joined:last + 1] = bars["volume"][joined - first:]
            members.append((close, volume))
    (tmp / "instruments" / "all.txt").write_text("\n".join(all_lines) + "\n")
    (tmp / "instruments" / "csi300.txt").write_text("\n".join(index_lines) + "\n")
    if benchmark:
        _write_benchmark(tmp, benchmark.upper(), members, calendar)


def _change(close: np.ndarray) -> np.ndarray:
    """close / previous traded close - 1 (NaN on suspended days and on the first bar)."""
    prev = pd.Series(close).ffill().shift(1).to_numpy()
    return close / prev - 1.0


def _write_benchmark(root: Path, symbol: str, members: list[tuple[np.ndarray, np.ndarray]],
                     calendar: pd.DatetimeIndex) -> None:
    """The equal-weighted index of the csi300 members (see the module docstring), over the whole calendar."""
    if not members:
        raise DataError("no csi300 member to build the benchmark index from")
    close = np.stack([c for c, _ in members])
    volume = np.stack([v for _, v in members])
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = close[:, 1:] / close[:, :-1] - 1.0  # NaN unless a member traded on both days
    traded = np.isfinite(returns)
    # Days where no member traded on both sides keep the level flat.
    daily = np.where(traded, returns, 0.0).sum(axis=0) / np.maximum(traded.sum(axis=0), 1)
    level = 1000.0 * np.cumprod(np.r_[1.0, 1.0 + daily])
    prev = np.r_[level[0], level[:-1]]
    bars = {"open": prev, "high": np.maximum(prev, level), "low": np.minimum(prev, level), "close": level,
            "volume": np.nansum(volume, axis=0), "factor": np.ones_like(level), "change": level / prev - 1.0}
    folder = root / "features" / symbol.lower()
    folder.mkdir(parents=True)
    for field, values in bars.items():
        np.concatenate([[0], values]).astype("<f4").tofile(folder / f"{field}.day.bin")
    (root / "instruments" / BENCHMARK_LIST).write_text(
        f"{symbol}\t{calendar[0]:%Y-%m-%d}\t{calendar[-1]:%Y-%m-%d}\n")
