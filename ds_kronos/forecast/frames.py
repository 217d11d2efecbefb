"""The DataFrame-level forecasting API (upstream's ``KronosPredictor``), batched over many series.

Each series is normalised by the mean and std of the history it is given, clipped, forecast by the sampler
(:mod:`ds_kronos.forecast.sampler`, incremental decoding by default) and de-normalised. Besides upstream's mean
forecast, :meth:`KronosForecaster.forecast_values` / :meth:`KronosForecaster.forecast_batch` return quantile
bands of the sampled paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ds_kronos.data.normalise import DEFAULT_CLIP, denormalise, normalise
from ds_kronos.data.series import time_features
from ds_kronos.errors import UserError
from ds_kronos.forecast.sampler import Generators, sample_paths
from ds_kronos.forecast.sampler_file import SamplerSettings, resolve_sampler
from ds_kronos.model import Kronos, KronosTokenizer, check_pair

PRICE_COLUMNS = ("open", "high", "low", "close")
FEATURE_COLUMNS = (*PRICE_COLUMNS, "volume", "amount")


def calendar_features(timestamps: pd.Series | pd.DatetimeIndex | Sequence) -> np.ndarray:
    """[N, 5] float32 minute, hour, weekday (Monday=0), day of month, month: the models' time features (the same
    as the prepared data's, for any timestamp-like sequence)."""
    index = pd.DatetimeIndex(pd.to_datetime(timestamps))
    return time_features(index.to_numpy(dtype="datetime64[ns]")).astype(np.float32)


def quantile_column(field: str, quantile: float) -> str:
    """Column name of a quantile band, e.g. ``close_q0.1``."""
    return f"{field}_q{quantile:g}"


def check_quantiles(quantiles: Sequence[float]) -> list[float]:
    values = [float(q) for q in quantiles]
    bad = [q for q in values if not 0.0 < q < 1.0]
    if bad:
        raise UserError(f"quantiles must be in (0, 1), got {', '.join(f'{q:g}' for q in bad)}")
    return sorted(set(values))


@dataclass(frozen=True)
class Forecast:
    """Forecasts of B series in the data's units: ``mean`` float32 [B, H, 6] (the average of the sampled paths,
    upstream's forecast) and ``bands`` float32 [B, H, Q, 6], the ``quantiles`` of the paths per bar and feature."""

    mean: np.ndarray
    bands: np.ndarray
    quantiles: tuple[float, ...]


