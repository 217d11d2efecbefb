"""The volatility models a quant desk forecasts with, from ``arch``, as baselines of the evaluation.

Each is fitted per origin on that symbol's bars before it (the lookback, or ``--baseline_history`` bars where the
split has them) and gives, per origin, sampled close paths (as many as the model's) and the predicted variance of
the close's log return over 1..H bars:

* ``garch_t``: GARCH(1,1), Student-t errors; ``gjr_garch_t``: GJR-GARCH(1,1), Student-t errors (zero mean,
  percent log returns; maximum likelihood, warm-started from the symbol's previous origin);
* ``ewma``: RiskMetrics, lambda 0.94, Gaussian, nothing fitted;
* ``har``: HAR (lags 1, 5, 22; OLS) of the Parkinson range variance (ln(high/low))^2 / (4 ln 2), since OHLC bars
  give no realised variance; its forecasts are rescaled to close-to-close units by the history's mean squared
  return over its mean Parkinson variance, floored at 1% of that mean, and its paths are Gaussian.

GARCH/GJR/EWMA paths are arch's own simulation (``forecast(method="simulation")``), their variances arch's analytic
forecast; HAR's paths are Gaussian draws with its forecast variances. Draws come from ``default_rng([seed, stream,
baseline, row])`` (arch's distributions take it as their seed): the same paths whatever the ranks. A fit that does
not converge is still used and counted; one that raises or gives a non-finite forecast is replaced by a Gaussian
with the history's sample variance and counted as failed (``report.json["volatility"]["baseline_fits"]``).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import numpy as np

from ds_kronos.data.series import CLOSE, VALUE_COLUMNS
from ds_kronos.errors import ConfigError
from ds_kronos.evaluation.origins import Origins

BASELINES = ("garch_t", "gjr_garch_t", "ewma", "har")
LABELS = {"garch_t": "GARCH-t", "gjr_garch_t": "GJR-GARCH-t", "ewma": "EWMA", "har": "HAR"}
RISKMETRICS_LAMBDA = 0.94
HAR_LAGS = (1, 5, 22)
# Bars of history a fit needs: GARCH-t has 4 parameters (GJR 5) to estimate; HAR's longest lag is 22 bars and its
# regression keeps 20 more rows than lags.
MIN_HISTORY = {"garch_t": 30, "gjr_garch_t": 30, "ewma": 2, "har": 2 * HAR_LAGS[-1]}
PERCENT = 100.0  # arch's optimiser wants returns of order 1: percent log returns
BASELINE_STREAM = 4  # random walk 1, bootstrap 2, PIT 3
FIT_OK, NOT_CONVERGED, FAILED = 0, 1, 2
HIGH, LOW = VALUE_COLUMNS.index("high"), VALUE_COLUMNS.index("low")


def parse_baselines(text: str) -> tuple[tuple[str, ...], list[str]]:
    """``all``, ``none`` or a comma-separated list of :data:`BASELINES`: the names and the problems."""
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    if words in (["all"], []):
        return (BASELINES, []) if words else ((), ["--baselines is empty: name baselines, 'all' or 'none'"])
    if words == ["none"]:
        return (), []
    unknown = [w for w in words if w not in BASELINES]
    if unknown:
        return (), [f"--baselines: unknown baseline {', '.join(map(repr, unknown))}; choose from "
                    f"{', '.join(BASELINES)}, 'all' or 'none'"]
    return tuple(dict.fromkeys(words)), []


@dataclasses.dataclass(frozen=True)
class BaselinePlan:
    """Which baselines, and how many bars of history each origin's fit uses."""

    names: tuple[str, ...]
    requested: int | None  # --baseline_history, or None: the lookback
    lengths: np.ndarray    # int64 [n] bars of history per origin (all origins of the evaluation)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # "all" left these out: why

    def describe(self) -> dict[str, Any]:
        return {"baselines": list(self.names), "skipped": self.skipped,
                "history": "lookback" if self.requested is None else f"--baseline_history {self.requested}",
                "bars": {"min": int(self.lengths.min()), "median": float(np.median(self.lengths)),
                         "max": int(self.lengths.max())}}


def plan_baselines(names: tuple[str, ...], requested: int | None, offsets: np.ndarray, origins: Origins,
                   lookback: int, named: bool = True) -> BaselinePlan:
    """The plan, or a ConfigError when the history asked for is more than any origin has, or too short for a
    ``named`` baseline (checked before any forecast is drawn); ``--baselines all`` (``named`` False) leaves such a
    baseline out and says so in the report."""
    available = origins.rows - np.asarray(offsets, dtype=np.int64)[origins.symbols]
    if requested is not None and requested > int(available.max()):
        raise ConfigError(f"--baseline_history {requested}: the split has at most {int(available.max())} bars "
                          f"before any origin")
    lengths = np.minimum(available, lookback if requested is None else requested)
    skipped = {name: f"needs {MIN_HISTORY[name]} bars of history, has {int(lengths.min())}" for name in names
               if not named and int(lengths.min()) < MIN_HISTORY[name]}
    names = tuple(name for name in names if name not in skipped)
    for name in names:
        if int(lengths.min()) < MIN_HISTORY[name]:
            source = "the lookback" if requested is None else f"--baseline_history {requested}"
            raise ConfigError(f"baseline {name} needs at least {MIN_HISTORY[name]} bars of history per origin; "
                              f"{source} gives {int(lengths.min())} (raise --baseline_history or drop it from "
                              f"--baselines)")
    return BaselinePlan(names, requested, lengths, skipped)


