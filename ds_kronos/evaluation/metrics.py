"""Forecast metrics as pure numpy functions (no torch, no pandas), so they are easy to check by hand.

Conventions (also written into report.json):

* errors are per horizon h = 1..pred_len, over all origins; ``mae``/``rmse`` are over all origins and horizons;
  for several features the per-feature MAE/RMSE are averaged over the features;
* a return is ``close[h] / close[last history bar] - 1`` in price units; a direction is binary, "up" (return > 0)
  versus "down or flat" (return <= 0), so a constant zero-return forecast always says "down or flat" and its
  accuracy is the share of realised returns that are <= 0;
* IC / RankIC: per origin date, the Pearson / Spearman correlation across symbols of predicted and realised
  returns over the whole forecast window; dates with fewer than ``min_symbols`` symbols, or where either side is
  constant (correlation undefined), are skipped. ICIR = mean / sample std (ddof=1) over the dates used;
* calibration of sampled paths: for each quantile q of the paths, the share of realised values at or below the
  forecast q-quantile (nominal q); for each central band (the lowest quantile with the highest, the second
  lowest with the second highest, ...), the share of realised values inside it, bounds included (nominal:
  upper - lower).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_IC_SYMBOLS = 3


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def horizon_errors(pred: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    """MAE and RMSE per horizon of ``pred``/``actual`` [n, H] or [n, H, F] (per-feature values averaged over F)."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    if err.ndim == 2:
        err = err[:, :, None]
    mae_h = np.abs(err).mean(axis=0).mean(axis=-1)
    rmse_h = np.sqrt((err ** 2).mean(axis=0)).mean(axis=-1)
    mae = np.abs(err).mean(axis=(0, 1)).mean()
    rmse = np.sqrt((err ** 2).mean(axis=(0, 1))).mean()
    return {"mae": float(mae), "rmse": float(rmse), "mae_per_horizon": mae_h.tolist(),
            "rmse_per_horizon": rmse_h.tolist()}


def direction_accuracy(pred_returns: np.ndarray, real_returns: np.ndarray) -> dict[str, Any]:
    """Share of origins whose predicted direction (up vs down-or-flat) is right, per horizon [n, H]; the headline
    ``accuracy`` is at the last horizon (the whole forecast window)."""
    hits = (np.asarray(pred_returns) > 0) == (np.asarray(real_returns) > 0)
    per_horizon = hits.mean(axis=0)
    return {"accuracy": float(per_horizon[-1]), "per_horizon": per_horizon.tolist()}


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the average of the ranks they span (as scipy.stats.rankdata 'average')."""
    unique, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # ranks before each distinct value
    return (start + (counts + 1) / 2.0)[inverse.reshape(-1)]


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (undefined)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    # Test constancy on the values themselves: after subtracting a rounded mean, a constant series leaves
    # rounding noise that would give a meaningless "correlation".
    if x.size < 2 or x.min() == x.max() or y.min() == y.max():
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if not math.isfinite(denominator) or denominator == 0.0:
        return float("nan")
    return float(x @ y) / denominator


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


def daily_ic(dates: np.ndarray, pred_returns: np.ndarray, real_returns: np.ndarray,
             min_symbols: int = MIN_IC_SYMBOLS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dates used, IC, RankIC) per origin date, dates ascending; see the module docstring for what is skipped."""
    dates = np.asarray(dates, dtype=np.int64)
    order = np.argsort(dates, kind="stable")
    unique, first, counts = np.unique(dates[order], return_index=True, return_counts=True)
    used, ic, rank_ic = [], [], []
    for date, start, count in zip(unique, first, counts):  # one step per date, not per sample
        if count < min_symbols:
            continue
        members = order[start:start + count]
        p, r = pred_returns[members], real_returns[members]
        value, rank_value = pearson(p, r), spearman(p, r)
        if math.isnan(value) or math.isnan(rank_value):
            continue
        used.append(date)
        ic.append(value)
        rank_ic.append(rank_value)
    return np.array(used, dtype=np.int64), np.array(ic, dtype=np.float64), np.array(rank_ic, dtype=np.float64)


