"""The oracle: the true process's own predictive distribution at an origin, the best forecast any model of a
synthetic market can make (a row beside the random walk and the econometric baselines).

The process's state is observable from the bars: its conditional variance h is a function of the past closes, found
by running the GJR recursion over the history's close-to-close returns. It starts exactly when the history begins
at the symbol's listing (from the first price), otherwise at the long-run level h = bar_variance, whose error fades
as beta^bars (0.9^100 = 3e-5). Paths are then drawn with the generator's own code
(:func:`ds_kronos.data.synthetic.process.bars`), in the evaluation's bar layout [paths, horizon, 6] (open, high,
low, close, volume, amount; price units).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ds_kronos.data.series import CLOSE, SymbolSeries
from ds_kronos.data.synthetic.calendar import day_template, following_stamps, positions
from ds_kronos.data.synthetic.process import BAR_FIELDS, Params, State, bars
from ds_kronos.data.synthetic.spec import SymbolSpec
from ds_kronos.errors import DataError


def _history(history: pd.DataFrame | SymbolSeries | tuple) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps int64 ns, closes) of a DataFrame (a ``timestamps`` column or a DatetimeIndex, and ``close``), a
    :class:`SymbolSeries`, or a pair (timestamps, values [L, 6])."""
    if isinstance(history, pd.DataFrame):
        stamps = history["timestamps"] if "timestamps" in history.columns else history.index
        stamps, close = pd.DatetimeIndex(stamps).asi8, history["close"].to_numpy(np.float64)
    elif isinstance(history, SymbolSeries):
        stamps, close = history.timestamps, history.values[:, CLOSE]
    else:
        stamps, close = history[0], np.asarray(history[1])[:, CLOSE]
    stamps, close = np.asarray(stamps, dtype=np.int64), np.asarray(close, dtype=np.float64)
    if stamps.size == 0 or not (close > 0).all():
        raise DataError("the oracle needs a history of at least one bar with positive closes")
    return stamps, close


def filter_state(spec: SymbolSpec, history) -> tuple[State, int]:
    """The process's state after the history's last bar, and that bar's timestamp."""
    stamps, close = _history(history)
    template = day_template(spec.sessions, spec.freq, spec.overnight, spec.lunch, spec.u_shape)
    scale = template.scale[positions(template, stamps)]
    listed = stamps[0] == np.datetime64(spec.listed, "ns").astype(np.int64)
    log_close = np.log(close)
    start = np.log(spec.price0) if listed else log_close[0]
    returns = np.diff(log_close, prepend=start)[0 if listed else 1:]
    scale = scale[0 if listed else 1:]
    h, r = spec.bar_variance, 0.0
    omega, alpha, beta, gamma, ar = spec.omega, spec.alpha, spec.beta, spec.gamma, spec.ar
    for ret, s in zip(returns.tolist(), scale.tolist()):
        e = (ret - ar * r) / s
        h = omega + (alpha + (gamma if e < 0 else 0.0)) * e * e + beta * h
        r = ret
    return State(np.array([h]), np.array([r]), np.array([log_close[-1]])), int(stamps[-1])


def oracle_variance(spec: SymbolSpec, history, horizon: int) -> np.ndarray:
    """[horizon] variance of log(close_{t+k} / close_t), k = 1..horizon, under the true process (the evaluation's
    ``BaselineForecasts.variance``): the GJR forecast E h_{k+1} = omega + (alpha + gamma/2 + beta) E h_k, each
    bar's shock carried forward by the AR(1) of the returns."""
    state, last = filter_state(spec, history)
    template = day_template(spec.sessions, spec.freq, spec.overnight, spec.lunch, spec.u_shape)
    _, k = following_stamps(template, last, horizon)
    persistence = spec.alpha + spec.beta + spec.gamma / 2.0
    h = np.empty(horizon)
    h[0] = state.h[0]
    for j in range(1, horizon):
        h[j] = spec.omega + persistence * h[j - 1]
    shock = h * template.scale[k] ** 2  # variance of bar j's own shock
    steps = np.arange(horizon)
    # The shock of bar j adds (1 + ar + ... + ar^(m-j)) of itself to the log return up to bar m.
    lag = steps[:, None] - steps[None, :]
    carry = np.where(lag >= 0, (1.0 - spec.ar ** (np.maximum(lag, 0) + 1)) / (1.0 - spec.ar), 0.0)
    return (carry ** 2) @ shock


def oracle_paths(spec: SymbolSpec, history, horizon: int, n_paths: int, seed: int) -> np.ndarray:
    """[n_paths, horizon, 6] bars (open, high, low, close, volume, amount) drawn from the true process after the
    history's last bar; the same seed gives the same paths."""
    if horizon < 1 or n_paths < 1:
        raise DataError(f"the oracle needs horizon >= 1 and n_paths >= 1, got {horizon} and {n_paths}")
    one, last = filter_state(spec, history)
    template = day_template(spec.sessions, spec.freq, spec.overnight, spec.lunch, spec.u_shape)
    _, k = following_stamps(template, last, horizon)
    params = Params.of([spec], repeat=n_paths)
    state = State(np.repeat(one.h, n_paths), np.repeat(one.r, n_paths), np.repeat(one.log_close, n_paths))
    drawn = bars(params, state, template.scale[k], template.gap[k], np.random.default_rng(seed))
    return np.stack([drawn[name].T for name in BAR_FIELDS], axis=-1)