@dataclasses.dataclass(frozen=True)
class BaselineForecasts:
    """Per origin (row order of ``rows``) and baseline (last axis, ``names`` order)."""

    rows: np.ndarray       # int64 [n]
    paths: np.ndarray      # float32 [n, S, H, B] close paths, price units
    variance: np.ndarray   # float32 [n, H, B] predicted variance of log(close_h / last close)
    flags: np.ndarray      # float32 [n, B] FIT_OK, NOT_CONVERGED or FAILED
    seconds: float


def _garch_model(returns: np.ndarray, name: str, generator: np.random.Generator) -> Any:
    """The zero-mean model of ``name``; its distribution draws the simulation's shocks from ``generator``."""
    from arch.univariate import GARCH, EWMAVariance, Normal, StudentsT, ZeroMean

    if name == "ewma":
        return ZeroMean(returns, volatility=EWMAVariance(RISKMETRICS_LAMBDA), distribution=Normal(seed=generator),
                        rescale=False)
    return ZeroMean(returns, volatility=GARCH(p=1, o=1 if name == "gjr_garch_t" else 0, q=1),
                    distribution=StudentsT(seed=generator), rescale=False)


def _fit_garch(name: str, returns: np.ndarray, horizon: int, paths: int, generator: np.random.Generator,
               start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """Percent log-return paths [S, H], per-bar variances [H] (percent^2), the flag and the parameters."""
    fit = _garch_model(returns, name, generator).fit(disp="off", show_warning=False, starting_values=start)
    flag = FIT_OK if fit.convergence_flag == 0 else NOT_CONVERGED
    drawn = fit.forecast(horizon=horizon, method="simulation", simulations=paths,
                         reindex=False).simulations.values[0]
    variance = fit.forecast(horizon=horizon, reindex=False).variance.values[0]
    return drawn, variance, flag, np.asarray(fit.params, dtype=np.float64) if flag == FIT_OK else None


def _fit_har(returns: np.ndarray, high: np.ndarray, low: np.ndarray, horizon: int, paths: int,
             generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, None]:
    from arch.univariate import HARX

    parkinson = (PERCENT * np.log(high / low)) ** 2 / (4.0 * math.log(2.0))
    scale = float(np.mean(returns ** 2)) / float(np.mean(parkinson[1:]))
    fit = HARX(parkinson, lags=list(HAR_LAGS), rescale=False).fit(disp="off", show_warning=False)
    variance = np.maximum(fit.forecast(horizon=horizon, reindex=False).mean.values[0] * scale,
                          0.01 * float(np.mean(returns ** 2)))
    return generator.standard_normal((paths, horizon)) * np.sqrt(variance), variance, FIT_OK, None


def forecast_baselines(plan: BaselinePlan, values: np.ndarray, offsets: np.ndarray, origins: Origins,
                       all_origins: Origins, horizon: int, paths: int, seed: int) -> BaselineForecasts:
    """Fit every baseline of ``plan`` at each of ``origins`` (this rank's; ``all_origins`` is what ``plan`` was
    made for) on the split's ``values`` [rows, 6]."""
    t0 = time.perf_counter()
    length_of = dict(zip(all_origins.rows.tolist(), plan.lengths.tolist()))
    n, count = len(origins), len(plan.names)
    out_paths = np.empty((n, paths, horizon, count), dtype=np.float32)
    out_variance = np.empty((n, horizon, count), dtype=np.float32)
    flags = np.zeros((n, count), dtype=np.float32)
    starts: dict[tuple[int, str], np.ndarray] = {}  # the symbol's last converged parameters: the next fit's start
    for i, (row, symbol) in enumerate(zip(origins.rows.tolist(), origins.symbols.tolist())):
        bars = np.asarray(values[row - length_of[row]:row], dtype=np.float64)
        log_close = np.log(np.maximum(bars[:, CLOSE], 1e-300))
        returns = PERCENT * np.diff(log_close)
        for b, name in enumerate(plan.names):
            generator = np.random.default_rng([seed, BASELINE_STREAM, b, row])
            try:
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")
                    if name == "har":
                        drawn, variance, flag, params = _fit_har(returns, bars[:, HIGH], bars[:, LOW], horizon,
                                                                 paths, generator)
                    else:
                        drawn, variance, flag, params = _fit_garch(name, returns, horizon, paths, generator,
                                                                   starts.get((symbol, name)))
                if not (np.isfinite(drawn).all() and np.isfinite(variance).all() and (variance > 0).all()):
                    raise FloatingPointError("non-finite forecast")
            except Exception:  # noqa: BLE001 - any failed fit is replaced and counted, never dropped
                sigma2 = max(float(np.var(returns, ddof=1)) if returns.size > 1 else 0.0, 1e-12)
                variance = np.full(horizon, sigma2)
                drawn = generator.standard_normal((paths, horizon)) * math.sqrt(sigma2)
                flag, params = FAILED, None
            if params is not None and params.size:
                starts[(symbol, name)] = params
            flags[i, b] = flag
            out_paths[i, :, :, b] = bars[-1, CLOSE] * np.exp(np.cumsum(drawn, axis=1) / PERCENT)
            out_variance[i, :, b] = np.cumsum(variance) / PERCENT ** 2
    return BaselineForecasts(origins.rows, out_paths, out_variance, flags, time.perf_counter() - t0)


def fit_counts(names: tuple[str, ...], flags: np.ndarray) -> dict[str, dict[str, int]]:
    """Per baseline: fits that converged, did not converge (used anyway) and failed (replaced)."""
    return {name: {"converged": int((flags[:, b] == FIT_OK).sum()),
                   "not_converged": int((flags[:, b] == NOT_CONVERGED).sum()),
                   "failed": int((flags[:, b] == FAILED).sum())} for b, name in enumerate(names)}
