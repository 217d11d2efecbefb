"""Validation by forecast quality: sampled forecasts of fixed validation origins, scored at every evaluation.

What is scored is what the model is fine-tuned for: ``paths`` sampled continuations of ``origins`` validation
windows, decoded by the same sampler as ``launch/evaluate.py`` (the cached decoder, ds_kronos.forecast.sampler)
and scored with the evaluation module's implementations (ds_kronos.evaluation.probabilistic and metrics):

* ``crps``: the ensemble CRPS of the close, normalised units (each origin's lookback mean and std), mean over
  origins and horizons (lower is better);
* ``rank_ic``: mean daily cross-sectional RankIC of the predicted window return (the paths' mean close at the
  last horizon) against the realised one (higher is better);
* and, computed once at set-up, the CRPS of the random walk with historical volatility on the same origins with
  the same number of paths, so every evaluation line says whether the model beats it (``skill`` = 1 - CRPS /
  random walk's);
* and, computed once at the first evaluation (fitted on each origin's lookback, dealt to the ranks by symbol as
  the evaluation does), the CRPS of the econometric baselines of ``launch/evaluate.py`` (GARCH-t, GJR-GARCH-t,
  EWMA and, when the lookback is long enough, HAR: ds_kronos.evaluation.arch_baselines), so every evaluation
  line names the strongest of them too.

Fixed origins: the validation split's forecast origins (ds_kronos.evaluation.origins: one per ``predict`` bars
of the common calendar), whole dates spread evenly over the split with every symbol of each date (the RankIC
needs symbols to rank), up to ``origins``. The same at every evaluation and on every rank.

Exact and rank-independent: origin i's paths come from its own generator, seeded from (seed, its row), so they
depend on the weights only; that is also common random numbers, which removes most of the sampling noise from
the comparison of two evaluations. Origins are dealt in fixed chunks (chunk k to rank k mod world_size), so a
chunk's batch and numbers do not depend on the world size; each rank writes its origins' per-origin values into
zero vectors and one all-reduce sum (adding zeros is exact) gives every rank the same vectors, reduced in origin
order. Under ZeRO-3 every forward gathers parameters, a collective: ranks with fewer chunks decode padding chunks
(results discarded) so that every rank runs the same decoding steps.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from ds_kronos.data.normalise import denormalise, normalise
from ds_kronos.data.series import CLOSE
from ds_kronos.errors import DataError
from ds_kronos.evaluation import metrics, probabilistic
from ds_kronos.evaluation.arch_baselines import BASELINES, LABELS, forecast_baselines, plan_baselines
from ds_kronos.evaluation.baselines import RANDOM_WALK_WINDOW, random_walk_paths
from ds_kronos.evaluation.origins import Origins, build_origins, origin_windows
from ds_kronos.forecast.sampler import sample_paths
from ds_kronos.forecast.sampler_file import SamplerSettings
from ds_kronos.runtime import Runtime, all_reduce_sum, stream_seed

CHUNK_ORIGINS = 16
"""Origins decoded together (x paths rows per batch); also the unit dealt to the ranks."""
FORECAST_STREAM = 11
"""Key of the sampler's generators, stream_seed(seed, FORECAST_STREAM, row): apart from training's streams."""
BASELINE_STREAM = 12
"""Key of the random-walk baseline's numpy stream (set-up, identical on every rank)."""


@dataclass(frozen=True)
class ForecastScores:
    crps: float
    rank_ic: float | None
    """None when no date has enough symbols with a defined correlation."""
    skill: float
    """1 - crps / the random walk's CRPS on the same origins (> 0: better than the random walk)."""
    seconds: float
    daily: dict[str, dict[int, float]]
    """Per metric, the score of each origin date (date -> mean CRPS of its origins, or its RankIC): what the
    selection pairs with the start model's to test an improvement (ds_kronos.train.validation.selection)."""

    def value(self, metric: str) -> float | None:
        return {"crps": self.crps, "rank_ic": self.rank_ic}[metric]


def choose_origins(timestamps: np.ndarray, offsets: np.ndarray, lookback: int, pred_len: int, count: int) -> Origins:
    """Up to ``count`` origins of the split: whole dates, evenly spread over its calendar, every symbol's origin at
    each chosen date (in row order). Deterministic: the same data gives the same origins."""
    every = build_origins(timestamps, offsets, lookback, pred_len, stride=pred_len)
    if len(every) == 0:
        return every
    dates = np.asarray(timestamps, dtype=np.int64)[every.rows - 1]
    unique, per_date = np.unique(dates, return_counts=True)
    # As many whole dates as fit, evenly spaced (first and last included); one date with more origins than
    # ``count`` keeps its first ``count`` symbols.
    n_dates = int(np.clip(round(count / per_date.mean()), 1, unique.size))
    while True:
        chosen = unique[np.unique(np.linspace(0, unique.size - 1, n_dates).round().astype(np.int64))]
        keep = np.isin(dates, chosen)
        if keep.sum() <= count or n_dates == 1:
            break
        n_dates -= 1
    keep = np.flatnonzero(keep)[:count]
    return Origins(every.rows[keep], every.symbols[keep])


