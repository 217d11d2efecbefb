"""The evaluation job: rolling origins -> batched autoregressive forecasts on every rank -> metrics on rank 0.

Rank r forecasts the origins of symbols r, r + world_size, ...; rank 0 gathers the forecasts (padded tensors,
see :mod:`ds_kronos.evaluation.gather`; every sampled path), recomputes the realised windows from the
memory-mapped split, scores the model against the point and probabilistic baselines (with ``sample_count`` > 1,
the paths as a distribution: :mod:`ds_kronos.evaluation.scoring`) and writes the report (and, with
``--backtest``, runs pyqlib's TopkDropout backtest of the forecasts, see :mod:`ds_kronos.evaluation.backtest`).
All input checks run before the process group is set up, so bad input fails fast with one line on every rank;
so does the choice of the sampler's temperature/top-p/spread (an option, else the predictor folder's ``sampler.json``,
else upstream's defaults).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ds_kronos.console import say
from ds_kronos.data.series import VALUE_COLUMNS
from ds_kronos.evaluation import metrics
from ds_kronos.evaluation.arch_baselines import (
    BaselineForecasts,
    BaselinePlan,
    forecast_baselines,
    parse_baselines,
    plan_baselines,
)
from ds_kronos.evaluation.baseline_report import format_volatility, score_distributions
from ds_kronos.evaluation.comparisons import format_tests
from ds_kronos.evaluation.config import EvalConfig
from ds_kronos.evaluation.gather import gather_forecasts
from ds_kronos.evaluation.oracle_row import corpus_specs, forecast_oracle, format_oracle
from ds_kronos.evaluation.origins import Origins, origin_windows
from ds_kronos.evaluation.report import (
    EXAMPLES_PLOT,
    IC_PLOT,
    PROBABILISTIC_PLOT,
    REPORT_NAME,
    format_calibration,
    format_probabilistic,
    format_sampler,
    format_significance,
    format_table,
    plot_examples,
    plot_ic,
    plot_probabilistic,
)
from ds_kronos.evaluation.scoring import (
    Realised,
    calibrate,
    pick_examples,
    realised_windows,
    score_all,
)
from ds_kronos.evaluation.selection import EvaluationSet, calibration_quantiles, select_evaluation
from ds_kronos.evaluation.significance import ic_significance
from ds_kronos.evaluation.walk_forward import (
    WALK_FORWARD_PLOT,
    fold_dates,
    format_walk_forward,
    plot_walk_forward,
    walk_forward_section,
)
from ds_kronos.forecast import sample_paths
from ds_kronos.forecast.sampler_file import SamplerSettings, resolve_sampler
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.model import Kronos, KronosTokenizer
from ds_kronos.model.pairing import check_pair
from ds_kronos.runtime import distributed_failures, init_runtime

DEFINITIONS = {
    "units": "MAE/RMSE are in normalised units: each origin's values minus the mean, divided by (std + 1e-5), of "
             "its own lookback rows, clipped to [-clip, clip] (as training windows); all_features averages the "
             "per-feature MAE/RMSE over open, high, low, close, vol, amt",
    "return": "close at the horizon / close of the last history bar - 1, in price units",
    "direction": "binary: up (return > 0) vs down-or-flat (return <= 0); 'accuracy' is at the last horizon",
    "ic": "per origin date, Pearson (IC) / Spearman (RankIC) correlation across symbols of predicted vs realised "
          "return over the whole forecast window; dates with < 3 symbols or a constant side are skipped; "
          "ICIR = mean / sample std over dates",
    "last_value": "every feature of the last history bar repeated; predicts a zero return (down-or-flat), so its "
                  "IC is undefined (null)",
    "zero_return": "close unchanged (close-only forecaster, all_features null); direction down-or-flat, IC null; "
                   "its close metrics equal last_value's by construction",
    "history_mean": "every feature at its lookback mean (0 in normalised units); a mean-reversion forecast, so it "
                    "has an IC",
    "calibration": "with sample_count > 1: the forecast quantiles of each origin are those of its sampled paths "
                   "(linear interpolation between paths), per bar and feature, in price units; share_below = share "
                   "of realised values <= the forecast q-quantile (nominal q); bands pair the lowest quantile with "
                   "the highest, the second lowest with the second highest, ...; inside = share of realised values "
                   "within a band, bounds included (nominal upper - lower); over all origins, and per horizon",
    "probabilistic": "with sample_count > 1 (or --probabilistic): scores of the sampled paths as a distribution, "
                     "per feature (close first) over all origins and per horizon; crps: scoringrules' ensemble "
                     "CRPS (the energy form of the paths' empirical distribution), normalised and price units; "
                     "wql: mean over the quantiles of 2 sum QS_q / sum |y| (price units); mase: mean |mean path - "
                     "y| / the origin's mean |x_t - x_t-1| over its lookback; coverage: share inside each central "
                     "band; pit: randomised rank of y among the paths (10-bin density, KS distance from uniform); "
                     "p_up: share of paths above the last close, Brier score and reliability table; volatility: "
                     "mean over paths of |one-bar return| vs the realised one; rows random_walk (Gaussian changes "
                     "with the std of the last random_walk_window one-bar changes) and bootstrap (the history's "
                     "own one-bar changes) have as many paths as the model, last_value / history_mean are point "
                     "forecasts (one member: CRPS = absolute error); skill_vs_random_walk = 1 - CRPS / CRPS of "
                     "random_walk (close)",
    "significance": "Newey-West HAC t-statistic of the mean daily IC / RankIC (statsmodels, OLS on a constant, "
                    "Bartlett kernel), lags max(floor(4 (T/100)^(2/9)), ceil(pred_len/stride) - 1), two-sided "
                    "p-value from Student's t with T - 1 degrees of freedom",
    "origins": "one every `stride` bars of the split's calendar from bar lookback-1, where a symbol has lookback "
               "bars of history and pred_len bars after it; max_origins_per_symbol keeps the latest",
}


def forecast_origins(config: EvalConfig, selection: EvaluationSet, origins: Origins, tokenizer: KronosTokenizer,
                     predictor: Kronos, device: torch.device, generator: torch.Generator,
                     progress: Callable[[str], None] | None) -> np.ndarray:
    """Every sampled path of ``origins``, ``batch_size`` origins per call: float32 [n, sample_count, pred_len, 6]
    in normalised units."""
    lookback, pred_len = selection.lookback, selection.pred_len
    out = np.empty((len(origins), config.sample_count, pred_len, len(VALUE_COLUMNS)), dtype=np.float32)
    start_time = time.perf_counter()
    every = max(1, -(-len(origins) // config.batch_size) // 10)
    for start in range(0, len(origins), config.batch_size):
        rows = origins.rows[start:start + config.batch_size]
        win = origin_windows(selection.split, rows, lookback, pred_len, config.clip)
        x = torch.from_numpy(np.ascontiguousarray(win.norm[:, :lookback])).to(device)
        x_stamp = torch.from_numpy(np.ascontiguousarray(win.stamp[:, :lookback])).to(device)
        # The time features of the real future bars (their calendar is known at forecast time).
        y_stamp = torch.from_numpy(np.ascontiguousarray(win.stamp[:, lookback:])).to(device)
        paths = sample_paths(tokenizer, predictor, x, x_stamp, y_stamp, config.max_context, pred_len, config.clip,
                             config.temperature, config.top_k, config.top_p, config.sample_count, generator,
                             config.use_cache, 1.0 if config.spread is None else config.spread,
                             units=(torch.from_numpy(win.mean[:, 0]).to(device),
                                    torch.from_numpy(win.std[:, 0]).to(device)))[:, :, -pred_len:, :]
        out[start:start + len(rows)] = paths.cpu().numpy()
        done = start + len(rows)
        # About ten progress lines per run, whatever its size.
        if progress is not None and (done == len(origins) or (start // config.batch_size + 1) % every == 0):
            rate = done / max(time.perf_counter() - start_time, 1e-9)
            progress(f"rank 0: forecast {done}/{len(origins)} origins ({rate:.1f} origins/s)")
    return out


def run_evaluation(config: EvalConfig, log: Callable[[str], None] = say) -> dict[str, Any] | None:
    """Run the job; returns the report on rank 0 and None on the other ranks."""
    with distributed_failures(config.dist_timeout):
        return _evaluate(config, log)


def _evaluate(config: EvalConfig, log: Callable[[str], None]) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    selection = select_evaluation(config)
    plan = baseline_plan(config, selection)
    specs = (corpus_specs(config.oracle, selection.prepared.manifest, list(selection.split.symbols),
                          selection.prepared.freq) if config.oracle else None)
    if config.walk_forward:
        fold_dates(selection.origins.dates(selection.split.timestamps), config.walk_forward)  # enough dates?
    # Explicit options, else the predictor folder's sampler.json, else upstream's defaults (checked here, before
    # any process group, so a bad file is one line).
    sampler = resolve_sampler(config.predictor, config.temperature, config.top_p, config.sampler_file, config.spread)
    config = dataclasses.replace(config, temperature=sampler.temperature, top_p=sampler.top_p, spread=sampler.spread)
    # Seed before building preset (random) models: every rank must hold the same weights.
    torch.manual_seed(config.seed)
    tokenizer = KronosTokenizer.from_folder_or_preset(config.tokenizer)
    predictor = Kronos.from_folder_or_preset(config.predictor)
    check_pair(tokenizer, predictor)
    reference = Kronos.from_folder_or_preset(config.reference_predictor) if config.reference_predictor else None
    if reference is not None:
        check_pair(tokenizer, reference)

    # Imports deepspeed: only once the inputs are known to be good.
    runtime = init_runtime(config.threads, config.dist_timeout)
    main = runtime.is_main
    tokenizer, predictor = tokenizer.to(runtime.device).float(), predictor.to(runtime.device).float()
    load_seconds = time.perf_counter() - t0
    mine = selection.origins.for_rank(runtime.rank, runtime.world_size)
    if main:
        n_symbols = np.unique(selection.origins.symbols).size
        log(f"evaluating split {config.split!r} of {selection.prepared.path}: {n_symbols} symbols, "
            f"{len(selection.origins)} origins (lookback {selection.lookback}, pred_len {selection.pred_len}, stride "
            f"{selection.stride}) on {runtime.world_size} rank(s)")

    def forecast(model: Kronos) -> Gathered | None:
        generator = torch.Generator(device=runtime.device)
        generator.manual_seed(config.seed + runtime.rank)
        t1 = time.perf_counter()
        paths = forecast_origins(config, selection, mine, tokenizer, model.to(runtime.device).float(),
                                 runtime.device, generator, log if main else None)
        # Rank 0 gets every path (not only their mean and quantiles): the probabilistic scores need them.
        gathered = gather_forecasts(mine.rows, paths, time.perf_counter() - t1, runtime.rank, runtime.world_size,
                                    runtime.device)
        if gathered is None:
            return None
        rows, everything, seconds = gathered
        return Gathered.of_paths(rows, everything, seconds, calibration_quantiles(config))

    gathered = forecast(predictor)
    gathered_reference = forecast(reference) if reference is not None else None
    baselines = None
    if plan is not None:  # each rank fits its own origins, as it forecasts them
        fitted = forecast_baselines(plan, selection.split.values, selection.split.offsets, mine, selection.origins,
                                    selection.pred_len, config.sample_count, config.seed)
        baselines = gather_baselines(fitted, runtime.rank, runtime.world_size, runtime.device)
    oracle = None
    if specs is not None and config.scores_distribution:  # the true process's paths, per rank as the baselines
        oracle = gather_baselines(forecast_oracle(specs, selection.split.values, selection.split.timestamps,
                                                  selection.split.offsets, mine, selection.pred_len,
                                                  config.sample_count, config.seed),
                                  runtime.rank, runtime.world_size, runtime.device)
    report = None if gathered is None else write_outputs(config, selection, gathered, runtime.world_size, t0,
                                                         load_seconds, log, gathered_reference, sampler,
                                                         (plan, baselines) if plan is not None else None, oracle)
    runtime.close()
    return report


def baseline_plan(config: EvalConfig, selection: EvaluationSet) -> BaselinePlan | None:
    """The arch baselines to fit (with the probabilistic scores only), checked before any forecast is drawn."""
    names = parse_baselines(config.baselines)[0]
    if not config.scores_distribution or not names:
        return None
    plan = plan_baselines(names, config.baseline_history, selection.split.offsets, selection.origins,
                          selection.lookback, named=config.baselines.strip() != "all")
    return plan if plan.names else None


def gather_baselines(fitted: BaselineForecasts, rank: int, world_size: int,
                     device: torch.device) -> BaselineForecasts | None:
    """Every rank's baseline forecasts on rank 0 in row order (three collectives), None on the other ranks."""
    parts = [gather_forecasts(fitted.rows, array, fitted.seconds, rank, world_size, device)
             for array in (fitted.paths, fitted.variance, fitted.flags)]
    if parts[0] is None:
        return None
    (rows, paths, seconds), (_, variance, _), (_, flags, _) = parts
    return BaselineForecasts(rows, paths, variance, flags, seconds)


