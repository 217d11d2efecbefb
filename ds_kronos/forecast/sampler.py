"""The tensor-level autoregressive sampler: normalised bars -> tokens -> sampled continuations -> decoded bars.

:func:`generate_tokens` is the loop (upstream's ``auto_regressive_inference``); :func:`sample_paths` wraps it with
the tokenizer and returns every sampled path; :func:`autoregressive_forecast` averages them, as upstream.

Two ways to run the loop, with the same arithmetic and the same random draws in the same order:

* ``use_cache=True`` (the default): incremental decoding. The first step runs the history through the predictor
  once and keeps each layer's keys/values (:class:`ds_kronos.model.predictor.DecodeCache`); every later step
  feeds only the newest position. The cost of a forecast grows with context + horizon.
* ``use_cache=False``: every step recomputes the whole window (upstream's way; context x horizon). Kept as the
  reference the cache is tested and benchmarked against.

When ``history + step`` exceeds ``max_context`` the window slides: its first position, and so every rotary
position and every hidden state, changes, so no cached value stays valid. The cached loop then rebuilds its
cache from the new window at that step, which is exactly the recomputation (the heads run on the last position
only).

Differences from upstream: the models are put in eval mode for the call (upstream leaves dropout on if the
caller forgot), and a tokenizer/predictor pair with different bit widths is refused. :func:`sample_paths` can
also widen (or narrow) the forecast paths around their mean by a spread factor (:func:`widen_paths`), the
post-processing step that ``launch/calibrate.py`` fits on validation and records in ``sampler.json``; given each
series' normalisation, whole bars are widened in the data's units (:func:`widen_bars`: still bars, volume >= 0).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ds_kronos.data.normalise import DEFAULT_CLIP, NORM_EPS
from ds_kronos.data.series import CLOSE, VALUE_COLUMNS
from ds_kronos.model import Kronos, KronosTokenizer, check_pair

INFERENCE_TOP_P = 0.99
"""Default nucleus mass of the functions here, as of upstream's ``auto_regressive_inference``; the jobs and
:class:`ds_kronos.forecast.KronosForecaster` pass :data:`ds_kronos.config.DEFAULT_TOP_P` (0.9, upstream's
``KronosPredictor.predict``) explicitly."""

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch (upstream's behaviour), one per series, or None for torch's global one."""


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


def draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: Generators) -> torch.Tensor:
    """:func:`sample_ids` with one generator, or with one generator per equal block of rows (one per series)."""
    if generator is None or isinstance(generator, torch.Generator):
        return sample_ids(logits, temperature, top_k, top_p, generator)
    rows = logits.shape[0] // len(generator)
    return torch.cat([sample_ids(logits[i * rows:(i + 1) * rows], temperature, top_k, top_p, g)
                      for i, g in enumerate(generator)])


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


