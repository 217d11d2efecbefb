"""The forecast job (``launch/forecast.py``): series in, a CSV and a PNG per series out.

Every rank reads and checks the inputs (so bad input fails with one line before any process group exists);
rank r forecasts series r, r + world_size, ... and writes their files itself; rank 0 writes summary.json once
all ranks are done. Series i samples from its own generator seeded from (seed, i), so its forecast is the same
whatever the batch it shares and the number of ranks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ds_kronos.console import say
from ds_kronos.data.series import time_features
from ds_kronos.forecast.config import ForecastConfig
from ds_kronos.forecast.frames import Forecast, KronosForecaster
from ds_kronos.forecast.outputs import SUMMARY_NAME, close_band, plot_series, write_csv
from ds_kronos.forecast.sampler_file import SamplerSettings, resolve_sampler
from ds_kronos.forecast.sources import Inputs, load_inputs
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.model import Kronos, KronosTokenizer, check_pair
from ds_kronos.runtime import barrier, distributed_failures, init_runtime, stream_seed


def series_seed(seed: int, index: int) -> int:
    """A generator seed per (seed, series index): independent streams, whatever the batching."""
    return stream_seed(seed, index)


def select_quantiles(result: Forecast, wanted: list[float]) -> Forecast:
    keep = [result.quantiles.index(q) for q in wanted]
    return Forecast(result.mean, result.bands[:, :, keep], tuple(wanted))


def output_names(symbols: list[str]) -> list[str]:
    """File stems per series: the symbol, with path separators replaced (a Qlib symbol never has one)."""
    return [symbol.replace("/", "_").replace("\\", "_") for symbol in symbols]


def run_forecast(config: ForecastConfig, log: Callable[[str], None] = say) -> dict[str, Any] | None:
    """Run the job; returns the summary on rank 0 and None on the other ranks."""
    with distributed_failures(config.dist_timeout):
        return _forecast(config, log)


def _forecast(config: ForecastConfig, log: Callable[[str], None]) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    inputs = load_inputs(config)
    sampler = resolve_sampler(config.predictor, config.temperature, config.top_p, config.sampler_file, config.spread)
    config = dataclasses.replace(config, temperature=sampler.temperature, top_p=sampler.top_p, spread=sampler.spread)
    torch.manual_seed(config.seed)  # before building preset (random) models: every rank holds the same weights
    tokenizer = KronosTokenizer.from_folder_or_preset(config.tokenizer)
    predictor = Kronos.from_folder_or_preset(config.predictor)
    check_pair(tokenizer, predictor)

    runtime = init_runtime(config.threads, config.dist_timeout)
    main = runtime.is_main
    forecaster = KronosForecaster(predictor.float(), tokenizer.float(), runtime.device, config.max_context,
                                  config.clip, config.use_cache)
    wanted = sorted(set(config.quantiles or [])) if config.sample_count > 1 else []
    computed = sorted(set(wanted) | {0.5}) if wanted else []  # the PNG draws the median
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names([s.symbol for s in inputs.series])
    mine = list(range(runtime.rank, len(inputs.series), runtime.world_size))
    if main:
        log(f"forecasting {len(inputs.series)} series from {inputs.source} (lookback {config.lookback}, pred_len "
            f"{config.pred_len}, {config.sample_count} sampled path(s), temperature {sampler.temperature:g}, top_p "
            f"{sampler.top_p:g}, spread {sampler.spread:g} from {sampler.sources['top_p']}) on {runtime.world_size} "
            f"rank(s)")
        for symbol, reason in inputs.skipped:
            log(f"skipped {symbol}: {reason}")
        if config.sample_count == 1:
            log("one sampled path: the CSVs hold the forecast only, no quantile bands (use --sample_count > 1)")

    t1 = time.perf_counter()
    for start in range(0, len(mine), config.batch_size):
        batch = mine[start:start + config.batch_size]
        series = [inputs.series[i] for i in batch]
        generators = [torch.Generator(device=runtime.device).manual_seed(series_seed(config.seed, i)) for i in batch]
        result = forecaster.forecast_values(
            [s.values for s in series], [time_features(s.timestamps).astype(np.float32) for s in series],
            [time_features(inputs.future[i]).astype(np.float32) for i in batch], config.pred_len, computed,
            config.temperature, config.top_k, config.top_p, config.sample_count, generators, config.spread)
        written = select_quantiles(result, wanted)
        for j, i in enumerate(batch):
            write_csv(out / f"{names[i]}.csv", written, j, inputs.future[i])
            shown = slice(max(0, len(series[j]) - config.plot_bars), None)
            plot_series(out / f"{names[i]}.png", series[j].symbol, series[j].timestamps[shown],
                        series[j].values[shown], inputs.future[i], close_band(result, j),
                        f"{config.pred_len}-bar forecast, {config.sample_count} sampled path(s)")
        if main:
            rate = (start + len(batch)) / max(time.perf_counter() - t1, 1e-9)
            log(f"rank 0: forecast {start + len(batch)}/{len(mine)} of its series ({rate:.2f} series/s)")
    seconds = time.perf_counter() - t1
    barrier()  # every rank's files are in place before the summary lists them
    summary = write_summary(config, inputs, names, runtime.world_size, seconds, time.perf_counter() - t0, log,
                            sampler) if main else None
    runtime.close()
    return summary


def write_summary(config: ForecastConfig, inputs: Inputs, names: list[str], world_size: int, seconds: float,
                  total: float, log: Callable[[str], None], sampler: SamplerSettings) -> dict[str, Any]:
    out = Path(config.out)

    def stamp(ns: int) -> str:
        return pd.Timestamp(int(ns)).isoformat()

    summary = {
        "config": dataclasses.asdict(config),
        "source": inputs.source,
        "series": [{"symbol": s.symbol, "history": [stamp(s.timestamps[0]), stamp(s.timestamps[-1])],
                    "forecast": [stamp(future[0]), stamp(future[-1])], "csv": f"{name}.csv", "png": f"{name}.png"}
                   for s, future, name in zip(inputs.series, inputs.future, names)],
        "skipped": [{"symbol": symbol, "reason": reason} for symbol, reason in inputs.skipped],
        "ranks": world_size,
        "sampler": sampler.describe(),
        "timing": {"forecast_seconds_rank0": seconds, "total_seconds": total},
    }
    write_json_atomic(out / SUMMARY_NAME, summary)
    log(f"wrote {len(names)} CSV and PNG file(s) and {SUMMARY_NAME} to {out}")
    return summary
