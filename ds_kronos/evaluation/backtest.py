"""Optional TopkDropout backtest of the model's forecasts through pyqlib's own backtest API (``--backtest``).

The signal is the model's predicted return over the whole forecast window (close at the horizon / last history
close - 1) per (origin date, instrument): a ``pd.Series`` indexed by a (datetime, instrument) MultiIndex, qlib's
convention for a prediction made with data up to the close of ``datetime``. Origins exist only every ``stride``
bars, so each instrument's signal is held (forward filled on the provider's trading calendar) for ``stride - 1``
more days, i.e. until the next origin date; without that, qlib's strategy would see no signal on the days in
between and simply not trade on them.

``qlib.backtest.backtest`` then runs a ``TopkDropoutStrategy`` with a day-by-day ``SimulatorExecutor``: on day
t the strategy reads the signal of the previous trading day and trades at day t's close (deal_price close), with
the costs below and the exchange's price-limit check on ``$change``. ``qlib.contrib.evaluate.risk_analysis``
summarises the benchmark's daily return and the strategy's excess return over it, without and with costs.

qlib is imported lazily (only with ``--backtest``); :func:`check_backtest` runs before any forecast so a bad
setup fails fast with one line.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ds_kronos.data.prepared import PreparedDataset
from ds_kronos.errors import ConfigError, DataError

BACKTEST_PLOT = "backtest.png"
ACCOUNT = 100_000_000.0  # initial cash
COSTS = {"open_cost": 0.0005, "close_cost": 0.0015, "min_cost": 5.0}  # buy / sell cost rates, minimum per order
FREQ = "day"
RISK_KEYS = ("annualized_return", "information_ratio", "max_drawdown")


def check_backtest(prepared: PreparedDataset, benchmark: str, qlib_dir: str | None) -> Path:
    """The Qlib provider folder of the backtest; raises one-line errors for unusable setups."""
    source = prepared.manifest.get("source") or {}
    if qlib_dir is None:
        if source.get("kind") != "qlib":
            raise ConfigError(f"--backtest needs a dataset prepared from a Qlib provider folder; {prepared.path} was "
                              f"prepared from {source.get('kind', 'an unknown source')!r} (pass --qlib_dir to "
                              f"backtest on a Qlib folder holding the same symbols)")
        root = Path(str(source.get("path", "")))
    else:
        root = Path(qlib_dir).expanduser()
    root = root.resolve()
    if prepared.freq.upper() not in ("1D", "D"):
        raise ConfigError(f"--backtest runs on daily bars; {prepared.path} has bar spacing {prepared.freq}")
    if not (root / "calendars" / "day.txt").is_file() or not (root / "features").is_dir():
        raise DataError(f"{root}: not a Qlib provider folder with daily data (calendars/day.txt, features/) for "
                        f"--backtest" + ("" if qlib_dir else "; pass --qlib_dir"))
    if not (root / "features" / benchmark.lower() / "close.day.bin").is_file():
        raise DataError(f"{root}: no benchmark series {benchmark!r} (features/{benchmark.lower()}/close.day.bin); "
                        f"pass --benchmark with an index of this folder")
    return root


def effective_topk(n_symbols: int, topk: int, n_drop: int) -> tuple[int, int]:
    """topk capped at half the symbols (so the selection matters), n_drop at topk and at the symbols not held."""
    k = max(1, min(topk, n_symbols // 2))
    return k, max(1, min(n_drop, k, max(1, n_symbols - k)))


def build_signal(dates_ns: np.ndarray, instruments: np.ndarray, scores: np.ndarray, calendar: pd.DatetimeIndex,
                 hold: int) -> pd.Series:
    """Scores per (datetime, instrument), each held for ``hold`` more days of ``calendar``; NaN scores dropped."""
    frame = pd.DataFrame({"datetime": pd.to_datetime(np.asarray(dates_ns, dtype=np.int64)),
                          "instrument": np.asarray(instruments).astype(str), "score": np.asarray(scores, float)})
    wide = frame.pivot_table(index="datetime", columns="instrument", values="score", aggfunc="last")
    wide = wide.reindex(calendar.union(wide.index))
    if hold > 0:
        wide = wide.ffill(limit=hold)
    wide = wide.loc[(wide.index >= calendar[0]) & (wide.index <= calendar[-1])]
    signal = wide.stack().dropna()  # pandas' stack drops missing rows; dropna keeps that explicit
    signal.index = signal.index.set_names(["datetime", "instrument"])
    return signal.sort_index().rename("score")


def _import_gym_quietly() -> None:
    """Import gym with its notice silenced, before qlib's backtest does. qlib's executor imports its RL package,
    which imports the unmaintained gym, and gym prints a deprecation notice (gym_notices) to stderr on import: noise
    for a backtest that uses no gym. A print, not a warning, so only a redirect of this one import can hide it."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import gym  # noqa: F401
    except ImportError:  # a qlib that no longer needs gym
        pass