@dataclasses.dataclass(frozen=True)
class Gathered:
    """Every rank's forecasts on rank 0, in origin (row) order; normalised units."""

    rows: np.ndarray             # int64 [n]
    paths: np.ndarray            # float32 [n, S, H, 6] every sampled path
    mean: np.ndarray             # float32 [n, H, 6] mean of the sampled paths
    bands: np.ndarray            # float32 [n, H, Q, 6] their calibration quantiles (Q = 0 with one path)
    seconds: float               # the slowest rank's forecasting time

    @classmethod
    def of_paths(cls, rows: np.ndarray, paths: np.ndarray, seconds: float, quantiles: list[float]) -> "Gathered":
        bands = (np.moveaxis(np.quantile(paths, quantiles, axis=1), 0, 2).astype(np.float32) if quantiles else
                 np.zeros(paths.shape[:1] + paths.shape[2:3] + (0,) + paths.shape[3:], dtype=np.float32))
        return cls(rows, paths, paths.mean(axis=1), bands, seconds)


def _calibration_section(config: EvalConfig, gathered: Gathered, gathered_reference: Gathered | None,
                         real: Realised) -> dict[str, Any] | None:
    """The report's calibration section, or None when no quantiles were asked for."""
    quantiles = calibration_quantiles(config)
    if not quantiles:
        return None
    return {
        "sample_count": config.sample_count, "quantiles": quantiles, "units": "data units (price, volume)",
        "model": calibrate(gathered.bands, real, quantiles),
        "reference": None if gathered_reference is None else calibrate(gathered_reference.bands, real,
                                                                        quantiles)}


