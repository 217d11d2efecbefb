"""Probabilistic baselines: sampled paths built from each origin's own history, scored like the model's.

Both work on the normalised history the model sees (``[n, lookback, 6]``, clipped as in training), feature by
feature, in levels: a path starts at the last history bar and adds one change per bar.

* ``random_walk``: Gaussian changes with the sample std (ddof 1) of the last ``window`` one-bar changes of the
  history (the "random walk with historical volatility"; zero drift);
* ``bootstrap``: changes drawn with replacement from all one-bar changes of the history, one history bar per draw
  for all six features together (so their dependence is kept).

The draws come from numpy generators seeded from the evaluation's seed, on rank 0 in origin order: the same
paths whatever the number of ranks.
"""

from __future__ import annotations

import numpy as np

RANDOM_WALK_WINDOW = 20
"""Default bars of history whose one-bar changes give the random walk's volatility (evaluation and training)."""
RANDOM_WALK_STREAM = 1  # generator streams per baseline: np.random.default_rng([seed, stream])
BOOTSTRAP_STREAM = 2


def one_bar_changes(history: np.ndarray) -> np.ndarray:
    """[n, L - 1, F] changes x_t - x_t-1 of a history [n, L, F]."""
    return np.diff(np.asarray(history, dtype=np.float64), axis=1)


def random_walk_paths(history: np.ndarray, horizon: int, paths: int, window: int, seed: int) -> np.ndarray:
    """[n, paths, horizon, F]: last bar + cumulative N(0, sigma^2) changes, sigma the std of the last ``window``
    one-bar changes of each origin's and feature's history."""
    changes = one_bar_changes(history)[:, -window:]
    sigma = changes.std(axis=1, ddof=1) if changes.shape[1] > 1 else np.zeros(changes[:, 0].shape)  # [n, F]
    rng = np.random.default_rng([seed, RANDOM_WALK_STREAM])
    steps = rng.standard_normal((history.shape[0], paths, horizon, history.shape[2])) * sigma[:, None, None, :]
    return history[:, -1][:, None, None, :] + np.cumsum(steps, axis=2)


def bootstrap_paths(history: np.ndarray, horizon: int, paths: int, seed: int) -> np.ndarray:
    """[n, paths, horizon, F]: last bar + cumulative changes resampled (with replacement) from the history's own
    one-bar changes, the six features of a drawn bar together."""
    changes = one_bar_changes(history)  # [n, L - 1, F]
    if changes.shape[1] == 0:  # a one-bar history has no change to draw: the path stays flat
        changes = np.zeros((history.shape[0], 1, history.shape[2]))
    rng = np.random.default_rng([seed, BOOTSTRAP_STREAM])
    pick = rng.integers(0, changes.shape[1], size=(history.shape[0], paths * horizon))
    drawn = np.take_along_axis(changes, pick[:, :, None], axis=1).reshape(history.shape[0], paths, horizon, -1)
    return history[:, -1][:, None, None, :] + np.cumsum(drawn, axis=2)
