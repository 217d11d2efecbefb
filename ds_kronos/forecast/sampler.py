"""Forecasting with a tokenizer/predictor pair: normalise, tokenize, sample autoregressively, decode, de-normalise.

:func:`autoregressive_forecast` is the tensor-level loop (upstream's ``auto_regressive_inference``, same draws
from torch's generator, so a seeded run reproduces upstream's samples); :class:`KronosForecaster` is the
DataFrame-level API (upstream's ``KronosPredictor``), batched over many series.

Differences from upstream: the models are put in eval mode for the call (upstream leaves dropout on if the
caller forgot), and a tokenizer/predictor pair with different bit widths is refused.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ds_kronos.data.series import time_features
from ds_kronos.data.windows import NORM_EPS
from ds_kronos.errors import UserError
from ds_kronos.model import Kronos, KronosTokenizer

PRICE_COLUMNS = ("open", "high", "low", "close")
FEATURE_COLUMNS = PRICE_COLUMNS + ("volume", "amount")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k (when top_k > 0, which then takes precedence) or nucleus filtering, as upstream; returns a new tensor."""
    if top_k > 0:
        k = min(top_k, logits.size(-1))
        threshold = torch.topk(logits, k).values[..., -1:]
        return logits.masked_fill(logits < threshold, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        drop_sorted = cumulative > top_p
        # Keep the token that crosses the threshold (shift right) and always the most likely one.
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))
    return logits


