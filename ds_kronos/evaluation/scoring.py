"""Scoring the gathered forecasts: the realised windows, the metrics of the model and the naive baselines, the
calibration of sampled bands and the examples to draw (rank 0)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ds_kronos.data.normalise import denormalise
from ds_kronos.data.series import CLOSE, VALUE_COLUMNS
from ds_kronos.evaluation import metrics, probabilistic
from ds_kronos.evaluation.baselines import bootstrap_paths, random_walk_paths
from ds_kronos.evaluation.origins import origin_windows
from ds_kronos.evaluation.report import Example
from ds_kronos.evaluation.selection import EvaluationSet

TARGET_CHUNK = 8192  # origins per chunk when rank 0 rebuilds the realised windows (bounds memory)
PIT_STREAM = 3  # np.random.default_rng([seed, PIT_STREAM]) draws the PIT's randomisation (baselines use 1 and 2)
FEATURE_ORDER = [CLOSE] + [f for f in range(len(VALUE_COLUMNS)) if f != CLOSE]  # the close first


@dataclasses.dataclass(frozen=True)
class Realised:
    """What rank 0 needs about every origin's windows to score forecasts (all [n, ...], origin order)."""

    future_norm: np.ndarray      # float32 [n, H, 6] clipped normalised realised future
    last_norm: np.ndarray        # float32 [n, 6] normalised last history bar
    future_close: np.ndarray     # float32 [n, H] realised close, price units
    last_close: np.ndarray       # float32 [n]
    close_mean: np.ndarray       # float32 [n] lookback mean of the close
    close_std: np.ndarray        # float32 [n] lookback std of the close
    future_raw: np.ndarray       # float32 [n, H, 6] realised future, data units
    mean: np.ndarray             # float32 [n, 6] lookback mean of every feature
    std: np.ndarray              # float32 [n, 6] lookback std of every feature
    history_norm: np.ndarray     # float32 [n, L, 6] the normalised (clipped) history the model sees
    naive_scale: np.ndarray      # float64 [n, 6] in-sample one-step naive error, mean |x_t - x_t-1| of the history


def realised_windows(selection: EvaluationSet, clip: float) -> Realised:
    parts: dict[str, list[np.ndarray]] = {f.name: [] for f in dataclasses.fields(Realised)}
    L = selection.lookback
    for start in range(0, len(selection.origins), TARGET_CHUNK):
        rows = selection.origins.rows[start:start + TARGET_CHUNK]
        win = origin_windows(selection.split, rows, L, selection.pred_len, clip)
        parts["future_norm"].append(win.norm[:, L:])
        parts["last_norm"].append(win.norm[:, L - 1])
        parts["future_close"].append(win.raw[:, L:, CLOSE])
        parts["last_close"].append(win.raw[:, L - 1, CLOSE])
        parts["close_mean"].append(win.mean[:, 0, CLOSE])
        parts["close_std"].append(win.std[:, 0, CLOSE])
        parts["future_raw"].append(win.raw[:, L:])
        parts["mean"].append(win.mean[:, 0])
        parts["std"].append(win.std[:, 0])
        parts["history_norm"].append(win.norm[:, :L])
        parts["naive_scale"].append(np.abs(np.diff(win.raw[:, :L].astype(np.float64), axis=1)).mean(axis=1))
    return Realised(**{name: np.concatenate(arrays) for name, arrays in parts.items()})


