"""Scoring the gathered forecasts: the realised windows, the metrics of the model and the naive baselines, the
calibration of sampled bands and the examples to draw (rank 0)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ds_kronos.data.normalise import denormalise
from ds_kronos.data.series import CLOSE, VALUE_COLUMNS
from ds_kronos.evaluation import metrics
from ds_kronos.evaluation.origins import origin_windows
from ds_kronos.evaluation.report import Example
from ds_kronos.evaluation.selection import EvaluationSet

TARGET_CHUNK = 8192  # origins per chunk when rank 0 rebuilds the realised windows (bounds memory)


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


def calibrate(bands_norm: np.ndarray, real: Realised, quantiles: list[float]) -> dict[str, Any]:
    """:func:`metrics.quantile_calibration` of every feature, the forecast quantiles taken back to data units."""
    bands = denormalise(bands_norm, real.mean[:, None, None, :], real.std[:, None, None, :])
    return {name: metrics.quantile_calibration(bands[..., f], real.future_raw[..., f], quantiles)
            for f, name in enumerate(VALUE_COLUMNS)}


def pick_examples(selection: EvaluationSet, real: Realised, model_close: np.ndarray, count: int) -> list[Example]:
    """The latest origin of up to ``count`` symbols spread over the symbol list."""
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
            actual_close=real.future_close[i], forecast_close=model_close[i]))
    return examples
