"""Volatility forecasts scored as a quant desk scores them: the predicted variance of the close's log return over
1..H bars, sigma2_h, against the realised squared return r_h^2 = (log(close_h / last close))^2, per horizon.

* QLIKE: ``log(sigma2) + r^2 / sigma2`` (Patton 2011's robust loss, up to a term free of the forecast, so it is
  finite at r = 0 and loss differences are unchanged); lower is better, and it punishes under-prediction most;
* MSE: ``(sigma2 - r^2)^2`` (also robust to the noise of r^2 as a proxy, Patton 2011).

A sampled forecaster's sigma2_h is the variance (ddof 1) over its paths of log(close_h / last close); the arch
baselines give their own analytic forecast (:mod:`ds_kronos.evaluation.arch_baselines`). Point forecasts have no
variance and no row here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ds_kronos.evaluation.probabilistic import _summary

VARIANCE_FLOOR = 1e-12  # a path set without spread (a flat history) would divide by zero


def log_returns(close: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """log(close_h / last close) of ``close`` [n, ..., H] (prices floored just above 0: clipped paths)."""
    close = np.asarray(close, dtype=np.float64)
    last = np.asarray(last_close, dtype=np.float64).reshape((-1,) + (1,) * (close.ndim - 1))
    return np.log(np.maximum(close, 1e-12 * last) / last)


def path_variance(close_paths: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """[n, H] variance over the paths [n, S, H] (price units) of the log return since the last close."""
    return log_returns(close_paths, last_close).var(axis=1, ddof=1)


def qlike(variance: np.ndarray, realised_squared: np.ndarray) -> np.ndarray:
    variance = np.maximum(np.asarray(variance, dtype=np.float64), VARIANCE_FLOOR)
    return np.log(variance) + realised_squared / variance


def squared_error(variance: np.ndarray, realised_squared: np.ndarray) -> np.ndarray:
    return (np.asarray(variance, dtype=np.float64) - realised_squared) ** 2


def score_volatility(predicted: dict[str, np.ndarray], future_close: np.ndarray,
                     last_close: np.ndarray) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The report's volatility section (QLIKE and MSE per forecaster, overall and per horizon) and each
    forecaster's QLIKE per origin (mean over horizons) for the tests."""
    realised = log_returns(future_close, last_close) ** 2
    rows, losses = {}, {}
    for name, variance in predicted.items():
        q = qlike(variance, realised)
        rows[name] = {"qlike": _summary(q), "mse": _summary(squared_error(variance, realised)),
                      "mean_predicted": float(np.mean(variance)), "mean_realised": float(np.mean(realised))}
        losses[name] = q.mean(axis=1)
    return {"target": "(log(close_h / last close))^2, h = 1..H",
            "definition": "qlike = log s2 + r2 / s2, mse = (s2 - r2)^2 per origin and horizon; s2 the variance "
                          "(ddof 1) over a row's paths, or an arch baseline's analytic forecast",
            "rows": rows}, losses