def _risk(returns: pd.Series) -> dict[str, float | None]:
    _import_gym_quietly()
    from qlib.contrib.evaluate import risk_analysis

    table = risk_analysis(returns, freq=FREQ)["risk"]
    return {key: (float(table[key]) if math.isfinite(float(table[key])) else None) for key in RISK_KEYS}


def _backtest_window(calendar_of: Callable[..., Any], qlib_dir: Path, dates_ns: np.ndarray, stride: int,
                     last_ns: int) -> tuple[pd.DatetimeIndex, int]:
    """The trading calendar from the first origin and the index in it of the backtest's last day."""
    first = pd.Timestamp(int(np.min(dates_ns)))
    last_origin = pd.Timestamp(int(np.max(dates_ns)))
    calendar = pd.DatetimeIndex(calendar_of(start_time=first, end_time=pd.Timestamp(int(last_ns)), freq=FREQ))
    if len(calendar) < 2:
        raise DataError(f"{qlib_dir}: its calendar has fewer than 2 trading days between {first:%Y-%m-%d} and "
                        f"{pd.Timestamp(int(last_ns)):%Y-%m-%d}: nothing to backtest")
    # The last signal is held stride - 1 days and traded on the day after: the backtest ends there (or at the
    # split's last bar). qlib needs one calendar day after end_time, so the provider's very last day is left out.
    full = pd.DatetimeIndex(calendar_of(start_time=first, freq=FREQ))
    end_index = min(int(calendar.searchsorted(last_origin)) + stride, len(calendar) - 1, len(full) - 2)
    if end_index < 1:
        raise DataError(f"{qlib_dir}: no trading day after the last origin {last_origin:%Y-%m-%d}: nothing to "
                        f"backtest")
    return calendar, end_index


def _strategy_size(signal: pd.Series, topk: int, n_drop: int, log: Callable[[str], None]
                   ) -> tuple[int, pd.Series, int, int]:
    """Fit topk / n_drop to the symbols that have a signal; returns (symbols, signals per day, topk, n_drop)."""
    n_symbols = int(signal.index.get_level_values("instrument").nunique())
    per_day = signal.groupby(level="datetime").size()
    k, drop = effective_topk(n_symbols, topk, n_drop)
    if (k, drop) != (topk, n_drop):
        log(f"backtest: {n_symbols} symbols with a signal: topk {topk} -> {k}, n_drop {n_drop} -> {drop}")
    if int(per_day.min()) < k + drop:
        log(f"backtest: note: on some days only {int(per_day.min())} symbols have a signal (< topk + n_drop = "
            f"{k + drop}); TopkDropout then sells held stocks ranked low or without a signal (see "
            f"docs/evaluation.md)")
    return n_symbols, per_day, k, drop


