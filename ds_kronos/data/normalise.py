"""Upstream Kronos's normalisation, numpy only: per window and per column, subtract the mean and divide by
(population std + 1e-5) of the history rows, all in float32, then clip to [-clip, clip]; and its inverse."""

from __future__ import annotations

import numpy as np

NORM_EPS = np.float32(1e-5)
DEFAULT_CLIP = 5.0
"""Normalised features are clipped to [-5, 5], as upstream does (``--clip`` of training, evaluation, forecast)."""


def normalise(values: np.ndarray, mean: np.ndarray, std: np.ndarray, clip: float) -> np.ndarray:
    """``(values - mean) / (std + 1e-5)`` clipped to [-clip, clip] (broadcasting; float32 in, float32 out)."""
    return np.clip((values - mean) / (std + NORM_EPS), -clip, clip)


def denormalise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalised ``values`` back to the data's units: ``values * (std + 1e-5) + mean`` (broadcasting)."""
    return values * (std + NORM_EPS) + mean


def normalise_windows(raw: np.ndarray, lookback: int, clip: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upstream's per-window normalisation of ``raw`` [B, T, F] float32: (raw - mean) / (std + 1e-5) with the
    mean and population std of the first ``lookback`` rows, clipped to [-clip, clip]. Returns (x, mean, std)."""
    past = raw[:, :lookback]
    mean = past.mean(axis=1, keepdims=True, dtype=np.float32)
    std = past.std(axis=1, keepdims=True, dtype=np.float32)
    x = normalise(raw, mean, std, clip).astype(np.float32, copy=False)
    return x, mean, std
