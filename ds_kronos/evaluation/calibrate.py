"""Calibrating the sampler (``launch/calibrate.py``): choose the temperature, top-p and spread factor that minimise the
CRPS of the close on the validation split, and write them to the model folder's ``sampler.json``.

Every setting of the grid forecasts the same origins with the same generator seeds (rank r: ``seed + r``), so
settings are compared on the same random draws; decoding uses the key/value cache. The number of paths is fixed.
For each (temperature, top-p) rank 0 also fits the spread factor s (``widen_paths``: each origin's paths scaled
around their mean) that minimises the CRPS of those same paths widened by s, by a bounded 1-D search (the CRPS is
convex in s), at no forecast's cost. The choice is the setting with the lowest CRPS at its own s.

The CRPS is the report's (``probabilistic.crps_values``): that of the empirical distribution of the S paths, the
forecast as delivered. With the spread fitted, it is the right objective and the "fair" (unbiased for the
distribution the paths are drawn from) estimator is not: widening around the ensemble's own mean makes the paths
dependent, so the fair estimator credits width it does not deliver and its minimiser is too wide (1.11 for a
calibrated 20-path ensemble, 1.57 for 5 paths), where the empirical CRPS gives 1.0 at any S (tested). Fitting s
also removes the empirical CRPS's E|X - X'| / (2S) preference for narrower settings from the grid's comparison.

Rank r forecasts the origins of its symbols as in the evaluation job; rank 0 scores each setting and picks the
best, every rank then forecasts the check split (default: test) with the defaults and with the choice, so the file
records CRPS and coverage before and after on data the choice never saw, next to the random walk's (the evaluation
job's ``random_walk`` row, same origins, same number of paths). The file is written atomically.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ds_kronos.config import DEFAULT_MAX_CONTEXT, DEFAULT_TOP_P, ProcessOptions, option
from ds_kronos.console import say
from ds_kronos.data.manifest import SPLITS
from ds_kronos.data.normalise import denormalise
from ds_kronos.data.series import CLOSE
from ds_kronos.data.verify import prepared_data_problems
from ds_kronos.evaluation import metrics, probabilistic
from ds_kronos.evaluation.baselines import RANDOM_WALK_WINDOW, random_walk_paths
from ds_kronos.evaluation.config import EvalConfig
from ds_kronos.evaluation.selection import EvaluationSet
from ds_kronos.forecast.config import clip_option, quantiles_option
from ds_kronos.forecast.sampler import widen_paths
from ds_kronos.forecast.sampler_file import (
    DEFAULT_SPREAD,
    DEFAULT_TEMPERATURE,
    MAX_SPREAD,
    MAX_TEMPERATURE,
    SAMPLER_FILE,
    write_sampler_file,
)
from ds_kronos.model.published import names_model_folder
from ds_kronos.runtime import distributed_failures, init_runtime


@dataclass(kw_only=True)
class CalibrateConfig(ProcessOptions):
    """Search the sampler's temperature and top-p, and fit its spread factor, on a validation split (min CRPS of the
    close); write sampler.json next to the predictor."""

    data: str | None = option(None, help="prepared dataset folder (launch/prepare_data.py output)")
    tokenizer: str | None = option(None, help="tokenizer model folder, or a preset name (random weights)")
    predictor: str | None = option(None, help="predictor model folder (sampler.json is written into it)")
    sampler_out: str | None = option(None, help=f"where to write the chosen settings (default: the predictor "
                                                f"folder's {SAMPLER_FILE})")
    split: str = option("val", choices=SPLITS, help="split the settings are chosen on")
    check_split: str | None = option("test", help="split scored with the default and the chosen settings, "
                                                  "reported before/after (none: skip)")
    temperatures: list[float] = option(default_factory=lambda: [0.8, 1.0, 1.2, 1.5], gt=0, le=MAX_TEMPERATURE,
                                       help="temperatures of the grid, comma-separated")
    top_ps: list[float] = option(default_factory=lambda: [0.8, 0.9, 1.0], gt=0, le=1,
                                 help="nucleus masses of the grid, comma-separated (1.0: off)")
    fit_spread: bool = option(True, help="also fit the spread factor (each origin's paths scaled around their mean) "
                                         "that minimises the CRPS of each setting's paths; false: spread 1.0")
    sample_count: int = option(20, help="sampled paths per origin (fixed for every setting)", ge=2)
    quantiles: list[float] = quantiles_option((0.1, 0.9), help="quantiles whose central bands' coverage is "
                                                              "reported (default: 0.1,0.9)")
    max_origins_per_symbol: int | None = option(None, help="keep only the latest N origins of each symbol", ge=1)
    pred_len: int | None = option(None, help="bars to forecast per origin (default: the prepared set's predict)",
                                  ge=1)
    stride: int | None = option(None, help="bars between origins (default: pred_len)", ge=1)
    max_context: int = option(DEFAULT_MAX_CONTEXT, help="most tokens the predictor sees", ge=1)
    seed: int = option(0, help="sampler seed (rank r uses seed + r), the same for every setting")
    batch_size: int = option(64, help="origins forecast together per rank", ge=1)
    clip: float = clip_option()
    use_cache: bool = option(True, help="incremental decoding with a key/value cache")

    @property
    def target(self) -> Path:
        return Path(self.sampler_out) if self.sampler_out else Path(self.predictor or ".") / SAMPLER_FILE

    def problems(self) -> list[str]:
        problems = prepared_data_problems(self.data)
        for name in ("tokenizer", "predictor"):
            if not getattr(self, name):
                problems.append(f"--{name} is required: a model folder or a preset name")
        if self.predictor and not self.sampler_out and not names_model_folder(self.predictor):
            problems.append(f"--predictor {self.predictor} is not a folder: give --sampler_out FILE")
        if self.check_split is not None and self.check_split not in SPLITS:
            problems.append(f"--check_split must be one of {', '.join(SPLITS)} or none, got "
                            f"{self.check_split!r}")
        for name in ("temperatures", "top_ps"):
            if not getattr(self, name):
                problems.append(f"--{name} must list at least one value")
        return problems

    def evaluation(self, split: str) -> EvalConfig:
        """The evaluation options of one split (the sampler's temperature/top-p are set per setting)."""
        return EvalConfig(data=self.data, tokenizer=self.tokenizer, predictor=self.predictor, split=split,
                          max_context=self.max_context, pred_len=self.pred_len, stride=self.stride,
                          max_origins_per_symbol=self.max_origins_per_symbol, sample_count=self.sample_count,
                          quantiles=list(self.quantiles), use_cache=self.use_cache, top_k=0, seed=self.seed,
                          batch_size=self.batch_size, clip=self.clip, threads=self.threads,
                          dist_timeout=self.dist_timeout, temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P,
                          spread=DEFAULT_SPREAD, sampler_file=False)


def close_scores(paths_norm: np.ndarray, real: Any, quantiles: list[float]) -> dict[str, Any]:
    """The close's CRPS (normalised and price units) and the coverage of its central bands (price units)."""
    norm = paths_norm[..., CLOSE]
    price = denormalise(norm.astype(np.float64), real.close_mean[:, None, None].astype(np.float64),
                        real.close_std[:, None, None].astype(np.float64))
    bands = metrics.quantile_calibration(probabilistic.path_quantiles(price, quantiles), real.future_close,
                                         quantiles)["bands"] if quantiles else []
    return {"crps": float(probabilistic.crps_values(norm, real.future_norm[..., CLOSE]).mean()),
            "crps_price": float(probabilistic.crps_values(price, real.future_close).mean()),
            "coverage": [{"nominal": b["nominal"], "lower": b["lower"], "upper": b["upper"], "inside": b["inside"]}
                         for b in bands]}


def widened(paths_norm: np.ndarray, spread: float) -> np.ndarray:
    """Paths [n, S, H, F] (or [n, S, H]) scaled around their mean by ``spread``, as the sampler does it."""
    if spread == DEFAULT_SPREAD:
        return paths_norm
    return widen_paths(torch.from_numpy(np.ascontiguousarray(paths_norm)), spread).numpy()


SPREAD_LOWEST = 0.05
"""The search's lower end: a spread this small is a point forecast for every score that matters."""
SPREAD_DECIMALS = 3


def fit_spread(close_norm: np.ndarray, actual: np.ndarray) -> float:
    """The spread factor in [SPREAD_LOWEST, MAX_SPREAD] that minimises the mean CRPS of the close paths ``close_norm``
    [n, S, H] widened by it, against ``actual`` [n, H] (normalised units), rounded to 3 decimals.

    For fixed paths x_j = m + d_j the CRPS of the widened paths is mean_j |m + s d_j - y| - s c (c >= 0, half the
    mean pairwise distance of the d_j): convex in s, so scipy's bounded scalar search finds its minimum."""
    from scipy.optimize import minimize_scalar

    def mean_crps(spread: float) -> float:
        return float(probabilistic.crps_values(widened(close_norm, spread), actual).mean())

    found = minimize_scalar(mean_crps, bounds=(SPREAD_LOWEST, MAX_SPREAD), method="bounded",
                            options={"xatol": 10.0 ** -SPREAD_DECIMALS})
    return round(float(found.x), SPREAD_DECIMALS)


def run_calibration(config: CalibrateConfig, log: Callable[[str], None] = say) -> dict[str, Any] | None:
    """Run the search; returns what was written to sampler.json on rank 0, None on the other ranks."""
    with distributed_failures(config.dist_timeout):
        return _calibrate(config, log)


def _calibrate(config: CalibrateConfig, log: Callable[[str], None]) -> dict[str, Any] | None:
    from ds_kronos.evaluation.gather import broadcast_choice, gather_forecasts
    from ds_kronos.evaluation.job import forecast_origins
    from ds_kronos.evaluation.scoring import realised_windows
    from ds_kronos.evaluation.selection import select_evaluation
    from ds_kronos.model import Kronos, KronosTokenizer
    from ds_kronos.model.pairing import check_pair

    t0 = time.perf_counter()
    base = config.evaluation(config.split)
    chosen_on = select_evaluation(base)
    check = select_evaluation(config.evaluation(config.check_split)) if config.check_split else None
    torch.manual_seed(config.seed)
    tokenizer = KronosTokenizer.from_folder_or_preset(config.tokenizer)
    predictor = Kronos.from_folder_or_preset(config.predictor)
    check_pair(tokenizer, predictor)

    runtime = init_runtime(config.threads, config.dist_timeout)
    main = runtime.is_main
    tokenizer, predictor = tokenizer.to(runtime.device).float(), predictor.to(runtime.device).float()
    quantiles = sorted(set(config.quantiles))
    realised: dict[int, Any] = {}

    def forecast(selection: EvaluationSet, temperature: float, top_p: float) -> tuple[np.ndarray, float] | None:
        """Every rank forecasts its origins; rank 0 gets all paths [n, S, H, 6] and the seconds, the others None."""
        setting = dataclasses.replace(base, temperature=temperature, top_p=top_p)
        generator = torch.Generator(device=runtime.device)
        generator.manual_seed(config.seed + runtime.rank)  # the same draws for every setting
        mine = selection.origins.for_rank(runtime.rank, runtime.world_size)
        t1 = time.perf_counter()
        paths = forecast_origins(setting, selection, mine, tokenizer, predictor, runtime.device, generator, None)
        gathered = gather_forecasts(mine.rows, paths, time.perf_counter() - t1, runtime.rank, runtime.world_size,
                                    runtime.device)
        return None if gathered is None else (gathered[1], gathered[2])

    def real_of(selection: EvaluationSet) -> Any:
        if id(selection) not in realised:
            realised[id(selection)] = realised_windows(selection, config.clip)
        return realised[id(selection)]

    def scored(selection: EvaluationSet, paths: np.ndarray, spread: float) -> dict[str, Any]:
        return {"spread": spread, **close_scores(widened(paths, spread), real_of(selection), quantiles)}

    def random_walk(selection: EvaluationSet) -> dict[str, Any]:
        """The evaluation job's random_walk row on these origins (same paths count, same seed stream)."""
        real = real_of(selection)
        walk = random_walk_paths(real.history_norm, selection.pred_len, config.sample_count, RANDOM_WALK_WINDOW,
                                 config.seed)
        return {"window": RANDOM_WALK_WINDOW, **close_scores(walk, real, quantiles)}

    grid = [(t, p) for t in config.temperatures for p in config.top_ps]
    default = (DEFAULT_TEMPERATURE, DEFAULT_TOP_P)
    if main:
        log(f"calibrating the sampler on split {config.split!r} of {chosen_on.prepared.path}: "
            f"{len(chosen_on.origins)} origins, {config.sample_count} paths, {len(grid)} settings (temperature "
            f"{', '.join(f'{t:g}' for t in config.temperatures)} x top_p {', '.join(f'{p:g}' for p in config.top_ps)})"
            f"{', each with its fitted spread factor' if config.fit_spread else ''} on {runtime.world_size} rank(s)")
    results: list[dict[str, Any]] = []
    for temperature, top_p in grid + ([] if default in grid else [default]):
        got = forecast(chosen_on, temperature, top_p)
        if got is None:
            continue
        paths, seconds = got
        sampled = scored(chosen_on, paths, DEFAULT_SPREAD)
        spread = (fit_spread(paths[..., CLOSE], real_of(chosen_on).future_norm[..., CLOSE]) if config.fit_spread
                  else DEFAULT_SPREAD)
        results.append({"temperature": temperature, "top_p": top_p, "sampled": sampled,
                        "widened": scored(chosen_on, paths, spread), "seconds": seconds})
        log(f"  T {temperature:g}, top_p {top_p:g}: {format_scores(sampled)}"
            + (f"; spread {spread:g}: {format_scores(results[-1]['widened'])}" if config.fit_spread else ""))
    best = int(np.argmin([r["widened"]["crps"] for r in results[:len(grid)]])) if main else 0
    best = broadcast_choice(best, runtime.world_size, runtime.device)
    chosen = grid[best]
    before_check = after_check = None
    if check is not None:
        before_paths = forecast(check, *default)
        after_paths = forecast(check, *chosen) if chosen != default else before_paths
        if main:
            spread = results[best]["widened"]["spread"]
            before_check = scored(check, before_paths[0], DEFAULT_SPREAD)
            after_check = scored(check, after_paths[0], spread)
    payload = None
    if main:
        by_setting = {(r["temperature"], r["top_p"]): r for r in results}
        spread = results[best]["widened"]["spread"]
        calibration = {
            "data": str(chosen_on.prepared.path), "split": config.split, "check_split": config.check_split,
            "origins": len(chosen_on.origins), "check_origins": None if check is None else len(check.origins),
            "sample_count": config.sample_count, "seed": config.seed, "max_origins_per_symbol":
                config.max_origins_per_symbol, "fit_spread": config.fit_spread,
            "objective": "mean CRPS of the close over all origins and horizons, normalised units (lower is better), "
                         "each setting at its fitted spread factor",
            "grid": results[:len(grid)],
            "before": {"temperature": default[0], "top_p": default[1], "spread": DEFAULT_SPREAD,
                       "split": by_setting[default]["sampled"], "check_split": before_check},
            "after": {"temperature": chosen[0], "top_p": chosen[1], "spread": spread,
                      "split": results[best]["widened"], "check_split": after_check},
            "random_walk": {"split": random_walk(chosen_on),
                            "check_split": None if check is None else random_walk(check)},
            "seconds": time.perf_counter() - t0}
        path = write_sampler_file(config.target, chosen[0], chosen[1], spread, calibration)
        payload = {"temperature": chosen[0], "top_p": chosen[1], "spread": spread, "calibration": calibration,
                   "path": str(path)}
        log(f"chosen: temperature {chosen[0]:g}, top_p {chosen[1]:g}, spread {spread:g}")
        for name, split in (("split", config.split), ("check_split", config.check_split)):
            if calibration["before"][name] is not None:
                log(f"  {split}: before (T {default[0]:g}, top_p {default[1]:g}, spread 1) "
                    f"{format_scores(calibration['before'][name])}; after {format_scores(calibration['after'][name])}; "
                    f"random walk {format_scores(calibration['random_walk'][name])}")
        log(f"wrote {path} ({calibration['seconds']:.0f} s)")
    runtime.close()
    return payload


def format_scores(result: dict[str, Any]) -> str:
    bands = ", ".join(f"{b['nominal']:.0%} band {b['inside']:.3f}" for b in result["coverage"])
    return f"CRPS {result['crps']:.4f} (price {result['crps_price']:.4g}){', ' + bands if bands else ''}"