def _simulate(signal: pd.Series, start: pd.Timestamp, end: pd.Timestamp, k: int, drop: int, benchmark: str,
              limit_threshold: float) -> pd.DataFrame:
    """Run qlib's TopkDropout backtest quietly; returns its daily portfolio report."""
    _import_gym_quietly()
    from qlib.backtest import backtest, executor
    from qlib.contrib.strategy import TopkDropoutStrategy
    from qlib.log import set_global_logger_level

    # Before the executor is built: per-order/per-day warnings (limits, suspended days) flood stdout, and building
    # and starting the backtest warns of what a plain backtest does not use (common_infra, a future calendar).
    set_global_logger_level(logging.ERROR)
    codes = sorted(signal.index.get_level_values("instrument").unique())
    exchange_kwargs = {"freq": FREQ, "codes": codes, "deal_price": "close",
                       "limit_threshold": limit_threshold or None, **COSTS}
    strategy = TopkDropoutStrategy(signal=signal, topk=k, n_drop=drop)
    day_executor = executor.SimulatorExecutor(time_per_step=FREQ, generate_portfolio_metrics=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # qlib's nanmean over days without a price
        portfolio, _ = backtest(start_time=start, end_time=end, strategy=strategy, executor=day_executor,
                                benchmark=benchmark, account=ACCOUNT, exchange_kwargs=exchange_kwargs)
    return next(iter(portfolio.values()))[0]  # the only (daily) level: (report DataFrame, positions)


def _backtest_section(daily: pd.DataFrame, settings: dict[str, Any]) -> dict[str, Any]:
    """The report's backtest section: risk of the benchmark and of the excess return, settings, totals."""
    excess = daily["return"] - daily["bench"]
    return {
        "benchmark": _risk(daily["bench"]),
        "excess_return_without_cost": _risk(excess),
        "excess_return_with_cost": _risk(excess - daily["cost"]),
        "settings": settings,
        "totals": {"strategy_return_with_cost": float((daily["return"] - daily["cost"]).sum()),
                   "benchmark_return": float(daily["bench"].sum()),
                   "mean_turnover": float(daily["turnover"].mean())},
        "definitions": "qlib risk_analysis (freq day, N 252) of daily returns, summed not compounded: "
                       "annualized_return = mean x 252, information_ratio = mean / std x sqrt(252), max_drawdown "
                       "of the cumulative sum; excess = strategy return - benchmark return (- cost)",
    }


def run_backtest(qlib_dir: Path, dates_ns: np.ndarray, instruments: np.ndarray, pred_returns: np.ndarray,
                 stride: int, last_ns: int, benchmark: str, topk: int, n_drop: int, limit_threshold: float,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run the backtest; returns the report section and qlib's daily portfolio report (return, bench, cost...)."""
    from ds_kronos.data.qlib_source import init_qlib

    init_qlib(qlib_dir)
    from qlib.data import D

    calendar, end_index = _backtest_window(D.calendar, qlib_dir, dates_ns, stride, last_ns)
    start, end = calendar[0], calendar[end_index]
    signal = build_signal(dates_ns, instruments, pred_returns, calendar[:end_index + 1], stride - 1)
    n_symbols, per_day, k, drop = _strategy_size(signal, topk, n_drop, log)
    log(f"backtest: TopkDropout topk {k} n_drop {drop} on {n_symbols} symbols, {start:%Y-%m-%d}..{end:%Y-%m-%d}, "
        f"benchmark {benchmark}, Qlib folder {qlib_dir}")
    daily = _simulate(signal, start, end, k, drop, benchmark, limit_threshold)
    if daily.empty:
        raise DataError(f"{qlib_dir}: the backtest produced no trading day")
    settings = {"qlib_dir": str(qlib_dir), "benchmark": benchmark, "strategy": "TopkDropoutStrategy",
                "topk": k, "n_drop": drop, "requested_topk": topk, "requested_n_drop": n_drop,
                "start": f"{start:%Y-%m-%d}", "end": f"{end:%Y-%m-%d}", "trading_days": int(len(daily)),
                "symbols": n_symbols, "signal_rows": int(len(signal)), "signal_hold_days": stride - 1,
                "symbols_per_signal_day": {"min": int(per_day.min()), "mean": float(per_day.mean()),
                                           "max": int(per_day.max())},
                "account": ACCOUNT, "deal_price": "close", "limit_threshold": limit_threshold or None, **COSTS}
    return _backtest_section(daily, settings), daily


def format_backtest(section: dict[str, Any]) -> str:
    rows = [("benchmark", section["benchmark"]), ("excess w/o cost", section["excess_return_without_cost"]),
            ("excess with cost", section["excess_return_with_cost"])]
    s = section["settings"]
    lines = [f"backtest ({s['strategy']} topk {s['topk']} n_drop {s['n_drop']}, {s['start']}..{s['end']}, "
             f"{s['trading_days']} days, vs {s['benchmark']})",
             f"{'':18s}{'ann. return':>12s}{'info ratio':>12s}{'max drawdown':>14s}"]

    def cell(value: float | None, width: int) -> str:
        return ("-" if value is None else f"{value:+.4f}").rjust(width)

    for name, risk in rows:
        lines.append(f"{name:18s}{cell(risk['annualized_return'], 12)}{cell(risk['information_ratio'], 12)}"
                     f"{cell(risk['max_drawdown'], 14)}")
    return "\n".join(lines)


def plot_backtest(path: Path, daily: pd.DataFrame, title: str) -> None:
    from ds_kronos.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    when = pd.DatetimeIndex(daily.index)
    ax.plot(when, daily["return"].cumsum(), lw=1.2, color="C0", label="strategy (w/o cost)")
    ax.plot(when, (daily["return"] - daily["cost"]).cumsum(), lw=1.2, color="C3", label="strategy (with cost)")
    ax.plot(when, daily["bench"].cumsum(), lw=1.2, color="0.3", label="benchmark")
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_ylabel("cumulative return (sum)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
