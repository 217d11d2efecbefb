"""Share of an evaluation's time spent scoring the sampled paths (rank 0, numpy) vs forecasting them.

Forecasts every origin of a prepared split with ``--sample_count`` paths (a tiny preset pair: the cost of
decoding does not depend on the weights), then times the whole rank-0 scoring of those paths (realised windows,
point metrics, IC, the probabilistic section with its random-walk and bootstrap baselines) ``--repeats`` times,
alternating with ``--repeats`` forecasts, in one process:

    python benchmarks/eval_scoring.py --data demo_runs/prepared --sample_count 20 --repeats 3
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ds_kronos.cli import run_main
from ds_kronos.config import option, parse_config


@dataclass(kw_only=True)
class BenchConfig:
    """Time forecasting vs scoring of an evaluation."""

    data: str | None = option(None, help="prepared dataset folder")
    split: str = option("test", help="split to forecast")
    sample_count: int = option(20, help="sampled paths per origin", ge=2)
    repeats: int = option(3, help="forecast + scoring rounds", ge=1)
    threads: int | None = option(None, help="torch threads (default: all cores)", ge=1)
    batch_size: int = option(64, help="origins per forecast batch", ge=1)

    def problems(self) -> list[str]:
        return [] if self.data else ["--data is required"]


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_config(BenchConfig, argv)
    from ds_kronos.evaluation import metrics
    from ds_kronos.evaluation.config import EvalConfig
    from ds_kronos.evaluation.job import forecast_origins
    from ds_kronos.evaluation.scoring import realised_windows, score_all, score_probabilistic
    from ds_kronos.evaluation.selection import calibration_quantiles, select_evaluation
    from ds_kronos.evaluation.significance import ic_significance
    from ds_kronos.model import Kronos, KronosTokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    evaluation = EvalConfig(data=config.data, tokenizer="tiny", predictor="tiny", split=config.split,
                            sample_count=config.sample_count, batch_size=config.batch_size, temperature=1.0,
                            top_p=0.9)
    selection = select_evaluation(evaluation)
    torch.manual_seed(0)
    tokenizer, predictor = KronosTokenizer.from_preset("tiny").float(), Kronos.from_preset("tiny").float()
    quantiles = calibration_quantiles(evaluation)
    forecast_s, scoring_s = [], []
    print(f"{len(selection.origins)} origins of {config.data} / {config.split}, {config.sample_count} paths, "
          f"{torch.get_num_threads()} thread(s)")
    for round_ in range(config.repeats):
        t0 = time.perf_counter()
        generator = torch.Generator().manual_seed(round_)
        paths = forecast_origins(evaluation, selection, selection.origins, tokenizer, predictor, torch.device("cpu"),
                                 generator, None)
        t1 = time.perf_counter()
        real = realised_windows(selection, evaluation.clip)
        dates = selection.origins.dates(selection.split.timestamps)
        _, close = score_all(paths.mean(axis=1), real, dates)
        _, ic, rank_ic = metrics.daily_ic(dates, metrics.window_returns(close, real.last_close)[:, -1],
                                          metrics.window_returns(real.future_close, real.last_close)[:, -1])
        ic_significance(ic, rank_ic, selection.pred_len, selection.stride)
        score_probabilistic(paths, real, quantiles, 0, evaluation.random_walk_window)
        t2 = time.perf_counter()
        forecast_s.append(t1 - t0)
        scoring_s.append(t2 - t1)
        print(f"round {round_ + 1}: forecast {t1 - t0:.2f} s, scoring {t2 - t1:.3f} s "
              f"({(t2 - t1) / (t1 - t0):.2%} of the forecast)")
    share = np.array(scoring_s) / np.array(forecast_s)
    print(f"scoring / forecasting: mean {share.mean():.2%} (min {share.min():.2%}, max {share.max():.2%}, "
          f"{config.repeats} rounds); scoring {np.mean(scoring_s):.3f} s, forecasting {np.mean(forecast_s):.1f} s")


if __name__ == "__main__":
    run_main(main)