def _build_report(config: EvalConfig, selection: EvaluationSet, dates: np.ndarray, scores: dict[str, Any],
                  ic_series: tuple[np.ndarray, Any, Any], world_size: int, t0: float, load_seconds: float,
                  forecast_seconds: float) -> dict[str, Any]:
    """report.json's content, with the calibration and backtest sections still None."""
    ic_dates, ic, rank_ic = ic_series
    return {
        "config": dataclasses.asdict(config),
        "data": {"path": str(selection.prepared.path), "split": config.split, "freq": selection.prepared.freq,
                 "lookback": selection.lookback, "pred_len": selection.pred_len, "stride": selection.stride},
        "counts": {"symbols": len(selection.split.symbols),
                   "symbols_with_origins": int(np.unique(selection.origins.symbols).size),
                   "origins": len(selection.origins), "dates": int(np.unique(dates).size),
                   "ic_dates": int(ic_dates.size), "ranks": world_size},
        "model": scores["model"],
        "reference": scores.get("reference"),
        "baselines": {name: value for name, value in scores.items() if name not in ("model", "reference")},
        "ic_series": {"dates": [str(d) for d in ic_dates.astype("datetime64[ns]").astype("datetime64[s]")],
                      "ic": ic, "rank_ic": rank_ic},
        "timing": {"setup_seconds": load_seconds, "forecast_seconds": forecast_seconds,
                   "origins_per_second": len(selection.origins) / max(forecast_seconds, 1e-9),
                   "total_seconds": time.perf_counter() - t0},
        "calibration": None,
        "probabilistic": None,
        "definitions": DEFINITIONS,
        "backtest": None,
    }


