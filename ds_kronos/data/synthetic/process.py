"""The true process, one block of bars at a time: the GJR-GARCH-t recursion of :mod:`ds_kronos.data.synthetic.spec`
run over time with numpy across columns (a block of symbols for the generator, the sampled paths of one origin for
the oracle), then each bar's open, high, low, volume and amount.

A bar's log price moves from the previous close to its close along a Brownian bridge of the bar's variance
v = s^2 h: the open is the bridge at the gap's share w of the bar (w = 0: the previous close), and the high and low
are draws of the bridge's maximum and minimum from the open to the close, exactly distributed given both ends
(P(max > m) = exp(-2 (m - a)(m - b) / v')), so high >= max(open, close) and low <= min(open, close) by
construction. Volume = base x s^2 x (h / bar_variance)^(elasticity / 2) x exp(shock (|z| - E|z|) + noise),
amount = volume x (high + low + 2 close) / 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from ds_kronos.data.synthetic.spec import SymbolSpec

PARAMS = ("omega", "alpha", "beta", "gamma", "ar", "nu", "bar_variance", "volume_base", "volume_elasticity",
          "volume_shock", "volume_noise")
BAR_FIELDS = ("open", "high", "low", "close", "volume", "amount")


@dataclass
class Params:
    """Per column (float64 [S]) parameters of the process."""

    omega: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    ar: np.ndarray
    nu: np.ndarray
    bar_variance: np.ndarray
    volume_base: np.ndarray
    volume_elasticity: np.ndarray
    volume_shock: np.ndarray
    volume_noise: np.ndarray

    @classmethod
    def of(cls, specs: list[SymbolSpec], repeat: int = 1) -> "Params":
        """The parameters of ``specs`` as columns, each spec ``repeat`` times (the oracle's paths)."""
        return cls(**{name: np.repeat(np.array([getattr(s, name) for s in specs], dtype=np.float64), repeat)
                      for name in PARAMS})

    def t_scale(self) -> np.ndarray:
        """Factor that gives a Student-t draw unit variance."""
        return np.sqrt((self.nu - 2.0) / self.nu)

    def mean_abs_z(self) -> np.ndarray:
        """E|z| of the unit-variance Student-t."""
        nu = self.nu
        return (2.0 * np.sqrt(nu) * np.exp(gammaln((nu + 1) / 2) - gammaln(nu / 2)) / (np.sqrt(np.pi) * (nu - 1))
                * self.t_scale())


@dataclass
class State:
    """Per column: the next bar's conditional variance h, the last return, the last log close."""

    h: np.ndarray
    r: np.ndarray
    log_close: np.ndarray

    @classmethod
    def at_listing(cls, params: Params, price0: np.ndarray) -> "State":
        """Before a symbol's first bar: h at its long-run level, no last return, the first price."""
        return cls(params.bar_variance.copy(), np.zeros_like(price0), np.log(price0))


def run_returns(params: Params, state: State, scale: np.ndarray, z: np.ndarray,
                resets: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns and conditional variances h, [T, S], of the bars whose scales are ``scale`` [T] and standardised
    shocks ``z`` [T, S]; ``state`` (h, r) moves to after the last bar. ``resets``: row -> columns that list at that
    row (their h and last return start afresh)."""
    steps, columns = z.shape
    returns, variances = np.empty((steps, columns)), np.empty((steps, columns))
    h, r = state.h, state.r
    e, negative = np.empty(columns), np.empty(columns)
    omega, alpha, beta, gamma, ar = params.omega, params.alpha, params.beta, params.gamma, params.ar
    for t in range(steps):
        if resets and t in resets:
            idx = resets[t]
            h[idx], r[idx] = params.bar_variance[idx], 0.0
        variances[t] = h
        np.sqrt(h, out=e)
        e *= z[t]
        r = ar * r + scale[t] * e
        returns[t] = r
        np.less(e, 0.0, out=negative)
        h = omega + (alpha + gamma * negative) * (e * e) + beta * h
    state.h, state.r = h, r
    return returns, variances


def draw_shocks(params: Params, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Student-t shocks [T, S] (each column its own nu)."""
    return rng.standard_t(params.nu, size=(steps, params.nu.shape[0])) * params.t_scale()


def _bridge_extreme(mid: np.ndarray, move: np.ndarray, rest: np.ndarray, rng: np.random.Generator,
                    sign: float) -> np.ndarray:
    """exp of the bridge's maximum (sign 1) or minimum (-1): (a + b +- sqrt((b - a)^2 + 2 v' E)) / 2, E ~ Exp(1)."""
    extreme = rng.standard_exponential(mid.shape)
    extreme *= rest
    extreme += move
    np.sqrt(extreme, out=extreme)
    extreme *= sign
    extreme += mid
    extreme *= 0.5
    return np.exp(extreme, out=extreme)


def bars(params: Params, state: State, scale: np.ndarray, gap: np.ndarray, rng: np.random.Generator,
         resets: dict[int, np.ndarray] | None = None, active: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Bars [T, S] of every field of :data:`BAR_FIELDS`, plus ``variance`` (the conditional variance s^2 h of each
    bar's log return); ``state`` moves to after the last bar. ``active`` [T, S]: where a symbol trades (its
    returns elsewhere are left out of the price, so a symbol starts trading at its first price)."""
    steps = scale.shape[0]
    z = draw_shocks(params, steps, rng)
    returns, h = run_returns(params, state, scale, z, resets)
    if active is not None:
        returns *= active
    log_close = state.log_close + np.cumsum(returns, axis=0)
    state.log_close = log_close[-1].copy()
    variance = h * (scale * scale)[:, None]
    log_open = log_close - returns
    w = gap[:, None]
    gapped = np.flatnonzero(gap > 0)
    if gapped.size:  # the open: the bridge at the gap's end
        noise = rng.standard_normal((gapped.size, z.shape[1]))
        wg = w[gapped]
        log_open[gapped] += wg * returns[gapped] + np.sqrt(wg * (1.0 - wg) * variance[gapped]) * noise
    rest = (2.0 * (1.0 - w)) * variance
    move = (log_close - log_open) ** 2
    mid = log_open + log_close
    high = _bridge_extreme(mid, move, rest, rng, 1.0)
    low = _bridge_extreme(mid, move, rest, rng, -1.0)
    open_, close = np.exp(log_open), np.exp(log_close)
    np.maximum(high, np.maximum(open_, close), out=high)  # rounding of exp must not undo the bridge's order
    np.minimum(low, np.minimum(open_, close), out=low)
    log_volume = np.log(h / params.bar_variance)
    log_volume *= params.volume_elasticity / 2.0
    log_volume += params.volume_shock * (np.abs(z) - params.mean_abs_z()) - params.volume_noise ** 2 / 2.0
    log_volume += params.volume_noise * rng.standard_normal(z.shape, dtype=np.float32)
    volume = np.exp(log_volume, out=log_volume)
    volume *= params.volume_base * (scale * scale)[:, None]
    amount = high + low
    amount += 2.0 * close
    amount *= volume / 4.0
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume, "amount": amount,
            "variance": variance}