def score_all(pred_norm: np.ndarray, real: Realised, dates: np.ndarray,
              reference_norm: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of the model (and the reference predictor) and the baselines, and the model's predicted close in price
    units [n, H]."""
    horizon = real.future_norm.shape[1]
    real_returns = metrics.window_returns(real.future_close, real.last_close)
    actual_close_norm = real.future_norm[:, :, CLOSE]
    common = dict(actual_close_norm=actual_close_norm, real_returns=real_returns, dates=dates)

    def score_forecaster(norm: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        close = denormalise(norm[:, :, CLOSE], real.close_mean[:, None], real.close_std[:, None])
        return metrics.score(pred_close_norm=norm[:, :, CLOSE], pred_returns=metrics.window_returns(
            close, real.last_close), pred_norm=norm, actual_norm=real.future_norm, **common), close

    scores = {}
    scores["model"], model_close = score_forecaster(pred_norm)
    if reference_norm is not None:
        scores["reference"] = score_forecaster(reference_norm)[0]
    last = np.repeat(real.last_norm[:, None, :], horizon, axis=1)
    flat = np.zeros_like(real_returns)  # both "unchanged close" baselines predict a zero return exactly
    scores["last_value"] = metrics.score(pred_close_norm=last[:, :, CLOSE], pred_returns=flat, pred_norm=last,
                                         actual_norm=real.future_norm, with_ic=False, **common)
    scores["zero_return"] = metrics.score(pred_close_norm=last[:, :, CLOSE], pred_returns=flat, with_ic=False,
                                          **common)
    mean_close = np.repeat(real.close_mean[:, None], horizon, axis=1)
    scores["history_mean"] = metrics.score(
        pred_close_norm=np.zeros_like(actual_close_norm), pred_returns=metrics.window_returns(
            mean_close, real.last_close), pred_norm=np.zeros_like(real.future_norm), actual_norm=real.future_norm,
        **common)
    return scores, model_close


def score_distribution(paths_norm: np.ndarray, real: Realised, quantiles: list[float], seed: int,
                       columns: list[int] = FEATURE_ORDER) -> dict[str, Any]:
    """Probabilistic scores (:mod:`ds_kronos.evaluation.probabilistic`) of the ensemble ``paths_norm`` [n, S, H, 6]
    (normalised units; S = 1 for a point forecast) per feature of ``columns`` (the close first): CRPS in
    normalised and price units, MASE and WQL, and with S >= 2 the coverage of the central bands and the PIT (price
    units); for the close also the Brier score of P(up) and the volatility error."""
    paths_count = paths_norm.shape[1]
    rng = np.random.default_rng([seed, PIT_STREAM])  # a fresh stream per forecaster: row order does not matter
    features: dict[str, Any] = {}
    close_price = None
    for f in columns:
        norm = paths_norm[..., f]
        price = denormalise(norm.astype(np.float64), real.mean[:, None, None, f].astype(np.float64),
                            real.std[:, None, None, f].astype(np.float64))  # [n, S, H]
        actual = real.future_raw[..., f].astype(np.float64)
        entry: dict[str, Any] = {
            "crps": {"normalised": probabilistic._summary(probabilistic.crps_values(norm, real.future_norm[..., f])),
                     "price": probabilistic._summary(probabilistic.crps_values(price, actual))},
            "mase": probabilistic.mase(price.mean(axis=1), actual, real.naive_scale[:, f])}
        bands = probabilistic.path_quantiles(price, quantiles) if quantiles else None
        entry["wql"] = probabilistic.weighted_quantile_loss(bands, actual, quantiles) if quantiles else None
        if paths_count > 1:
            entry["coverage"] = metrics.quantile_calibration(bands, actual, quantiles)["bands"] if quantiles else []
            entry["pit"] = probabilistic.pit_summary(probabilistic.pit_values(price, actual, rng))
        else:  # a point forecast has no spread: no band, and its PIT is 0 or 1
            entry["coverage"], entry["pit"] = None, None
        features[VALUE_COLUMNS[f]] = entry
        if f == CLOSE:
            close_price = price
    close = features[VALUE_COLUMNS[CLOSE]]
    close["p_up"] = probabilistic.brier(probabilistic.up_probability(close_price, real.last_close),
                                        real.future_close > real.last_close[:, None])
    close["volatility"] = (probabilistic.volatility_error(close_price, real.last_close, real.future_close)
                           if paths_count > 1 else None)
    return {"paths": paths_count, "features": features}


def skill(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """1 - CRPS_row / CRPS_reference of the close, overall and per horizon, in both units."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b <= 0 else 1.0 - a / b

    close, ref = row["features"]["close"]["crps"], reference["features"]["close"]["crps"]
    return {units: {"mean": ratio(close[units]["mean"], ref[units]["mean"]),
                    "per_horizon": [ratio(a, b) for a, b in zip(close[units]["per_horizon"],
                                                                ref[units]["per_horizon"])]}
            for units in ("normalised", "price")}


def probabilistic_ensembles(paths_norm: np.ndarray, real: Realised, seed: int, random_walk_window: int,
                            reference_paths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model (and reference) ensembles, the random walk and bootstrap baselines with as many paths, and the
    point baselines as one-member ensembles, all [n, S, H, 6] in normalised units."""
    probabilistic.require_paths(paths_norm)
    paths_count, horizon = paths_norm.shape[1], paths_norm.shape[2]
    history = real.history_norm.astype(np.float64)
    ensembles: dict[str, np.ndarray] = {"model": paths_norm}
    if reference_paths is not None:
        ensembles["reference"] = reference_paths
    ensembles["random_walk"] = random_walk_paths(history, horizon, paths_count, random_walk_window, seed)
    ensembles["bootstrap"] = bootstrap_paths(history, horizon, paths_count, seed)
    ensembles["last_value"] = np.repeat(real.last_norm[:, None, None, :], horizon, axis=2)
    ensembles["history_mean"] = np.zeros_like(ensembles["last_value"])  # the lookback mean, 0 when normalised
    return ensembles


def score_ensembles(ensembles: dict[str, np.ndarray], real: Realised, quantiles: list[float], seed: int,
                    random_walk_window: int, close_only: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The report's probabilistic section: every ensemble scored (those in ``close_only`` forecast the close
    alone), each with its skill against the random walk."""
    rows = {name: score_distribution(paths, real, quantiles, seed,
                                     [CLOSE] if name in close_only else FEATURE_ORDER)
            for name, paths in ensembles.items()}
    for row in rows.values():
        row["skill_vs_random_walk"] = skill(row, rows["random_walk"])
    return {"paths": ensembles["model"].shape[1], "quantiles": quantiles, "random_walk_window": random_walk_window,
            "seed": seed,
            "units": "CRPS in normalised units (as MAE) and in price/data units; WQL, MASE, coverage, PIT, P(up) "
                     "and volatility in price/data units",
            "rows": rows}


def score_probabilistic(paths_norm: np.ndarray, real: Realised, quantiles: list[float], seed: int,
                        random_walk_window: int, reference_paths: np.ndarray | None = None) -> dict[str, Any]:
    """:func:`score_ensembles` of :func:`probabilistic_ensembles`."""
    return score_ensembles(probabilistic_ensembles(paths_norm, real, seed, random_walk_window, reference_paths),
                           real, quantiles, seed, random_walk_window)


def close_crps(ensembles: dict[str, np.ndarray], real: Realised) -> dict[str, np.ndarray]:
    """Per ensemble, the CRPS of the close (normalised units) per origin [n], the mean over the horizons."""
    return {name: probabilistic.crps_values(paths[..., CLOSE], real.future_norm[..., CLOSE]).mean(axis=1)
            for name, paths in ensembles.items()}


def calibrate(bands_norm: np.ndarray, real: Realised, quantiles: list[float]) -> dict[str, Any]:
    """:func:`metrics.quantile_calibration` of every feature, the forecast quantiles taken back to data units."""
    bands = denormalise(bands_norm, real.mean[:, None, None, :], real.std[:, None, None, :])
    return {name: metrics.quantile_calibration(bands[..., f], real.future_raw[..., f], quantiles)
            for f, name in enumerate(VALUE_COLUMNS)}


def pick_examples(selection: EvaluationSet, real: Realised, model_close: np.ndarray, count: int,
                  band_paths: dict[str, np.ndarray] | None = None) -> list[Example]:
    """The latest origin of up to ``count`` symbols spread over the symbol list, with the 80% band (10% and 90%
    quantiles) of each ensemble of ``band_paths`` (label -> [n, S, H, 6] normalised paths)."""
    symbols_present = np.unique(selection.origins.symbols)
    if count == 0 or symbols_present.size == 0:
        return []
    chosen = symbols_present[np.unique(np.linspace(0, symbols_present.size - 1, min(count, symbols_present.size))
                                       .round().astype(int))]
    examples = []
    for symbol in chosen:
        i = int(np.flatnonzero(selection.origins.symbols == symbol)[-1])
        row = int(selection.origins.rows[i])
        history = slice(row - selection.lookback, row)
        examples.append(Example(
            symbol=selection.split.symbols[symbol],
            history_ns=np.asarray(selection.split.timestamps[history]),
            history_close=np.asarray(selection.split.values[history, CLOSE]),
            future_ns=np.asarray(selection.split.timestamps[row:row + selection.pred_len]),
            actual_close=real.future_close[i], forecast_close=model_close[i],
            bands={label: np.quantile(denormalise(paths[i, :, :, CLOSE].astype(np.float64), real.close_mean[i],
                                                  real.close_std[i]), [0.1, 0.9], axis=0)
                   for label, paths in (band_paths or {}).items()}))
    return examples
