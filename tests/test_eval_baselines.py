"""The arch volatility baselines, the volatility losses and the tests of the model against the baselines, against a
known truth (data simulated from a GARCH(1,1)-t with known parameters) and hand computations. No process is
started; the CLI errors run launch/evaluate.py's main in this process."""

from __future__ import annotations

import numpy as np
import pytest

from ds_kronos.errors import ConfigError
from ds_kronos.evaluation import comparisons, volatility
from ds_kronos.evaluation.arch_baselines import (
    BASELINES,
    FAILED,
    MIN_HISTORY,
    PERCENT,
    fit_counts,
    forecast_baselines,
    parse_baselines,
    plan_baselines,
)
from ds_kronos.evaluation.baselines import random_walk_paths
from ds_kronos.evaluation.origins import Origins
from ds_kronos.evaluation.probabilistic import crps_values
from helpers import run_in_process

TRUE_GARCH = np.array([0.2, 0.5, 0.45, 6.0])  # omega, alpha, beta, nu: strong, short-lived volatility clusters
GARCH_MARGIN = 0.02  # the fitted GARCH-t's CRPS is within 2% of the true process's own forecast


def garch_market(symbols: int, bars: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split values [symbols * bars, 6] and offsets: closes from arch's own simulator of the true GARCH(1,1)-t
    (percent log returns), high/low 0.1% around the close."""
    from arch.univariate import GARCH, StudentsT, ZeroMean

    values = []
    for s in range(symbols):
        model = ZeroMean(None, volatility=GARCH(1, 0, 1), distribution=StudentsT(seed=np.random.default_rng(
            [seed, s])))
        returns = model.simulate(TRUE_GARCH, bars, burn=500)["data"].to_numpy()
        close = 100.0 * np.exp(np.cumsum(returns) / PERCENT)
        block = np.zeros((bars, 6))
        block[:, 3], block[:, 1], block[:, 2] = close, close * 1.001, close * 0.999
        values.append(block)
    return np.concatenate(values), np.arange(symbols + 1) * bars


def test_garch_baseline_matches_the_true_process_and_beats_ewma_and_the_random_walk():
    from arch.univariate import GARCH, StudentsT, ZeroMean

    symbols, per_symbol, history, paths = 3, 100, 200, 100
    values, offsets = garch_market(symbols, history + per_symbol + 1, seed=1)
    rows = np.concatenate([offsets[s] + history + np.arange(per_symbol) for s in range(symbols)])
    origins = Origins(rows, np.repeat(np.arange(symbols), per_symbol))
    dates = np.tile(np.arange(per_symbol), symbols)  # one origin per symbol and date: per-date means pair them
    plan = plan_baselines(("garch_t", "ewma"), history, offsets, origins, history)
    fitted = forecast_baselines(plan, values, offsets, origins, origins, 1, paths, seed=0)
    assert fit_counts(plan.names, fitted.flags)["garch_t"]["failed"] == 0

    last = values[rows - 1, 3]
    realised = np.log(values[rows, 3] / last)[:, None]  # [n, 1] one-bar log return
    crps = {name: crps_values(np.log(fitted.paths[..., b] / last[:, None, None]), realised)[:, 0]
            for b, name in enumerate(plan.names)}
    log_history = np.stack([np.log(values[r - history:r, 3]) for r in rows])[:, :, None]
    walk = random_walk_paths(log_history, 1, paths, 20, seed=0)[..., 0] - np.log(last)[:, None, None]
    crps["random_walk"] = crps_values(walk, realised)[:, 0]
    truth = []
    for i, row in enumerate(rows):  # the true process's own forecast: its parameters, the same history
        returns = PERCENT * np.diff(np.log(values[row - history:row, 3]))
        model = ZeroMean(returns, volatility=GARCH(1, 0, 1), distribution=StudentsT(seed=np.random.default_rng(i)),
                         rescale=False)
        forecast = model.forecast(params=TRUE_GARCH, horizon=1, method="simulation", simulations=paths,
                                  reindex=False)
        truth.append(forecast.simulations.values[0] / PERCENT)
    crps["true"] = crps_values(np.stack(truth), realised)[:, 0]
    mean = {name: float(v.mean()) for name, v in crps.items()}

    assert abs(mean["garch_t"] / mean["true"] - 1) < GARCH_MARGIN, mean
    assert mean["ewma"] > mean["garch_t"] and mean["random_walk"] > mean["garch_t"], mean
    tests = {name: comparisons.diebold_mariano(crps["garch_t"], crps[name], dates, 1, 1)
             for name in ("ewma", "random_walk", "true")}
    # GARCH-t better, beyond chance. (Over market seeds 0-5 the sign held every time and p < 0.05 on 4 of 6: one
    # hundred dates of one-bar CRPS is about the least that separates them; the seed is fixed.)
    for name in ("ewma", "random_walk"):
        assert tests[name]["t"] < 0 and tests[name]["p_value"] < 0.05, (name, tests[name])
    assert tests["true"]["p_value"] > 0.1, tests["true"]  # and no different from the truth


def test_failed_fits_are_replaced_and_counted():
    values = np.full((120, 6), 50.0)  # a constant close: no return to fit, high == low: no range
    offsets = np.array([0, 120])
    origins = Origins(np.array([100, 110]), np.array([0, 0]))
    plan = plan_baselines(BASELINES, None, offsets, origins, 90)
    fitted = forecast_baselines(plan, values, offsets, origins, origins, 3, 5, seed=0)
    assert np.isfinite(fitted.paths).all() and (fitted.variance > 0).all()
    counts = fit_counts(plan.names, fitted.flags)
    assert counts["har"] == {"converged": 0, "not_converged": 0, "failed": 2}
    assert all(sum(c.values()) == 2 for c in counts.values())  # every origin is counted once per baseline
    assert (fitted.flags == FAILED).sum() == sum(c["failed"] for c in counts.values())


def test_baseline_paths_do_not_depend_on_how_origins_are_split_over_ranks():
    values, offsets = garch_market(2, 150, seed=5)
    origins = Origins(np.array([100, 120, 250, 270]), np.array([0, 0, 1, 1]))
    plan = plan_baselines(("gjr_garch_t", "har"), None, offsets, origins, 90)
    whole = forecast_baselines(plan, values, offsets, origins, origins, 4, 6, seed=3)
    parts = [forecast_baselines(plan, values, offsets, origins.for_rank(r, 2), origins, 4, 6, seed=3)
             for r in range(2)]
    order = np.argsort(np.concatenate([p.rows for p in parts]))
    assert np.array_equal(np.concatenate([p.paths for p in parts])[order], whole.paths)
    assert np.array_equal(np.concatenate([p.variance for p in parts])[order], whole.variance)


def test_baseline_names_and_history_checks():
    assert parse_baselines("all") == (BASELINES, [])
    assert parse_baselines("none") == ((), [])
    assert parse_baselines("har, ewma,har") == (("har", "ewma"), [])
    assert "unknown baseline 'garch'" in parse_baselines("garch,ewma")[1][0]
    offsets = np.array([0, 200])
    origins = Origins(np.array([60, 100]), np.array([0, 0]))
    with pytest.raises(ConfigError, match="baseline har needs at least 44 bars of history per origin"):
        plan_baselines(("har",), 30, offsets, origins, 60)
    with pytest.raises(ConfigError, match="--baseline_history 500: the split has at most 100 bars"):
        plan_baselines(("ewma",), 500, offsets, origins, 60)
    # --baselines all leaves out what the history cannot fit, and says so.
    plan = plan_baselines(BASELINES, None, offsets, origins, 30, named=False)
    assert plan.names == ("garch_t", "gjr_garch_t", "ewma") and "har" in plan.describe()["skipped"]
    # More history where the split has it: the first origin has 60 bars, the second 100.
    plan = plan_baselines(("har",), 80, offsets, origins, 60)
    assert plan.lengths.tolist() == [60, 80] and plan.describe()["history"] == "--baseline_history 80"
    assert MIN_HISTORY["har"] == 44


def test_qlike_is_smallest_at_the_true_variance_and_mse_by_hand():
    rng = np.random.default_rng(0)
    squared = (rng.standard_normal((20000, 1)) * 2.0) ** 2  # true variance 4
    means = {v: volatility.qlike(np.full_like(squared, v), squared).mean() for v in (2.0, 4.0, 8.0)}
    assert means[4.0] < means[2.0] and means[4.0] < means[8.0]
    assert volatility.qlike(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(np.log(2.0) + 0.5)
    assert volatility.squared_error(np.array([2.0]), np.array([0.5]))[0] == pytest.approx(2.25)
    close = np.array([[[101.0, 99.0]], [[99.0, 103.0]]]).transpose(1, 0, 2)  # [n 1, S 2, H 2]
    assert volatility.path_variance(close, np.array([100.0]))[0] == pytest.approx(
        [np.var(np.log([1.01, 0.99]), ddof=1), np.var(np.log([0.99, 1.03]), ddof=1)])


def test_diebold_mariano_on_per_date_differentials_and_the_confidence_set():
    rng = np.random.default_rng(1)
    dates = np.repeat(np.arange(60), 3)  # three symbols per date
    good = rng.gamma(2.0, 1.0, dates.size)
    bad = good + 0.5 + 0.1 * rng.standard_normal(dates.size)
    test = comparisons.diebold_mariano(good, bad, dates, 1, 1)
    assert test["mean_difference"] == pytest.approx(np.mean(good - bad)) and test["dates"] == 60
    assert test["t"] < -10 and test["p_value"] < 1e-6
    assert comparisons.per_date(np.array([1.0, 3.0, 5.0]), np.array([7, 7, 2])).tolist() == [5.0, 2.0]
    section = comparisons.tests_section({"model": good, "worse": bad, "same": good + 1e-3 * rng.standard_normal(
        dates.size), "copy": good.copy()}, {}, dates, 1, 1, seed=0)
    assert section["qlike"] is None
    mcs = section["crps"]["mcs"]
    assert set(mcs["included"]) == {"model", "same", "copy"}  # an exact copy shares the model's result
    assert mcs["p_values"]["copy"] == mcs["p_values"]["model"] and mcs["p_values"]["worse"] < 0.1
    assert section["crps"]["diebold_mariano"]["worse"]["p_value"] < 1e-6


@pytest.mark.parametrize("extra, expected", [
    (["--baselines", "garch,ewma"], "unknown baseline 'garch'"),
    (["--baselines", "har", "--baseline_history", "30"], "baseline har needs at least 44 bars"),
    (["--baseline_history", "100000"], "--baseline_history 100000: the split has at most"),
])
def test_bad_baseline_options_give_one_line_and_exit_2(extra, expected, demo_prepared_dir, tiny_checkpoints,
                                                       tmp_path, capsys):
    tok, pred = tiny_checkpoints
    argv = ["--data", str(demo_prepared_dir), "--tokenizer", str(tok), "--predictor", str(pred), "--out",
            str(tmp_path / "o"), "--sample_count", "2", *extra]
    code, err = run_in_process("evaluate.py", argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "o").exists()


def test_walk_forward_windows_by_date_and_their_scores():
    from ds_kronos.evaluation.walk_forward import fold_dates, format_walk_forward, walk_forward_section

    rng = np.random.default_rng(2)
    dates = np.repeat(np.arange(10) * 86_400 * 10**9, 4)  # 10 dates, 4 symbols each
    windows = fold_dates(dates, 3)
    assert [w.size for w in windows] == [4, 3, 3] and np.array_equal(np.concatenate(windows), np.unique(dates))
    with pytest.raises(ConfigError, match="--walk_forward 4 needs at least 12 origin dates .* has 10"):
        fold_dates(dates, 4)
    crps = {"model": rng.gamma(2.0, 1.0, dates.size), "reference": rng.gamma(2.0, 1.0, dates.size)}
    crps["garch_t"] = crps["model"] * np.where(dates < windows[1][0], 2.0, 0.5)  # model better, then worse
    predicted, realised = rng.standard_normal(dates.size), rng.standard_normal(dates.size)
    section = walk_forward_section(3, dates, crps, {}, predicted, realised, 5, 5)
    first, second = section["folds"][:2]
    assert first["origins"] == 16 and second["dates"] == 3 and first["start"] == "1970-01-01T00:00:00"
    assert first["skill"] == {"garch_t": pytest.approx(0.5)} and second["skill"]["garch_t"] == pytest.approx(-1.0)
    assert first["crps"]["model"] == pytest.approx(crps["model"][:16].mean())
    assert first["dm_p_value"]["crps"]["garch_t"] < 0.05 and "qlike" not in first["dm_p_value"]
    assert first["ic"]["ic"]["dates"] == 4
    pooled = section["pooled_skill"]["garch_t"]
    assert pooled["mean"] == pytest.approx((0.5 - 1.0 - 1.0) / 3) and pooled["positive_windows"] == 1
    assert "mean skill over windows: -0.500" in format_walk_forward(section)


def test_walk_forward_beyond_the_dates_gives_one_line_and_exit_2(demo_prepared_dir, tiny_checkpoints, tmp_path,
                                                                 capsys):
    tok, pred = tiny_checkpoints
    base = ["--data", str(demo_prepared_dir), "--tokenizer", str(tok), "--predictor", str(pred), "--out",
            str(tmp_path / "o")]
    code, err = run_in_process("evaluate.py", [*base, "--sample_count", "2", "--walk_forward", "500"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--walk_forward 500 needs at least 1500 origin dates (3 per window); the evaluated split has" in err
    code, err = run_in_process("evaluate.py", [*base, "--walk_forward", "2"], capsys)
    assert code == 2 and "--walk_forward scores the windows' sampled paths" in err, err
    assert not (tmp_path / "o").exists()


def test_examples_carry_the_80_percent_band_of_each_ensemble(demo_prepared_dir, tmp_path):
    from ds_kronos.evaluation.config import EvalConfig
    from ds_kronos.evaluation.report import plot_examples
    from ds_kronos.evaluation.scoring import pick_examples, realised_windows
    from ds_kronos.evaluation.selection import select_evaluation

    selection = select_evaluation(EvalConfig(data=str(demo_prepared_dir), tokenizer="tiny", predictor="tiny",
                                             max_origins_per_symbol=2))
    real = realised_windows(selection, 5.0)
    n, horizon = len(selection.origins), selection.pred_len
    paths = np.random.default_rng(0).standard_normal((n, 30, horizon, 6)).astype(np.float32)
    examples = pick_examples(selection, real, real.future_close, 2, {"model": paths, "garch_t": paths * 2})
    assert len(examples) == 2
    i = int(np.flatnonzero(selection.origins.symbols == selection.origins.symbols[-1])[-1])  # the last example
    close = paths[i, :, :, 3] * (real.close_std[i] + 1e-5) + real.close_mean[i]
    assert examples[-1].bands["model"] == pytest.approx(np.quantile(close, [0.1, 0.9], axis=0), rel=1e-5)
    low, high = examples[-1].bands["garch_t"]
    assert (high - low > examples[-1].bands["model"][1] - examples[-1].bands["model"][0]).all()  # twice as wide
    plot_examples(tmp_path / "examples.png", examples, "bands")
    assert (tmp_path / "examples.png").read_bytes()[:4] == b"\x89PNG"