class ForecastValidation:
    """The fixed origins with their realised futures, and :meth:`score`, a collective."""

    def __init__(self, split, lookback: int, pred_len: int, *, origins: int, paths: int, clip: float, seed: int,
                 sampler: SamplerSettings, max_context: int, pad_forwards: bool, split_name: str = "val"):
        self.lookback, self.pred_len, self.paths, self.clip, self.seed = lookback, pred_len, paths, clip, seed
        self.sampler, self.max_context, self.pad_forwards = sampler, max_context, pad_forwards
        self.origins = choose_origins(split.timestamps, split.offsets, lookback, pred_len, origins)
        if len(self.origins) == 0:
            raise DataError(f"validation by forecast: split {split_name!r} has no forecast origin (each needs "
                            f"{lookback} bars of history and {pred_len} after)")
        self.windows = origin_windows(split, self.origins.rows, lookback, pred_len, clip)
        self.dates = self.origins.dates(split.timestamps)
        self.actual_close_norm = self.windows.norm[:, lookback:, CLOSE].astype(np.float64)
        self.last_close = self.windows.raw[:, lookback - 1, CLOSE]
        self.real_returns = metrics.window_returns(self.windows.raw[:, lookback:, CLOSE], self.last_close)[:, -1]
        history = self.windows.norm[:, :lookback, CLOSE:CLOSE + 1].astype(np.float64)
        walk = random_walk_paths(history, pred_len, paths, RANDOM_WALK_WINDOW, stream_seed(seed, BASELINE_STREAM))
        self.random_walk_crps = float(probabilistic.crps_values(walk[..., 0], self.actual_close_norm).mean())
        self.values, self.offsets = split.values, split.offsets
        self.baseline_plan = plan_baselines(BASELINES, None, split.offsets, self.origins, lookback, named=False)
        self.baseline_crps: dict[str, float] | None = None
        """Each baseline's mean CRPS on the origins (label -> CRPS), set by the first :meth:`score`."""
        self.baseline_fits: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        return len(self.origins)

    def summary(self) -> dict:
        """What summary.json records about the forecast validation (the scores are in the history)."""
        return {"origins": len(self), "dates": int(np.unique(self.dates).size), "paths": self.paths,
                "horizon": self.pred_len, "random_walk_crps": self.random_walk_crps,
                "random_walk_window": RANDOM_WALK_WINDOW, "baselines_crps": self.baseline_crps,
                "baseline_fits": self.baseline_fits, "baselines_skipped": self.baseline_plan.skipped,
                "seed": self.seed, "sampler": self.sampler.describe(),
                "sampler_file_in_exports": True,  # the trainer writes these settings into every export
                "units": "close, normalised by each origin's lookback mean and std"}

    def setup(self) -> dict:
        """What the scores depend on besides the weights (the selection keeps it: ds_kronos.train.validation.selection
        .scoring_setup): the origins and their data (a digest), the paths, seed, clip and sampler settings."""
        digest = hashlib.sha256()
        for values in (self.origins.rows, self.origins.symbols, self.dates, self.windows.raw):
            digest.update(np.ascontiguousarray(values).tobytes())
        return {"origins": len(self), "origins_digest": digest.hexdigest()[:16], "paths": int(self.paths),
                "horizon": int(self.pred_len), "lookback": int(self.lookback), "seed": int(self.seed),
                "clip": float(self.clip), "temperature": float(self.sampler.temperature),
                "top_p": float(self.sampler.top_p), "spread": float(self.sampler.spread)}

    def _chunks_of(self, rank: int, world_size: int) -> list[np.ndarray]:
        starts = range(rank * CHUNK_ORIGINS, len(self), world_size * CHUNK_ORIGINS)
        return [np.arange(s, min(s + CHUNK_ORIGINS, len(self))) for s in starts]

    def strongest_baseline(self) -> tuple[str, float] | None:
        """(label, CRPS) of the baseline with the lowest CRPS on the origins, once scored."""
        return min(self.baseline_crps.items(), key=lambda item: item[1]) if self.baseline_crps else None

    def _score_baselines(self, runtime: Runtime) -> None:
        """Collective, once: each rank fits the baselines at the origins of its symbols (as the evaluation deals
        them: a fit starts from its symbol's previous one, so a symbol stays on one rank); one all-reduce sum (zeros
        elsewhere, exact) gives every rank every origin's CRPS, so the result does not depend on the world size."""
        names = self.baseline_plan.names
        mine = np.flatnonzero(self.origins.symbols % runtime.world_size == runtime.rank)
        crps = torch.zeros(len(names), len(self), dtype=torch.float64)
        outcomes = torch.zeros(len(names), 3, dtype=torch.float64)  # converged, not converged, failed fits
        if mine.size and names:
            ours = Origins(self.origins.rows[mine], self.origins.symbols[mine])
            fitted = forecast_baselines(self.baseline_plan, self.values, self.offsets, ours, self.origins,
                                        self.pred_len, self.paths, self.seed)
            w = self.windows
            for b in range(len(names)):
                paths = normalise(fitted.paths[..., b], w.mean[mine, 0, CLOSE, None, None],
                                  w.std[mine, 0, CLOSE, None, None], self.clip).astype(np.float64)
                crps[b, mine] = torch.from_numpy(
                    probabilistic.crps_values(paths, self.actual_close_norm[mine]).mean(axis=1))
            for outcome in range(3):  # FIT_OK, NOT_CONVERGED, FAILED
                outcomes[:, outcome] = torch.from_numpy((fitted.flags == outcome).sum(axis=0).astype(np.float64))
        totals = all_reduce_sum(torch.cat([crps.flatten(), outcomes.flatten()]).to(runtime.device)).cpu().numpy()
        per_origin = totals[:crps.numel()].reshape(crps.shape)
        self.baseline_crps = {LABELS[name]: float(per_origin[b].mean()) for b, name in enumerate(names)}
        counts = totals[crps.numel():].reshape(outcomes.shape).round().astype(np.int64)
        self.baseline_fits = {name: dict(zip(("converged", "not_converged", "failed"), map(int, counts[b])))
                              for b, name in enumerate(names)}

    def score(self, engine, tokenizer, runtime: Runtime) -> ForecastScores:
        """Collective: every rank must call it. Sample and score every origin; identical result on every rank."""
        if self.baseline_crps is None:
            self._score_baselines(runtime)
        started = time.perf_counter()
        mine = self._chunks_of(runtime.rank, runtime.world_size)
        crps = torch.zeros(len(self), dtype=torch.float64)
        returns = torch.zeros(len(self), dtype=torch.float64)
        most = self._chunks_of(0, runtime.world_size)  # rank 0 holds the most chunks
        decode, padding = (len(most) if self.pad_forwards else len(mine)), most[0]
        for k in range(decode):
            chunk = mine[k] if k < len(mine) else padding
            close = self._sample_close(engine.module, tokenizer, chunk, runtime.device)  # [n, S, H] normalised
            if k >= len(mine):
                continue  # a padding chunk: it only kept the ZeRO-3 collectives in step
            crps[chunk] = torch.from_numpy(
                probabilistic.crps_values(close, self.actual_close_norm[chunk]).mean(axis=1))
            w = self.windows
            price = denormalise(close.mean(axis=1), w.mean[chunk, 0, CLOSE, None], w.std[chunk, 0, CLOSE, None])
            returns[chunk] = torch.from_numpy(metrics.window_returns(price, self.last_close[chunk])[:, -1])
        totals = all_reduce_sum(torch.stack([crps, returns]).to(runtime.device)).cpu().numpy()
        mean_crps = float(totals[0].mean())
        ic_dates, _, rank_ic = metrics.daily_ic(self.dates, totals[1], self.real_returns)
        dates, of_date = np.unique(self.dates, return_inverse=True)
        date_crps = np.bincount(of_date, weights=totals[0]) / np.bincount(of_date)
        daily = {"crps": dict(zip(dates.tolist(), date_crps.tolist())),
                 "rank_ic": dict(zip(ic_dates.tolist(), rank_ic.tolist()))}
        return ForecastScores(crps=mean_crps, rank_ic=float(rank_ic.mean()) if rank_ic.size else None,
                              skill=1.0 - mean_crps / self.random_walk_crps if self.random_walk_crps > 0 else 0.0,
                              seconds=time.perf_counter() - started, daily=daily)

    def _sample_close(self, model, tokenizer, chunk: np.ndarray, device: torch.device) -> np.ndarray:
        w, L = self.windows, self.lookback
        dtype = next(tokenizer.parameters()).dtype

        def tensor(values: np.ndarray, to_dtype: torch.dtype | None = None) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(values)).to(device, to_dtype)

        generators = []
        for row in self.origins.rows[chunk]:
            generator = torch.Generator(device=device)
            generator.manual_seed(stream_seed(self.seed, FORECAST_STREAM, int(row)))
            generators.append(generator)
        paths = sample_paths(tokenizer, model, tensor(w.norm[chunk, :L], dtype), tensor(w.stamp[chunk, :L]),
                             tensor(w.stamp[chunk, L:]), self.max_context, self.pred_len, self.clip,
                             self.sampler.temperature, 0, self.sampler.top_p, self.paths, generators,
                             spread=self.sampler.spread)
        return paths[:, :, -self.pred_len:, CLOSE].double().cpu().numpy()
