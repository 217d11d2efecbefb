"""Scores of a forecast *distribution* given by sampled paths (rank 0, vectorised numpy).

A forecaster here is an ensemble ``paths`` [n, S, H] of S sampled paths per origin (S = 1 for a point forecast),
scored against the realised values [n, H]. The proper scoring rules come from ``scoringrules`` (CRPS of the
ensemble, quantile score, Brier score); the Kolmogorov-Smirnov distance of the PIT from ``scipy.stats``. Every
score is given over all origins and horizons and per horizon. Definitions, units and conventions:
docs/evaluation.md ("Probabilistic scores").

* CRPS: ``scoringrules.crps_ensemble(..., estimator="qd")``, the CRPS of the ensemble's empirical distribution,
  equal to the energy form ``mean|X - y| - mean|X - X'| / 2`` over all pairs (tested against it) at O(S log S);
* WQL (Chronos / GIFT-Eval): ``2 * sum_q sum QS_q / sum|y| / Q`` with the quantile score QS over the report's
  quantiles of the paths (linear interpolation), pooled over origins;
* MASE: mean |point forecast - y| / the origin's in-sample one-step naive error (mean |x_t - x_t-1| of its
  lookback), the point forecast being the mean of the paths;
* PIT: randomised rank of y among the paths, ``(#{x < y} + V (#{x = y} + 1)) / (S + 1)`` with V ~ U(0, 1) from a
  seeded generator, which is exactly uniform on (0, 1) when y and the paths are exchangeable (a calibrated
  forecast); its 10-bin histogram (densities) and KS distance from the uniform;
* P(up): the share of paths above the last close; Brier score and a reliability table (10 bins);
* volatility: predicted |one-bar return| (mean over paths) vs the realised one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ds_kronos.errors import UserError
from ds_kronos.evaluation import metrics

PIT_BINS = 10
RELIABILITY_BINS = 10
CRPS_ESTIMATOR = "qd"  # scoringrules' quantile decomposition: exactly the energy form of the empirical CDF


def require_paths(paths: np.ndarray, what: str = "a probabilistic score") -> None:
    """A distribution needs at least two sampled paths per origin: one line for the user otherwise."""
    if paths.shape[1] < 2:
        raise UserError(f"{what} needs at least 2 sampled paths per origin, got {paths.shape[1]} "
                        f"(use --sample_count 2 or more)")


def _summary(values: np.ndarray) -> dict[str, Any]:
    """Mean over all origins and horizons, and per horizon, of ``values`` [n, H] (NaN entries ignored)."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": metrics._finite_or_none(np.nanmean(values)) if values.size else None,
            "per_horizon": [metrics._finite_or_none(v) for v in np.nanmean(values, axis=0)]}


