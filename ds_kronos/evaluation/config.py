"""Options of the evaluation job (``launch/evaluate.py``).

Sampling defaults follow upstream's ``KronosPredictor.predict`` (T 1.0, top_p 0.9, one sample); ``--top_k 1``
makes the forecast greedy (deterministic, and independent of how origins are split across ranks).
``--backtest`` adds pyqlib's TopkDropout backtest (``ds_kronos.evaluation.backtest``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_kronos.config import ProcessOptions, option, output_dir_problems
from ds_kronos.data.manifest import SPLITS
from ds_kronos.data.sources import parse_data_spec
from ds_kronos.data.verify import prepared_data_problems
from ds_kronos.errors import ConfigError
from ds_kronos.evaluation.arch_baselines import parse_baselines
from ds_kronos.evaluation.baselines import RANDOM_WALK_WINDOW
from ds_kronos.forecast.config import SamplingOptions, clip_option, quantiles_option


def mixture_problems(data: str | None) -> list[str]:
    """Evaluation scores one prepared dataset: a ``--data`` mixture (several sources, or a weight) is refused with
    one line; each source is evaluated on its own (its metrics are then per source by construction)."""
    try:
        sources = parse_data_spec(data or "")
    except ConfigError:
        return []  # not a mixture: the dataset check says what is wrong
    if len(sources) > 1 or sources[0].weight is not None:
        return [f"--data {data}: evaluation scores one prepared dataset, not a mixture; evaluate each source with "
                f"its own --data ({', '.join(s.path for s in sources)})"]
    return []


@dataclass(kw_only=True)
class EvalConfig(SamplingOptions, ProcessOptions):
    """Forecast a prepared split from rolling origins and score the forecasts against naive baselines."""

    data: str | None = option(None, help="prepared dataset folder (launch/prepare_data.py output)")
    tokenizer: str | None = option(None, help="tokenizer model folder, or a preset name (random weights)")
    predictor: str | None = option(None, help="predictor model folder, or a preset name (random weights)")
    reference_predictor: str | None = option(
        None, help="a second predictor (e.g. the starting point of fine-tuning) forecast on the same origins with "
                   "the same sampler seeds and reported as 'reference'")
    out: str = option("runs/evaluation", help="output folder: report.json, forecast_examples.png, ic_over_time.png")
    split: str = option("test", choices=SPLITS, help="split of the prepared dataset to forecast")

    pred_len: int | None = option(None, help="bars to forecast per origin (default: the prepared set's predict)", ge=1)
    stride: int | None = option(None, help="bars between consecutive forecast origins (default: pred_len, so "
                                           "forecast windows do not overlap)", ge=1)
    max_origins_per_symbol: int | None = option(None, help="keep only the latest N origins of each symbol "
                                                           "(default: all)", ge=1)
    sample_count: int = option(1, help="sampled paths averaged into one forecast (> 1 also reports the calibration "
                                       "of their quantile bands)", ge=1)
    quantiles: list[float] = quantiles_option((0.1, 0.5, 0.9), help="with --sample_count > 1: quantiles of the "
                                              "sampled paths whose calibration is reported, comma-separated "
                                              "(default: 0.1,0.5,0.9)")
    probabilistic: bool | None = option(
        None, help="score the distribution of the sampled paths (CRPS, WQL, MASE, coverage, PIT, Brier of P(up), "
                   "volatility) against random-walk and bootstrap baselines; default: on with --sample_count >= 2 "
                   "(true with one path is an error)")
    random_walk_window: int = option(RANDOM_WALK_WINDOW, ge=2, help="bars of history whose one-bar changes give "
                                                                    "the random-walk baseline's volatility")
    baselines: str = option("all", help="with the probabilistic scores: the arch volatility baselines fitted per "
                                        "origin (garch_t, gjr_garch_t, ewma, har), comma-separated, 'all' or "
                                        "'none' (skips their cost)")
    baseline_history: int | None = option(None, ge=2, help="bars of history each baseline fit uses, where the "
                                                           "split has them (default: the lookback)")
    oracle: str | None = option(None, help="with the probabilistic scores, on data prepared from a synthetic corpus: "
                                           "its folder (launch/make_market.py --out); adds the true process's "
                                           "paths as the row 'oracle' and the share of the random walk's gap to it "
                                           "that the model closes")
    walk_forward: int | None = option(None, ge=1, help="also score K consecutive, non-overlapping test windows "
                                                       "(by origin date) one by one: report.json's folds")
    seed: int = option(0, help="seed of the sampler (rank r uses seed + r) and of preset (random) weights")
    batch_size: int = option(64, help="origins forecast together per rank", ge=1)
    clip: float = clip_option()
    examples: int = option(4, help="symbols shown in forecast_examples.png", ge=0)

    backtest: bool = option(False, help="also run pyqlib's TopkDropout backtest of the model's predicted returns "
                                        "(needs a set prepared from a Qlib folder holding --benchmark)")
    benchmark: str = option("SH000300", help="--backtest: Qlib instrument of the benchmark series")
    topk: int = option(50, ge=1, help="--backtest: stocks held (capped at half the symbols with a signal)")
    n_drop: int = option(5, ge=1, help="--backtest: stocks swapped per day at most (capped at topk and at the "
                                       "symbols not held)")
    limit_threshold: float = option(0.095, ge=0, lt=1, help="--backtest: no buy (sell) when $change >= (<= -) "
                                                            "this; 0: off (also off where the provider has no "
                                                            "$change)")
    qlib_dir: str | None = option(None, help="--backtest: Qlib provider folder (default: the prepared set's "
                                             "source path)")

    @property
    def scores_distribution(self) -> bool:
        """Whether the report scores the sampled paths as a distribution."""
        return self.sample_count >= 2 if self.probabilistic is None else self.probabilistic

    def problems(self) -> list[str]:
        problems = mixture_problems(self.data) or prepared_data_problems(self.data)
        problems += output_dir_problems("--out", self.out)
        for name in ("tokenizer", "predictor"):
            if not getattr(self, name):
                problems.append(f"--{name} is required: a model folder or a preset name")
        if not self.out:
            problems.append("--out must name a folder")
        if self.pred_len is not None and self.pred_len > self.max_context:
            problems.append(f"--pred_len {self.pred_len} exceeds --max_context {self.max_context}")
        if self.probabilistic and self.sample_count < 2:
            problems.append(f"--probabilistic needs at least 2 sampled paths per origin, got --sample_count "
                            f"{self.sample_count}")
        problems += parse_baselines(self.baselines)[1]
        if self.walk_forward and not self.scores_distribution:
            problems.append("--walk_forward scores the windows' sampled paths: it needs --sample_count 2 or more")
        if self.oracle and not self.scores_distribution:
            problems.append("--oracle scores the true process's paths beside the model's: it needs --sample_count 2 "
                            "or more")
        if self.backtest and not self.benchmark:
            problems.append("--benchmark must name a Qlib instrument with --backtest")
        return problems
