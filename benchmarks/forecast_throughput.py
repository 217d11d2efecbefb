"""Forecast throughput: incremental decoding (KV cache) against full recomputation, in one run on one machine.

    DS_ACCELERATOR=cpu python benchmarks/forecast_throughput.py --preset small --series 64 --context 400 --horizon 30
    DS_ACCELERATOR=cpu python benchmarks/forecast_throughput.py --preset base --series 4 --context 400 --horizon 120

The same model (random weights of the preset, seeded) forecasts the same series (synthetic OHLCV random walks,
normalised as the forecaster does) with the same sampler seed twice per repeat: with the cache (the default
path) and with every step recomputing the whole window (upstream's ``auto_regressive_inference``). Both timings
cover the whole forecast: tokenizer encode, the autoregressive loop and decode. The order of the two paths
alternates between repeats so that neither always runs on a warmer machine. Prints one line per repeat; the last
line is JSON: ``ratio`` (median over repeats of recompute seconds / cached seconds, with ``ratio_min`` and
``ratio_max``), ``cached_series_per_s`` and ``recompute_series_per_s`` (medians) and ``max_abs_diff`` (largest
difference between the two paths' decoded paths, normalised units, over all repeats). ``cpu_ratio`` is the same
ratio of the process's CPU time (all its threads): on a machine shared with other jobs the wall-clock time of
one path can grow with their load, its CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import pandas as pd
import torch

from ds_kronos.config import DEFAULT_TOP_P
from ds_kronos.data.normalise import DEFAULT_CLIP, normalise
from ds_kronos.forecast import calendar_features, sample_paths
from ds_kronos.model import Kronos, KronosTokenizer, preset


def synthetic_series(count: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` OHLCV+amount random walks [count, length, 6] and their daily business-day time features
    [count, length, 5]; any realistic bars would do, the cost of a forecast does not depend on them."""
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0, 0.015, (count, length)) * rng.uniform(0.5, 2.0, (count, 1))
    close = 20.0 * np.exp(np.cumsum(returns, axis=1))
    open_ = np.concatenate([close[:, :1], close[:, :-1]], axis=1)
    spread = np.abs(rng.normal(0.0, 0.005, (count, length, 2)))
    high = np.maximum(open_, close) * (1 + spread[..., 0])
    low = np.minimum(open_, close) * (1 - spread[..., 1])
    volume = rng.lognormal(10.0, 0.5, (count, length))
    amount = volume * (open_ + high + low + close) / 4
    values = np.stack([open_, high, low, close, volume, amount], axis=-1).astype(np.float32)
    stamps = calendar_features(pd.bdate_range("2020-01-01", periods=length))
    return values, np.broadcast_to(stamps, (count, length, 5)).copy()


def normalised(values: np.ndarray, history: int, clip: float) -> np.ndarray:
    past = values[:, :history]
    mean, std = past.mean(axis=1, keepdims=True), past.std(axis=1, keepdims=True)
    return normalise(past, mean, std, clip).astype(np.float32)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", help="predictor preset (random weights)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer preset (default: the one the preset pairs with)")
    parser.add_argument("--series", type=int, default=64)
    parser.add_argument("--context", type=int, default=400, help="history bars per series")
    parser.add_argument("--horizon", type=int, default=30, help="bars forecast")
    parser.add_argument("--sample_count", type=int, default=1, help="sampled paths per series")
    parser.add_argument("--max_context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=DEFAULT_TOP_P)
    args = parser.parse_args()
    return args


def _time_repeats(args: argparse.Namespace, forecast) -> tuple[list[float], list[float], list[float], list[bool],
                                                                list[float]]:
    """Time cached and recomputed forecasts ``args.repeats`` times, alternating which runs first; returns
    (cached seconds, recompute seconds, max |diff|, identical, CPU-time ratios) per repeat."""
    cached_s, recompute_s, diffs, identical, cpu_ratios = [], [], [], [], []
    for repeat in range(args.repeats):
        order = (True, False) if repeat % 2 == 0 else (False, True)
        seconds, cpu, paths = {}, {}, {}
        for use_cache in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            paths[use_cache] = forecast(use_cache)
            seconds[use_cache] = time.perf_counter() - start
            cpu[use_cache] = time.process_time() - start_cpu
        diff = float((paths[True] - paths[False]).abs().max())
        cached_s.append(seconds[True])
        recompute_s.append(seconds[False])
        diffs.append(diff)
        identical.append(bool(torch.equal(paths[True], paths[False])))
        cpu_ratios.append(cpu[False] / cpu[True])
        print(f"repeat {repeat + 1}: cached {seconds[True]:.2f} s ({args.series / seconds[True]:.3f} series/s), "
              f"recompute {seconds[False]:.2f} s ({args.series / seconds[False]:.3f} series/s), ratio "
              f"{seconds[False] / seconds[True]:.2f}x (CPU time {cpu_ratios[-1]:.2f}x), max |diff| {diff:.3g}",
              flush=True)
    return cached_s, recompute_s, diffs, identical, cpu_ratios


def _result(args: argparse.Namespace, cached_s: list[float], recompute_s: list[float], diffs: list[float],
            identical: list[bool], cpu_ratios: list[float]) -> dict:
    """The JSON summary line: medians and ranges of the repeats."""
    ratios = [r / c for r, c in zip(recompute_s, cached_s)]
    return {
        "preset": args.preset, "series": args.series, "context": args.context, "horizon": args.horizon,
        "sample_count": args.sample_count, "max_context": args.max_context, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "ratio": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "ratios": ratios, "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratios": cpu_ratios,
        "cached_series_per_s": statistics.median(args.series / s for s in cached_s),
        "recompute_series_per_s": statistics.median(args.series / s for s in recompute_s),
        "cached_seconds": cached_s, "recompute_seconds": recompute_s, "max_abs_diff": max(diffs),
        "identical": all(identical), "torch": torch.__version__, "machine": platform.machine(),
    }


def main() -> None:
    args = _parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    tokenizer = KronosTokenizer.from_preset(args.tokenizer or preset(args.preset).tokenizer).eval()
    predictor = Kronos.from_preset(args.preset).eval()
    values, stamps = synthetic_series(args.series, args.context + args.horizon, args.seed)
    x = torch.from_numpy(normalised(values, args.context, DEFAULT_CLIP))
    x_stamp = torch.from_numpy(stamps[:, :args.context])
    y_stamp = torch.from_numpy(stamps[:, args.context:])

    def forecast(use_cache: bool, rows: slice = slice(None), horizon: int | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(args.seed)
        steps = horizon or args.horizon
        return sample_paths(tokenizer, predictor, x[rows], x_stamp[rows], y_stamp[rows, :steps], args.max_context,
                            steps, DEFAULT_CLIP, args.temperature, args.top_k, args.top_p, args.sample_count, generator,
                            use_cache)

    for use_cache in (True, False):  # warm-up: first-call allocations and kernel selection
        forecast(use_cache, slice(0, 2), 2)
    params = sum(p.numel() for p in predictor.parameters())
    print(f"{args.preset} ({params:,} parameters), tokenizer {args.tokenizer or preset(args.preset).tokenizer}: "
          f"{args.series} series x {args.sample_count} path(s), context {args.context}, horizon {args.horizon}, "
          f"max_context {args.max_context}, {torch.get_num_threads()} threads", flush=True)

    print(json.dumps(_result(args, *_time_repeats(args, forecast))))


if __name__ == "__main__":
    main()
