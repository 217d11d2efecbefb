"""Options of the forecast job (``launch/forecast.py``), and the option group of every job that samples forecasts
(:class:`SamplingOptions`, shared with evaluation).

Sampling defaults follow upstream's ``KronosPredictor.predict`` (T 1.0, top_p 0.9), with 10 sampled paths so that
there are bands; ``--top_k 1`` makes the forecast greedy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ds_kronos.config import DEFAULT_MAX_CONTEXT, DEFAULT_TOP_P, ProcessOptions, option
from ds_kronos.data.normalise import DEFAULT_CLIP
from ds_kronos.forecast.sampler_file import MAX_SPREAD


def clip_option(help: str = "clip normalised features to [-clip, clip] (as in training)") -> float:
    """The ``--clip`` option of every job that normalises windows (one default: ds_kronos.data.normalise)."""
    return option(DEFAULT_CLIP, help=help, gt=0)


def quantiles_option(default: tuple[float, ...], help: str) -> list[float]:
    """A ``--quantiles`` option: levels strictly between 0 and 1 (declared, so checked in one place)."""
    return option(default_factory=lambda: list(default), help=help, gt=0, lt=1)


@dataclass(kw_only=True)
class SamplingOptions:
    """How the autoregressive sampler draws paths: the options of every job that forecasts with it (forecast,
    evaluation). Defaults follow upstream's ``KronosPredictor.predict``; a predictor folder's ``sampler.json``
    (ds_kronos.forecast.sampler_file) fills temperature, top-p and spread where the options leave them unset."""

    max_context: int = option(DEFAULT_MAX_CONTEXT, ge=1,
                              help="most tokens the predictor sees (older history is dropped)")
    temperature: float | None = option(None, help="sampling temperature (default: the predictor folder's "
                                                  "sampler.json, else 1.0)", gt=0)
    top_k: int = option(0, help="keep the k most likely tokens (0: off; 1: greedy); takes precedence over top_p", ge=0)
    top_p: float | None = option(None, help=f"nucleus sampling mass, 1.0: off (default: the predictor folder's "
                                            f"sampler.json, else {DEFAULT_TOP_P})", gt=0, le=1)
    spread: float | None = option(None, help="scale each forecast's sampled paths around their mean path by this "
                                             "factor, whole bars at a time (the close by the factor, open/high/low "
                                             "with it, volume never below 0; default: the predictor folder's "
                                             "sampler.json, else 1.0: as sampled)", gt=0, le=MAX_SPREAD)
    sampler_file: bool = option(True, help="use the sampling settings of the predictor folder's sampler.json "
                                           "(launch/calibrate.py) where an option does not set them; false: "
                                           "ignore the file")
    use_cache: bool = option(True, help="incremental decoding with a key/value cache; false recomputes the whole "
                                        "window at every step (upstream's way: the same forecasts, slower)")


@dataclass(kw_only=True)
class ForecastConfig(SamplingOptions, ProcessOptions):
    """Forecast the next bars of one or more series: a CSV (mean and quantile bands) and a PNG per series."""

    tokenizer: str | None = option(None, help="tokenizer: a model folder (fine-tuned, or a published one such "
                                              "as ./Kronos-Tokenizer-base), a hub id already in the local Hugging "
                                              "Face cache, or a preset name (random weights)")
    predictor: str | None = option(None, help="predictor: a model folder (e.g. runs/predictor/best_model), a "
                                              "cached hub id, or a preset name (random weights)")
    csv: list[str] | None = option(None, nargs="+", help="CSV files, one series each (symbol = file stem; columns "
                                                         "as launch/prepare_data.py reads them)")
    qlib_dir: str | None = option(None, help="a Qlib provider folder (daily bars, read through pyqlib)")
    instrument: str | None = option(None, help="with --qlib_dir: a market (csi300, all) or comma-separated symbols")
    end: str | None = option(None, help="with --qlib_dir: the last history day (default: the provider's last "
                                        "calendar day)")
    out: str = option("runs/forecast", help="output folder: SYMBOL.csv and SYMBOL.png per series, summary.json")

    lookback: int = option(400, help="history bars per series fed to the model (the last ones)", ge=1)
    pred_len: int = option(120, help="bars to forecast", ge=1)
    sample_count: int = option(10, help="sampled paths per series: their mean is the forecast, their quantiles "
                                        "the bands (1: the mean only)", ge=1)
    quantiles: list[float] = quantiles_option((0.1, 0.5, 0.9), help="quantiles of the sampled paths written per "
                                                                   "field, comma-separated (default: 0.1,0.5,0.9)")
    seed: int = option(0, help="sampler seed: series i draws from its own generator seeded from (seed, i), so a "
                               "forecast does not depend on --batch_size or the number of ranks; also seeds "
                               "preset (random) weights")
    future_timestamps: str | None = option(None, help="CSV of future bar times (a time column, or one column); each "
                                                      "series takes the first pred_len after its last bar (default: "
                                                      "continue each series' own bar spacing and trading days)")
    batch_size: int = option(16, help="series forecast together per rank", ge=1)
    clip: float = clip_option()
    plot_bars: int = option(120, help="history bars drawn as candlesticks in each PNG", ge=1)

    def problems(self) -> list[str]:
        problems = []
        for name in ("tokenizer", "predictor"):
            if not getattr(self, name):
                problems.append(f"--{name} is required: a model folder or a preset name")
        if bool(self.csv) == bool(self.qlib_dir):
            problems.append("give the series to forecast with either --csv FILE [FILE ...] or --qlib_dir DIR "
                            "--instrument NAMES")
        elif self.qlib_dir and not self.instrument:
            problems.append("--instrument is required with --qlib_dir (a market such as csi300, or SYM1,SYM2)")
        if self.csv and (self.instrument or self.end):
            problems.append("--instrument and --end go with --qlib_dir, not with --csv")
        if not self.out:
            problems.append("--out must name a folder")
        if self.pred_len > self.max_context:
            problems.append(f"--pred_len {self.pred_len} exceeds --max_context {self.max_context}")
        if self.future_timestamps and not os.path.isfile(self.future_timestamps):
            problems.append(f"--future_timestamps {self.future_timestamps}: no such file")
        return problems