def sample_ids(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``logits`` [N, V] -> [N, 1], drawn with ``torch.multinomial``."""
    probs = F.softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    states = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, state in zip(modules, states):
            m.train(state)


def check_pair(tokenizer: KronosTokenizer, predictor: Kronos) -> None:
    """Refuse a tokenizer/predictor pair whose vocabularies differ (they would load, then produce garbage)."""
    t, p = tokenizer.config, predictor.config
    if (t.s1_bits, t.s2_bits) != (p.s1_bits, p.s2_bits):
        raise UserError(f"tokenizer and predictor do not match: tokenizer has s1/s2 bits {t.s1_bits}/{t.s2_bits}, "
                        f"predictor {p.s1_bits}/{p.s2_bits}")


@torch.no_grad()
def autoregressive_forecast(tokenizer: KronosTokenizer, predictor: Kronos, x: torch.Tensor, x_stamp: torch.Tensor,
                            y_stamp: torch.Tensor, max_context: int, pred_len: int, clip: float = 5.0,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = 0.99, sample_count: int = 5,
                            generator: torch.Generator | None = None) -> np.ndarray:
    """Sample ``pred_len`` steps after normalised history ``x`` [B, L, 6].

    Returns the decoded last ``min(L + pred_len, max_context)`` steps averaged over ``sample_count`` samples,
    [B, that length, 6] in normalised units; the last ``pred_len`` rows are the forecast. The context fed to the
    predictor is the last ``max_context`` tokens (with their time stamps).
    """
    check_pair(tokenizer, predictor)
    with eval_mode(tokenizer, predictor):
        x = torch.clip(x, -clip, clip)
        batch = x.shape[0]

        def repeat(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(sample_count, dim=0)

        x, x_stamp, y_stamp = repeat(x), repeat(x_stamp), repeat(y_stamp)
        s1_tokens, s2_tokens = tokenizer.encode(x, half=True)
        full_stamp = torch.cat([x_stamp, y_stamp], dim=1)
        history = x.shape[1]
        for step in range(pred_len):
            length = history + step
            start = max(0, length - max_context)
            s1_logits, context = predictor.decode_s1(s1_tokens[:, start:], s2_tokens[:, start:],
                                                     full_stamp[:, start:length])
            next_s1 = sample_ids(s1_logits[:, -1, :], temperature, top_k, top_p, generator)
            s2_logits = predictor.decode_s2(context, next_s1)
            next_s2 = sample_ids(s2_logits[:, -1, :], temperature, top_k, top_p, generator)
            s1_tokens = torch.cat([s1_tokens, next_s1], dim=1)
            s2_tokens = torch.cat([s2_tokens, next_s2], dim=1)
        keep = min(history + pred_len, max_context)
        decoded = tokenizer.decode([s1_tokens[:, -keep:], s2_tokens[:, -keep:]], half=True)
        decoded = decoded.float().reshape(batch, sample_count, keep, -1)
        return decoded.mean(dim=1).cpu().numpy()


def calendar_features(timestamps: pd.Series | pd.DatetimeIndex | Sequence) -> np.ndarray:
    """[N, 5] float32 minute, hour, weekday (Monday=0), day of month, month: the models' time features (the same
    as the prepared data's, for any timestamp-like sequence)."""
    index = pd.DatetimeIndex(pd.to_datetime(timestamps))
    return time_features(index.to_numpy(dtype="datetime64[ns]")).astype(np.float32)


class KronosForecaster:
    """OHLCV DataFrames in, forecast DataFrames out (upstream's ``KronosPredictor``).

    Each series is normalised by the mean and std of the history it is given, clipped, forecast and
    de-normalised. Missing ``volume``/``amount`` are filled as upstream (zeros; amount = volume x mean price).
    """

    def __init__(self, predictor: Kronos, tokenizer: KronosTokenizer, device: str | torch.device = "cpu",
                 max_context: int = 512, clip: float = 5.0):
        check_pair(tokenizer, predictor)
        self.device = torch.device(device)
        self.predictor = predictor.to(self.device)
        self.tokenizer = tokenizer.to(self.device)
        self.max_context = max_context
        self.clip = clip

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

    def predict_batch(self, dfs: Sequence[pd.DataFrame], x_timestamps: Sequence, y_timestamps: Sequence,
                      pred_len: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.9,
                      sample_count: int = 1, generator: torch.Generator | None = None) -> list[pd.DataFrame]:
        """Forecast several series of equal history length at once; returns one DataFrame per series."""
        if not (len(dfs) == len(x_timestamps) == len(y_timestamps)):
            raise UserError("dfs, x_timestamps and y_timestamps must have the same length")
        xs, means, stds, x_stamps, y_stamps = [], [], [], [], []
        for i, df in enumerate(dfs):
            values = self._features(df, f"series {i}")
            x_stamp, y_stamp = calendar_features(x_timestamps[i]), calendar_features(y_timestamps[i])
            if len(x_stamp) != len(values):
                raise UserError(f"series {i}: {len(values)} rows but {len(x_stamp)} history timestamps")
            if len(y_stamp) != pred_len:
                raise UserError(f"series {i}: {len(y_stamp)} future timestamps, expected pred_len={pred_len}")
            mean, std = values.mean(axis=0), values.std(axis=0)
            xs.append(np.clip((values - mean) / (std + NORM_EPS), -self.clip, self.clip))
            means.append(mean)
            stds.append(std)
            x_stamps.append(x_stamp)
            y_stamps.append(y_stamp)
        if len({len(x) for x in xs}) != 1:
            raise UserError(f"all series need the same history length, got {sorted({len(x) for x in xs})}")

        def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(self.device)

        preds = autoregressive_forecast(self.tokenizer, self.predictor, tensor(xs), tensor(x_stamps),
                                        tensor(y_stamps), self.max_context, pred_len, self.clip, temperature,
                                        top_k, top_p, sample_count, generator)[:, -pred_len:, :]
        return [pd.DataFrame(preds[i] * (stds[i] + NORM_EPS) + means[i], columns=list(FEATURE_COLUMNS),
                             index=pd.DatetimeIndex(pd.to_datetime(y_timestamps[i])))
                for i in range(len(dfs))]

    def predict(self, df: pd.DataFrame, x_timestamp, y_timestamp, pred_len: int, **kwargs) -> pd.DataFrame:
        """Forecast one series (see :meth:`predict_batch` for the options)."""
        return self.predict_batch([df], [x_timestamp], [y_timestamp], pred_len, **kwargs)[0]