class KronosForecaster:
    """OHLCV DataFrames (or arrays) in, forecasts out.

    Missing ``volume``/``amount`` are filled as upstream (zeros; amount = volume x mean price). ``use_cache``
    selects incremental decoding (default) or upstream's full recomputation; both give the same forecasts.
    ``sampler`` holds the temperature, top-p and spread factor used where a call does not give them (default:
    upstream's, spread 1.0); :meth:`from_folders` takes them from the predictor folder's ``sampler.json`` when
    there is one. The spread factor widens the bands around an unchanged mean (the mean forecast ignores it), whole
    bars at a time (``widen_bars``: every path keeps low <= open, close <= high and non-negative volume).
    """

    def __init__(self, predictor: Kronos, tokenizer: KronosTokenizer, device: str | torch.device = "cpu",
                 max_context: int = 512, clip: float = DEFAULT_CLIP, use_cache: bool = True,
                 sampler: SamplerSettings | None = None):
        check_pair(tokenizer, predictor)
        self.sampler = sampler or SamplerSettings()
        self.device = torch.device(device)
        self.predictor = predictor.to(self.device)
        self.tokenizer = tokenizer.to(self.device)
        self.max_context = max_context
        self.clip = clip
        self.use_cache = use_cache

    @classmethod
    def from_folders(cls, tokenizer: str, predictor: str, device: str | torch.device = "cpu", max_context: int = 512,
                     clip: float = DEFAULT_CLIP, use_cache: bool = True,
                     sampler_file: bool = True) -> "KronosForecaster":
        """Load a tokenizer and a predictor folder (or presets); the predictor folder's ``sampler.json``
        (launch/calibrate.py) sets the default temperature, top-p and spread unless ``sampler_file=False``."""
        sampler = resolve_sampler(predictor, None, None, sampler_file)
        return cls(Kronos.from_folder_or_preset(predictor), KronosTokenizer.from_folder_or_preset(tokenizer), device,
                   max_context, clip, use_cache, sampler)

    @staticmethod
    def _features(df: pd.DataFrame, label: str) -> np.ndarray:
        if not isinstance(df, pd.DataFrame):
            raise UserError(f"{label}: expected a pandas DataFrame, got {type(df).__name__}")
        missing = [c for c in PRICE_COLUMNS if c not in df.columns]
        if missing:
            raise UserError(f"{label}: missing price column(s) {', '.join(missing)}")
        df = df.copy()
        if "volume" not in df.columns:
            df["volume"] = 0.0
            df["amount"] = 0.0
        if "amount" not in df.columns:
            df["amount"] = df["volume"] * df[list(PRICE_COLUMNS)].mean(axis=1)
        values = df[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32)
        if np.isnan(values).any():
            raise UserError(f"{label}: NaN values in price or volume columns")
        return values

    def forecast_values(self, values: Sequence[np.ndarray], x_stamps: Sequence[np.ndarray],
                        y_stamps: Sequence[np.ndarray], pred_len: int, quantiles: Sequence[float] = (),
                        temperature: float | None = None, top_k: int = 0, top_p: float | None = None,
                        sample_count: int = 1, generator: Generators = None, spread: float | None = None) -> Forecast:
        """Forecast B series of equal history length from arrays: ``values`` [L, 6] (open, high, low, close,
        volume, amount), ``x_stamps`` [L, 5] / ``y_stamps`` [pred_len, 5] time features (:func:`calendar_features`).
        ``temperature``/``top_p``/``spread`` None: the forecaster's ``sampler`` settings.
        """
        quantiles = check_quantiles(quantiles)
        temperature = self.sampler.temperature if temperature is None else temperature
        top_p = self.sampler.top_p if top_p is None else top_p
        spread = self.sampler.spread if spread is None else spread
        if len({len(v) for v in values}) != 1:
            raise UserError(f"all series need the same history length, got {sorted({len(v) for v in values})}")
        xs, means, stds = [], [], []
        for series in values:
            series = np.asarray(series, dtype=np.float32)
            mean, std = series.mean(axis=0), series.std(axis=0)
            xs.append(normalise(series, mean, std, self.clip))
            means.append(mean)
            stds.append(std)

        def tensor(arrays: Sequence[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(self.device)

        # The spread widens whole bars in the data's units: each series' normalisation goes with it.
        paths = sample_paths(self.tokenizer, self.predictor, tensor(xs), tensor(x_stamps), tensor(y_stamps),
                             self.max_context, pred_len, self.clip, temperature, top_k, top_p, sample_count,
                             generator, self.use_cache, spread, units=(tensor(means), tensor(stds)))
        paths = paths[:, :, -pred_len:, :]
        # Mean and quantiles in normalised units, then de-normalised: both commute with the positive affine map.
        mean_norm = paths.mean(dim=1).cpu().numpy()
        std, shift = np.stack(stds)[:, None, :], np.stack(means)[:, None, :]
        mean = denormalise(mean_norm, shift, std).astype(np.float32)
        if quantiles:
            bands_norm = np.quantile(paths.cpu().numpy(), quantiles, axis=1)  # [Q, B, H, 6]
            bands = denormalise(np.moveaxis(bands_norm, 0, 2), shift[:, :, None, :], std[:, :, None, :])
            bands = bands.astype(np.float32)
        else:
            bands = np.zeros(mean.shape[:2] + (0, mean.shape[2]), dtype=np.float32)
        return Forecast(mean=mean, bands=bands, quantiles=tuple(quantiles))

    def _inputs(self, dfs: Sequence[pd.DataFrame], x_timestamps: Sequence, y_timestamps: Sequence,
                pred_len: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        if not (len(dfs) == len(x_timestamps) == len(y_timestamps)):
            raise UserError("dfs, x_timestamps and y_timestamps must have the same length")
        values, x_stamps, y_stamps = [], [], []
        for i, df in enumerate(dfs):
            features = self._features(df, f"series {i}")
            x_stamp, y_stamp = calendar_features(x_timestamps[i]), calendar_features(y_timestamps[i])
            if len(x_stamp) != len(features):
                raise UserError(f"series {i}: {len(features)} rows but {len(x_stamp)} history timestamps")
            if len(y_stamp) != pred_len:
                raise UserError(f"series {i}: {len(y_stamp)} future timestamps, expected pred_len={pred_len}")
            values.append(features)
            x_stamps.append(x_stamp)
            y_stamps.append(y_stamp)
        return values, x_stamps, y_stamps

    def forecast_batch(self, dfs: Sequence[pd.DataFrame], x_timestamps: Sequence, y_timestamps: Sequence,
                       pred_len: int, quantiles: Sequence[float] = (0.1, 0.5, 0.9), temperature: float | None = None,
                       top_k: int = 0, top_p: float | None = None, sample_count: int = 20,
                       generator: Generators = None, spread: float | None = None) -> list[pd.DataFrame]:
        """Mean and quantile bands per series: columns ``open, open_q0.1, ..., amount_q0.9`` (each field's mean,
        then its quantiles), indexed by the future timestamps."""
        values, x_stamps, y_stamps = self._inputs(dfs, x_timestamps, y_timestamps, pred_len)
        result = self.forecast_values(values, x_stamps, y_stamps, pred_len, quantiles, temperature, top_k, top_p,
                                      sample_count, generator, spread)
        return [forecast_frame(result, i, pd.DatetimeIndex(pd.to_datetime(y_timestamps[i])))
                for i in range(len(dfs))]

    def predict_batch(self, dfs: Sequence[pd.DataFrame], x_timestamps: Sequence, y_timestamps: Sequence,
                      pred_len: int, temperature: float | None = None, top_k: int = 0, top_p: float | None = None,
                      sample_count: int = 1, generator: Generators = None) -> list[pd.DataFrame]:
        """Forecast several series of equal history length at once; returns one DataFrame per series (the mean of
        the sampled paths, columns open, high, low, close, volume, amount), as upstream's ``predict_batch``."""
        values, x_stamps, y_stamps = self._inputs(dfs, x_timestamps, y_timestamps, pred_len)
        result = self.forecast_values(values, x_stamps, y_stamps, pred_len, (), temperature, top_k, top_p,
                                      sample_count, generator)
        return [pd.DataFrame(result.mean[i], columns=list(FEATURE_COLUMNS),
                             index=pd.DatetimeIndex(pd.to_datetime(y_timestamps[i])))
                for i in range(len(dfs))]

    def predict(self, df: pd.DataFrame, x_timestamp, y_timestamp, pred_len: int, **kwargs) -> pd.DataFrame:
        """Forecast one series (see :meth:`predict_batch` for the options)."""
        return self.predict_batch([df], [x_timestamp], [y_timestamp], pred_len, **kwargs)[0]


def forecast_frame(result: Forecast, index: int, timestamps: pd.DatetimeIndex) -> pd.DataFrame:
    """One series of a :class:`Forecast` as a DataFrame: each field's mean, then its quantile bands."""
    columns: dict[str, np.ndarray] = {}
    for f, field in enumerate(FEATURE_COLUMNS):
        columns[field] = result.mean[index, :, f]
        for q, quantile in enumerate(result.quantiles):
            columns[quantile_column(field, quantile)] = result.bands[index, :, q, f]
    return pd.DataFrame(columns, index=timestamps)