def crps_values(paths: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """CRPS [n, H] of each origin's and horizon's ensemble ``paths`` [n, S, H] against ``actual`` [n, H]."""
    import scoringrules

    paths = np.asarray(paths, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if paths.shape[1] == 1:  # a point mass: CRPS is the absolute error (scoringrules' qd needs no special case,
        return np.abs(paths[:, 0] - actual)  # but this makes the identity explicit and cheap)
    return np.asarray(scoringrules.crps_ensemble(actual, paths, m_axis=1, estimator=CRPS_ESTIMATOR,
                                                 backend="numpy"))


def path_quantiles(paths: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Quantiles [n, H, Q] of the paths [n, S, H] per origin and horizon (linear interpolation, as the report)."""
    return np.moveaxis(np.quantile(np.asarray(paths, dtype=np.float64), quantiles, axis=1), 0, 2)


def weighted_quantile_loss(bands: np.ndarray, actual: np.ndarray, quantiles: list[float]) -> dict[str, Any]:
    """WQL of forecast quantiles ``bands`` [n, H, Q] vs ``actual`` [n, H]: mean over q of
    2 * sum QS_q / sum |y|, pooled over origins (and horizons for the headline)."""
    import scoringrules

    actual = np.asarray(actual, dtype=np.float64)
    qs = np.asarray(scoringrules.quantile_score(actual[:, :, None], np.asarray(bands, dtype=np.float64),
                                                np.asarray(quantiles, dtype=np.float64), backend="numpy"))
    scale = np.abs(actual)
    overall = 2.0 * qs.sum(axis=(0, 1)) / max(float(scale.sum()), 1e-300)
    per_horizon = 2.0 * qs.sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-300)[:, None]
    return {"mean": float(overall.mean()), "per_horizon": per_horizon.mean(axis=1).tolist()}


def mase(point: np.ndarray, actual: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
    """|point - actual| [n, H] over the per-origin in-sample naive error ``scale`` [n]; origins whose scale is 0
    (a constant history) are left out and counted."""
    scale = np.asarray(scale, dtype=np.float64)
    keep = scale > 0
    ratio = np.abs(np.asarray(point, dtype=np.float64) - actual)[keep] / scale[keep, None]
    return {**_summary(ratio), "origins_left_out": int((~keep).sum())}


def pit_values(paths: np.ndarray, actual: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised PIT [n, H] of ``actual`` [n, H] within its ensemble ``paths`` [n, S, H] (see the module)."""
    paths = np.asarray(paths, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)[:, None]
    below = (paths < actual).sum(axis=1)
    ties = (paths == actual).sum(axis=1)
    return (below + rng.random(below.shape) * (ties + 1)) / (paths.shape[1] + 1)


def pit_summary(pit: np.ndarray) -> dict[str, Any]:
    """Histogram (density per bin: 1 everywhere for a calibrated forecast) and KS distance from U(0, 1)."""
    from scipy.stats import kstest

    flat = np.asarray(pit, dtype=np.float64).reshape(-1)
    counts, _ = np.histogram(flat, bins=PIT_BINS, range=(0.0, 1.0))
    return {"bins": PIT_BINS, "density": (counts * PIT_BINS / max(flat.size, 1)).tolist(),
            "ks_distance": float(kstest(flat, "uniform").statistic),
            "ks_per_horizon": [float(kstest(column, "uniform").statistic) for column in np.asarray(pit).T]}


def up_probability(close_paths: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """P(up) [n, H]: the share of paths [n, S, H] (price units) above the last history close [n]."""
    return (np.asarray(close_paths) > np.asarray(last_close)[:, None, None]).mean(axis=1)


def brier(p_up: np.ndarray, up: np.ndarray) -> dict[str, Any]:
    """Brier score of P(up) [n, H] against the outcomes ``up`` [n, H] (bool), and the reliability table pooled
    over origins and horizons: per bin of P(up), the count, mean forecast and observed frequency."""
    import scoringrules

    p_up = np.asarray(p_up, dtype=np.float64)
    outcome = np.asarray(up, dtype=np.float64)
    score = np.asarray(scoringrules.brier_score(outcome, p_up, backend="numpy"))
    which = np.minimum((p_up * RELIABILITY_BINS).astype(np.int64), RELIABILITY_BINS - 1).reshape(-1)
    count = np.bincount(which, minlength=RELIABILITY_BINS)
    forecast = np.bincount(which, weights=p_up.reshape(-1), minlength=RELIABILITY_BINS)
    observed = np.bincount(which, weights=outcome.reshape(-1), minlength=RELIABILITY_BINS)
    table = [{"bin": [b / RELIABILITY_BINS, (b + 1) / RELIABILITY_BINS], "count": int(count[b]),
              "mean_forecast": float(forecast[b] / count[b]) if count[b] else None,
              "observed": float(observed[b] / count[b]) if count[b] else None} for b in range(RELIABILITY_BINS)]
    return {**_summary(score), "last_horizon": float(score[:, -1].mean()),
            "base_rate": float(outcome.mean()), "reliability": table}


def one_bar_abs_returns(close: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """|close_h / close_h-1 - 1| along the last axis of ``close`` [..., H], with close_0 = ``last_close``."""
    close = np.asarray(close, dtype=np.float64)
    last = np.asarray(last_close, dtype=np.float64)[:, None]  # [n, 1]: broadcasts over leading path axes
    previous = np.concatenate([np.broadcast_to(last, close.shape[:-1] + (1,)), close[..., :-1]], axis=-1)
    return np.abs(close / previous - 1.0)


def volatility_error(close_paths: np.ndarray, last_close: np.ndarray, future_close: np.ndarray) -> dict[str, Any]:
    """Forecast volatility (the mean over paths of each bar's |one-bar return|) vs the realised |return|."""
    predicted = one_bar_abs_returns(np.moveaxis(close_paths, 1, 0), last_close).mean(axis=0)  # [n, H]
    realised = one_bar_abs_returns(future_close, last_close)
    error = predicted - realised
    return {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean())),
            "mae_per_horizon": np.abs(error).mean(axis=0).tolist(),
            "mean_predicted": float(predicted.mean()), "mean_realised": float(realised.mean()),
            "ratio": metrics._finite_or_none(predicted.mean() / realised.mean()) if realised.mean() > 0 else None,
            "correlation": metrics._finite_or_none(metrics.pearson(predicted.reshape(-1), realised.reshape(-1)))}
