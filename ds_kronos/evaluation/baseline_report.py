"""Rank 0: the arch baselines (:mod:`ds_kronos.evaluation.arch_baselines`) scored beside the model: their close
paths join the probabilistic section's rows, every sampled row's variance forecast is scored by QLIKE and MSE
(:mod:`ds_kronos.evaluation.volatility`), and the model is tested against every row
(:mod:`ds_kronos.evaluation.comparisons`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ds_kronos.data.normalise import denormalise, normalise
from ds_kronos.data.series import CLOSE, VALUE_COLUMNS
from ds_kronos.evaluation.arch_baselines import BaselineForecasts, BaselinePlan, fit_counts
from ds_kronos.evaluation.comparisons import tests_section
from ds_kronos.evaluation.oracle_row import ORACLE, oracle_section
from ds_kronos.evaluation.scoring import Realised, close_crps, probabilistic_ensembles, score_ensembles
from ds_kronos.evaluation.volatility import path_variance, score_volatility

MODEL_ROWS = ("model", "reference", ORACLE)  # rows that are not baselines (the oracle is no forecaster's rival)


@dataclasses.dataclass(frozen=True)
class Losses:
    """Per-origin losses [n] of every row (mean over horizons), for the tests and the walk-forward folds."""

    crps: dict[str, np.ndarray]
    qlike: dict[str, np.ndarray]


def arch_ensembles(forecasts: BaselineForecasts, names: tuple[str, ...], real: Realised,
                   clip: float) -> dict[str, np.ndarray]:
    """Each baseline's close paths as an ensemble [n, S, H, 6] in normalised units (clipped as the model's; only
    the close is filled)."""
    out = {}
    for b, name in enumerate(names):
        ensemble = np.zeros(forecasts.paths.shape[:3] + (len(VALUE_COLUMNS),), dtype=np.float32)
        ensemble[..., CLOSE] = normalise(forecasts.paths[..., b], real.close_mean[:, None, None],
                                         real.close_std[:, None, None], clip)
        out[name] = ensemble
    return out


def predicted_variances(ensembles: dict[str, np.ndarray], forecasts: BaselineForecasts | None,
                        names: tuple[str, ...], real: Realised) -> dict[str, np.ndarray]:
    """[n, H] predicted variance of log(close_h / last close): from the paths of each sampled row, the analytic
    forecast of each arch baseline."""
    out = {}
    for name, paths in ensembles.items():
        if paths.shape[1] > 1 and name not in names:
            price = denormalise(paths[..., CLOSE].astype(np.float64), real.close_mean[:, None, None].astype(np.float64),
                                real.close_std[:, None, None].astype(np.float64))
            out[name] = path_variance(price, real.last_close)
    if forecasts is not None:
        for b, name in enumerate(names):
            out[name] = forecasts.variance[..., b].astype(np.float64)
    return out


def strongest_baseline(rows: dict[str, Any]) -> str | None:
    """The baseline row with the lowest CRPS of the close (normalised units)."""
    scored = {name: row["features"]["close"]["crps"]["normalised"]["mean"] for name, row in rows.items()
              if name not in MODEL_ROWS}
    scored = {name: value for name, value in scored.items() if value is not None}
    return min(scored, key=scored.get) if scored else None


def score_baselines(ensembles: dict[str, np.ndarray], forecasts: BaselineForecasts | None, plan: BaselinePlan | None,
                    real: Realised, dates: np.ndarray, pred_len: int, stride: int, seed: int,
                    oracle: BaselineForecasts | None = None) -> tuple[dict[str, Any], dict[str, Any], Losses]:
    """The report's volatility and tests sections, and the per-origin losses."""
    names = plan.names if plan is not None else ()
    variances = predicted_variances(ensembles, forecasts, names, real)
    if oracle is not None:  # the true process's analytic variance, not its paths'
        variances[ORACLE] = oracle.variance[..., 0].astype(np.float64)
    volatility, qlike = score_volatility(variances, real.future_close, real.last_close)
    if plan is not None and forecasts is not None:
        volatility["baseline_fits"] = {**plan.describe(), "fits": fit_counts(names, forecasts.flags),
                                       "seconds": forecasts.seconds}
    losses = Losses(close_crps(ensembles, real), qlike)
    return volatility, tests_section(losses.crps, losses.qlike, dates, pred_len, stride, seed), losses


@dataclasses.dataclass(frozen=True)
class DistributionScores:
    """Everything scored from the sampled paths: the report's probabilistic, volatility and tests sections, the
    per-origin losses and the ensembles whose bands the examples draw."""

    probabilistic: dict[str, Any]
    volatility: dict[str, Any]
    tests: dict[str, Any]
    losses: Losses
    band_paths: dict[str, np.ndarray]


def score_distributions(paths: np.ndarray, reference_paths: np.ndarray | None,
                        baselines: tuple[BaselinePlan, BaselineForecasts | None] | None, real: Realised,
                        dates: np.ndarray, quantiles: list[float], seed: int, random_walk_window: int, clip: float,
                        pred_len: int, stride: int, oracle: BaselineForecasts | None = None) -> DistributionScores:
    """The model's (and reference's) paths, the sampled and point baselines, the arch baselines and the oracle
    (``--oracle``), scored."""
    ensembles = probabilistic_ensembles(paths, real, seed, random_walk_window, reference_paths)
    plan, fitted = baselines if baselines is not None else (None, None)
    if plan is not None and fitted is not None:
        ensembles.update(arch_ensembles(fitted, plan.names, real, clip))
    if oracle is not None:
        ensembles.update(arch_ensembles(oracle, (ORACLE,), real, clip))
    distribution = score_ensembles(ensembles, real, quantiles, seed, random_walk_window,
                                   frozenset((plan.names if plan else ()) + (ORACLE,)))
    if oracle is not None:
        distribution["oracle"] = oracle_section(distribution["rows"])
    volatility, tests, losses = score_baselines(ensembles, fitted, plan, real, dates, pred_len, stride, seed, oracle)
    strongest = strongest_baseline(distribution["rows"])
    band_paths = {"model": ensembles["model"], **({strongest: ensembles[strongest]} if strongest else {})}
    return DistributionScores(distribution, volatility, tests, losses, band_paths)


def format_volatility(section: dict[str, Any]) -> str:
    """QLIKE and MSE of every row's variance forecast, and the baselines' fit counts."""
    lines = [f"volatility forecast: predicted variance of {section['target']} (QLIKE = log s2 + r2/s2, lower is "
             f"better)", "".ljust(14) + "QLIKE".rjust(12) + "MSE".rjust(12) + "mean s2".rjust(12)]
    for name, row in section["rows"].items():
        lines.append(name.ljust(14) + f"{row['qlike']['mean']:12.4f}{row['mse']['mean']:12.3e}"
                                      f"{row['mean_predicted']:12.3e}")
    fits = section.get("baseline_fits")
    if fits:
        counts = ", ".join(f"{name} {c['not_converged']} not converged / {c['failed']} failed"
                           for name, c in fits["fits"].items())
        lines.append(f"baseline fits ({fits['history']}, {fits['bars']['min']}-{fits['bars']['max']} bars, "
                     f"{fits['seconds']:.1f} s): {counts}")
        lines += [f"baseline {name} left out: {why}" for name, why in fits["skipped"].items()]
    return "\n".join(lines)