@torch.no_grad()
def generate_tokens(predictor: Kronos, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor,
                    max_context: int, pred_len: int, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = INFERENCE_TOP_P, generator: Generators = None,
                    use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend token histories ``s1_ids``/``s2_ids`` [N, L] by ``pred_len`` sampled (s1, s2) pairs.

    ``stamp`` [N, L + pred_len, 5] holds the time features of every position. The predictor must be in eval
    mode. Each step draws s1 from the last position's s1 logits, then s2 conditioned on that s1 (so the draws
    are consumed in upstream's order, whichever ``use_cache``). Returns (s1, s2) [N, L + pred_len].
    """
    rows, history = s1_ids.shape
    total = history + pred_len
    s1_all = s1_ids.new_empty(rows, total)
    s2_all = s2_ids.new_empty(rows, total)
    s1_all[:, :history], s2_all[:, :history] = s1_ids, s2_ids
    cache = predictor.new_cache(rows, min(total, max_context)) if use_cache else None
    for step in range(pred_len):
        length = history + step
        start = max(0, length - max_context)
        if cache is None:
            s1_logits, context = predictor.decode_s1(s1_all[:, start:length], s2_all[:, start:length],
                                                     stamp[:, start:length])
            next_s1 = draw(s1_logits[:, -1, :], temperature, top_k, top_p, generator)
            s2_logits = predictor.decode_s2(context, next_s1)[:, -1, :]
        else:
            if step == 0 or start > 0:
                # The first step fills the cache with the window; after a slide every cached value is stale.
                cache.reset()
                first = start
            else:
                first = length - 1  # only the position sampled at the previous step is new
            s1_logits, last = predictor.decode_s1_cached(s1_all[:, first:length], s2_all[:, first:length],
                                                         stamp[:, first:length], cache)
            next_s1 = draw(s1_logits, temperature, top_k, top_p, generator)
            s2_logits = predictor.decode_s2_cached(last, next_s1, cache)
        next_s2 = draw(s2_logits, temperature, top_k, top_p, generator)
        s1_all[:, length] = next_s1[:, 0]
        s2_all[:, length] = next_s2[:, 0]
    return s1_all, s2_all


def widen_paths(paths: torch.Tensor, spread: float) -> torch.Tensor:
    """Sampled paths [B, S, T, F] scaled around their mean over the S paths by ``spread``, for each series, step and
    feature: x_j -> m + spread (x_j - m), m the mean path. The mean (the point forecast) stays; every path's
    deviation from it, and so the spread of the paths and their quantile bands' width, is multiplied by
    ``spread`` (a forecast's dependence across steps and features is kept). Returns a new tensor."""
    if not (math.isfinite(spread) and spread > 0):
        raise ValueError(f"spread must be a positive number, got {spread!r}")
    mean = paths.mean(dim=1, keepdim=True)
    return mean + spread * (paths - mean)


CARRIED_PRICES = tuple(VALUE_COLUMNS.index(name) for name in ("open", "high", "low"))
"""Moved with their bar's close by :func:`widen_bars`."""
QUANTITIES = tuple(VALUE_COLUMNS.index(name) for name in ("vol", "amt"))
"""Widened on their own by :func:`widen_bars`, never below zero."""


def widen_bars(paths: torch.Tensor, spread: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Sampled bars [B, S, T, 6] in normalised units (``mean``/``std`` [B, 6]: each series' normalisation) widened by
    ``spread`` as whole bars in the data's units, so that every widened path is still a bar:

    * the close as :func:`widen_paths` widens it (the calibrated factor applies to it exactly);
    * open, high and low move with their bar's close (the same shift in the data's units), so each path keeps the
      decoded bar's shape: high - max(open, close) and min(open, close) - low are unchanged on every path;
    * volume and amount around their mean path, with the factor lowered (never below 1) at a step where the full
      factor would take a path below zero.

    Every mean over the paths stays. Returns a new tensor."""
    out = widen_paths(paths, spread)
    scale = (std + float(NORM_EPS))[:, None, None, :].to(paths)
    close_shift = (out[..., CLOSE] - paths[..., CLOSE]) * scale[..., CLOSE]
    for f in CARRIED_PRICES:
        out[..., f] = paths[..., f] + close_shift / scale[..., f]
    zero = (-mean[:, None, None, :].to(paths) / scale)  # the data's zero in normalised units
    centre = paths.mean(dim=1, keepdim=True)
    for f in QUANTITIES:
        lowest_gap = centre[..., f] - paths[..., f].amin(dim=1, keepdim=True)
        room = (centre[..., f] - zero[..., f]) / lowest_gap.clamp_min(torch.finfo(paths.dtype).tiny)
        factor = torch.where(lowest_gap > 0, room.clamp_min(1.0).clamp_max(spread), spread) if spread > 1 else spread
        out[..., f] = centre[..., f] + factor * (paths[..., f] - centre[..., f])
    return out


@torch.no_grad()
def sample_paths(tokenizer: KronosTokenizer, predictor: Kronos, x: torch.Tensor, x_stamp: torch.Tensor,
                 y_stamp: torch.Tensor, max_context: int, pred_len: int, clip: float = DEFAULT_CLIP,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = INFERENCE_TOP_P, sample_count: int = 5,
                 generator: Generators = None, use_cache: bool = True, spread: float = 1.0,
                 units: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Every sampled path after normalised history ``x`` [B, L, 6]: float32 [B, sample_count, keep, 6] with
    keep = ``min(L + pred_len, max_context)`` decoded steps in normalised units (the last ``pred_len`` are the
    forecast). ``generator`` may be a sequence of B generators, one per series: a series' paths then do not
    depend on which other series share its batch. ``spread`` != 1 scales the forecast steps around their mean
    path (the decoded history steps are left as they are): with ``units`` (the mean and std [B, 6] each series
    was normalised with) as whole bars in the data's units (:func:`widen_bars`), else each feature on its own
    (:func:`widen_paths`; the close is the same either way)."""
    check_pair(tokenizer, predictor)
    batch = x.shape[0]
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != batch:
        raise ValueError(f"{len(generator)} generators for {batch} series")
    with eval_mode(tokenizer, predictor):
        x = torch.clip(x, -clip, clip)

        def repeat(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(sample_count, dim=0)

        x, x_stamp, y_stamp = repeat(x), repeat(x_stamp), repeat(y_stamp)
        s1_tokens, s2_tokens = tokenizer.encode(x, half=True)
        s1_tokens, s2_tokens = generate_tokens(predictor, s1_tokens, s2_tokens, torch.cat([x_stamp, y_stamp], dim=1),
                                               max_context, pred_len, temperature, top_k, top_p, generator,
                                               use_cache)
        keep = min(x.shape[1] + pred_len, max_context)
        decoded = tokenizer.decode([s1_tokens[:, -keep:], s2_tokens[:, -keep:]], half=True)
        paths = decoded.float().reshape(batch, sample_count, keep, -1)
        if spread != 1.0:
            forecast = paths[:, :, -pred_len:]
            paths[:, :, -pred_len:] = (widen_paths(forecast, spread) if units is None
                                       else widen_bars(forecast, spread, *units))
        return paths


@torch.no_grad()
def autoregressive_forecast(tokenizer: KronosTokenizer, predictor: Kronos, x: torch.Tensor, x_stamp: torch.Tensor,
                            y_stamp: torch.Tensor, max_context: int, pred_len: int, clip: float = DEFAULT_CLIP,
                            temperature: float = 1.0, top_k: int = 0, top_p: float = INFERENCE_TOP_P,
                            sample_count: int = 5, generator: Generators = None, use_cache: bool = True) -> np.ndarray:
    """Sample ``pred_len`` steps after normalised history ``x`` [B, L, 6].

    Returns the decoded last ``min(L + pred_len, max_context)`` steps averaged over ``sample_count`` samples,
    [B, that length, 6] in normalised units; the last ``pred_len`` rows are the forecast. The context fed to the
    predictor is the last ``max_context`` tokens (with their time stamps).
    """
    paths = sample_paths(tokenizer, predictor, x, x_stamp, y_stamp, max_context, pred_len, clip, temperature, top_k,
                         top_p, sample_count, generator, use_cache)
    return paths.mean(dim=1).cpu().numpy()