def ic_summary(ic: np.ndarray, rank_ic: np.ndarray) -> dict[str, Any]:
    """Mean, sample std and mean/std ratio of the daily IC and RankIC series (None where undefined)."""

    def stats(series: np.ndarray) -> tuple[float | None, float | None, float | None]:
        if series.size == 0:
            return None, None, None
        mean = float(series.mean())
        std = float(series.std(ddof=1)) if series.size > 1 else float("nan")
        ratio = mean / std if std > 0 else float("nan")
        return _finite_or_none(mean), _finite_or_none(std), _finite_or_none(ratio)

    mean_ic, ic_std, icir = stats(np.asarray(ic, dtype=np.float64))
    mean_rank, rank_std, rank_ir = stats(np.asarray(rank_ic, dtype=np.float64))
    return {"mean_ic": mean_ic, "ic_std": ic_std, "icir": icir, "mean_rank_ic": mean_rank,
            "rank_ic_std": rank_std, "rank_icir": rank_ir, "dates": int(np.asarray(ic).size)}


def window_returns(close: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """Returns [n, H] of a close path [n, H] (price units) relative to the last history close [n]."""
    return np.asarray(close, dtype=np.float64) / np.asarray(last_close, dtype=np.float64)[:, None] - 1.0


def score(*, pred_close_norm: np.ndarray, actual_close_norm: np.ndarray, pred_returns: np.ndarray,
          real_returns: np.ndarray, dates: np.ndarray, pred_norm: np.ndarray | None = None,
          actual_norm: np.ndarray | None = None, with_ic: bool = True) -> dict[str, Any]:
    """All metrics of one forecaster: close and all-feature errors (normalised units), direction, IC.

    ``pred_norm``/``actual_norm`` [n, H, 6] may be None (a forecaster of the close only); ``with_ic=False`` for a
    forecaster whose predicted return is the same for every symbol (its IC is undefined, reported as None).
    """
    result: dict[str, Any] = {"close": horizon_errors(pred_close_norm, actual_close_norm),
                              "all_features": (horizon_errors(pred_norm, actual_norm)
                                               if pred_norm is not None else None),
                              "direction": direction_accuracy(pred_returns, real_returns)}
    if with_ic:
        _, ic, rank_ic = daily_ic(dates, pred_returns[:, -1], real_returns[:, -1])
        result["ic"] = ic_summary(ic, rank_ic)
    else:
        result["ic"] = {key: None for key in ic_summary(np.zeros(0), np.zeros(0))}
        result["ic"]["dates"] = 0
    return result


def central_bands(quantiles: list[float]) -> list[tuple[float, float]]:
    """(lower, upper) pairs of the sorted quantiles, outermost first: [0.05, 0.1, 0.5, 0.9, 0.95] gives
    (0.05, 0.95) and (0.1, 0.9); a middle quantile (the median of an odd count) bounds no band."""
    ordered = sorted(quantiles)
    return [(ordered[i], ordered[-1 - i]) for i in range(len(ordered) // 2)]


def quantile_calibration(bands: np.ndarray, actual: np.ndarray, quantiles: list[float]) -> dict[str, Any]:
    """Calibration of forecast quantiles ``bands`` [n, H, Q] (in ``quantiles`` order) against realised values
    ``actual`` [n, H]: per quantile the share of realised values at or below it, per central band the share
    inside it; each overall and per horizon."""
    bands = np.asarray(bands, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    below = actual[:, :, None] <= bands  # [n, H, Q]
    index = {q: i for i, q in enumerate(quantiles)}
    result: dict[str, Any] = {"share_below": [], "bands": []}
    for q, i in index.items():
        result["share_below"].append({"quantile": q, "overall": float(below[:, :, i].mean()),
                                      "per_horizon": below[:, :, i].mean(axis=0).tolist()})
    for lower, upper in central_bands(list(quantiles)):
        inside = (actual >= bands[:, :, index[lower]]) & (actual <= bands[:, :, index[upper]])
        result["bands"].append({"lower": lower, "upper": upper, "nominal": upper - lower,
                                "inside": float(inside.mean()), "per_horizon": inside.mean(axis=0).tolist()})
    return result