def _add_backtest(config: EvalConfig, selection: EvaluationSet, report: dict[str, Any], dates: np.ndarray,
                  model_close: np.ndarray, real: Realised, out: Path, title: str, t0: float,
                  log: Callable[[str], None]) -> tuple[str, Path]:
    """Run the Qlib backtest into report["backtest"]; returns its table and the plot it wrote."""
    from ds_kronos.evaluation.backtest import BACKTEST_PLOT, format_backtest, plot_backtest, run_backtest

    t1 = time.perf_counter()
    section, daily = run_backtest(
        selection.qlib_dir, dates, np.asarray(selection.split.symbols)[selection.origins.symbols],
        metrics.window_returns(model_close, real.last_close)[:, -1], selection.stride,
        int(np.max(selection.split.timestamps)), config.benchmark, config.topk, config.n_drop,
        config.limit_threshold, log)
    plot_backtest(out / BACKTEST_PLOT, daily, f"TopkDropout backtest vs {config.benchmark}, {title}")
    report["backtest"] = section
    report["timing"]["backtest_seconds"] = time.perf_counter() - t1
    report["timing"]["total_seconds"] = time.perf_counter() - t0
    return format_backtest(section), out / BACKTEST_PLOT


def write_outputs(config: EvalConfig, selection: EvaluationSet, gathered: Gathered, world_size: int, t0: float,
                  load_seconds: float, log: Callable[[str], None],
                  gathered_reference: Gathered | None = None,
                  sampler: SamplerSettings | None = None,
                  baselines: tuple[BaselinePlan, BaselineForecasts | None] | None = None,
                  oracle: BaselineForecasts | None = None) -> dict[str, Any]:
    """Rank 0: score the gathered forecasts, write report.json and the plots, print the table."""
    rows, pred_norm, forecast_seconds = gathered.rows, gathered.mean, gathered.seconds
    if not np.array_equal(rows, selection.origins.rows):  # origins are in row order; a mismatch is a bug, not input
        raise RuntimeError("gathered forecasts do not match the planned origins")

    t_scoring = time.perf_counter()
    real = realised_windows(selection, config.clip)
    dates = selection.origins.dates(selection.split.timestamps)
    scores, model_close = score_all(pred_norm, real, dates,
                                    None if gathered_reference is None else gathered_reference.mean)
    # The same series the model's IC summary is computed from, kept for the plot and the report.
    ic_dates, ic, rank_ic = metrics.daily_ic(dates, metrics.window_returns(model_close, real.last_close)[:, -1],
                                             metrics.window_returns(real.future_close, real.last_close)[:, -1])
    scores["model"]["ic"]["significance"] = ic_significance(ic, rank_ic, selection.pred_len, selection.stride)
    distribution = volatility = tests = folds = band_paths = None
    if config.scores_distribution:
        scored = score_distributions(
            gathered.paths, None if gathered_reference is None else gathered_reference.paths, baselines, real, dates,
            calibration_quantiles(config), config.seed, config.random_walk_window, config.clip, selection.pred_len,
            selection.stride, oracle)
        distribution, volatility, tests, band_paths = (scored.probabilistic, scored.volatility, scored.tests,
                                                       scored.band_paths)
        if config.walk_forward:
            folds = walk_forward_section(
                config.walk_forward, dates, scored.losses.crps, scored.losses.qlike,
                metrics.window_returns(model_close, real.last_close)[:, -1],
                metrics.window_returns(real.future_close, real.last_close)[:, -1], selection.pred_len,
                selection.stride)
    scoring_seconds = time.perf_counter() - t_scoring

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(selection.prepared.path).name} / {config.split}, pred_len {selection.pred_len}"
    plot_examples(out / EXAMPLES_PLOT, pick_examples(selection, real, model_close, config.examples, band_paths),
                  title)
    plot_ic(out / IC_PLOT, ic_dates, ic, rank_ic, f"daily cross-sectional IC, {title}")

    report = _build_report(config, selection, dates, scores, (ic_dates, ic, rank_ic), world_size, t0, load_seconds,
                           forecast_seconds)
    report["calibration"] = _calibration_section(config, gathered, gathered_reference, real)
    report["probabilistic"] = distribution
    report["volatility"], report["tests"], report["folds"] = volatility, tests, folds
    report["sampler"] = (sampler or SamplerSettings()).describe()
    report["oracle"] = None if distribution is None else distribution.get("oracle")
    report["timing"]["scoring_seconds"] = scoring_seconds
    if baselines is not None and baselines[1] is not None:
        report["timing"]["baseline_fit_seconds"] = baselines[1].seconds  # the slowest rank's
    written = [out / REPORT_NAME, out / EXAMPLES_PLOT, out / IC_PLOT]
    if distribution is not None:
        plot_probabilistic(out / PROBABILISTIC_PLOT, distribution, title)
        written.append(out / PROBABILISTIC_PLOT)
    if folds is not None:
        plot_walk_forward(out / WALK_FORWARD_PLOT, folds, title)
        written.append(out / WALK_FORWARD_PLOT)
    backtest_table = None
    if selection.qlib_dir is not None:
        backtest_table, backtest_plot = _add_backtest(config, selection, report, dates, model_close, real, out, title,
                                                      t0, log)
        written.append(backtest_plot)
    write_json_atomic(out / REPORT_NAME, report)
    log(format_table(scores))
    if report["calibration"] is not None:
        log(format_calibration(report["calibration"]))
    if distribution is not None:
        log(format_probabilistic(distribution))
        log(format_volatility(volatility))
        log(format_tests(tests))
        if report["oracle"] is not None:
            log(format_oracle(report["oracle"]))
    if folds is not None:
        log(format_walk_forward(folds))
    log(format_sampler(report["sampler"]))
    log(format_significance(scores["model"]["ic"]["significance"]))
    if backtest_table is not None:
        log(backtest_table)
    log(f"wrote {', '.join(str(path) for path in written)}")
    return report
