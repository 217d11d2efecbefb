"""Evaluation job: metric functions against hand-computed values, origin building, and launch/evaluate.py runs
(single process, reproducibility, the deepspeed launcher with 2 CPU ranks, bad input)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ds_kronos.evaluation import metrics
from ds_kronos.evaluation.origins import build_origins, origin_windows
from helpers import launch_command, run_in_process, run_job, stall_a_rank

DAY = 86_400 * 10**9


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------

def test_horizon_errors_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    actual = np.array([[0.0, 0.0], [1.0, 1.0]])  # errors [[1, 2], [2, 3]]
    result = metrics.horizon_errors(pred, actual)
    assert result["mae_per_horizon"] == pytest.approx([1.5, 2.5])
    assert result["rmse_per_horizon"] == pytest.approx([math.sqrt(2.5), math.sqrt(6.5)])
    assert result["mae"] == pytest.approx(2.0)
    assert result["rmse"] == pytest.approx(math.sqrt(4.5))
    # Two features, the second forecast perfectly: per-feature values are averaged over the features.
    both = metrics.horizon_errors(np.stack([pred, actual], axis=-1), np.stack([actual, actual], axis=-1))
    assert both["mae_per_horizon"] == pytest.approx([0.75, 1.25])
    assert both["rmse_per_horizon"] == pytest.approx([math.sqrt(2.5) / 2, math.sqrt(6.5) / 2])
    assert both["rmse"] == pytest.approx(math.sqrt(4.5) / 2)


def test_direction_accuracy_up_vs_down_or_flat():
    pred = np.array([[0.1, -0.2], [0.0, 0.3], [-0.1, 0.2]])
    real = np.array([[0.2, -0.1], [-0.1, -0.3], [0.0, 0.1]])
    # h1: up/up, flat/down, down/flat -> all right; h2: down/down right, up/down wrong, up/up right.
    result = metrics.direction_accuracy(pred, real)
    assert result["per_horizon"] == pytest.approx([1.0, 2 / 3])
    assert result["accuracy"] == pytest.approx(2 / 3)


def test_rankdata_and_correlations_by_hand():
    assert metrics.rankdata(np.array([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # x=[1,2,3], y=[1,3,2]: deviations [-1,0,1], [-1,1,0] -> 1 / sqrt(2 * 2)
    assert metrics.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # Tied ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]: 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))
    assert metrics.spearman([1, 2, 3, 100], [4, 9, 10, 11]) == pytest.approx(1.0)
    assert math.isnan(metrics.pearson([0.1, 0.1, 0.1], [1, 2, 3]))  # constant side: undefined


def test_daily_ic_skips_small_and_constant_dates_and_summarises():
    a = [0.01, 0.03, -0.02, 0.00], [0.02, 0.01, -0.01, 0.005]
    b = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    c = [0.5, 0.2], [0.1, 0.3]                # 2 symbols: skipped
    d = [0.0, 0.0, 0.0], [0.1, -0.1, 0.2]     # constant prediction: skipped
    blocks = {4: a, 1: b, 2: c, 3: d}          # dates out of order on purpose
    dates = np.concatenate([[day] * len(p) for day, (p, _) in blocks.items()]) * DAY
    pred = np.concatenate([p for p, _ in blocks.values()])
    real = np.concatenate([r for _, r in blocks.values()])
    used, ic, rank_ic = metrics.daily_ic(dates, pred, real)
    assert used.tolist() == [1 * DAY, 4 * DAY]
    ic_a = np.corrcoef(a[0], a[1])[0, 1]
    rank_a = np.corrcoef(np.argsort(np.argsort(a[0])), np.argsort(np.argsort(a[1])))[0, 1]  # no ties in a
    assert ic.tolist() == pytest.approx([0.5, ic_a])
    assert rank_ic.tolist() == pytest.approx([0.5, rank_a])
    summary = metrics.ic_summary(ic, rank_ic)
    std = math.sqrt(((0.5 - ic_a) ** 2) / 2)  # sample std of two values: |x - y| / sqrt(2)
    assert summary["mean_ic"] == pytest.approx((0.5 + ic_a) / 2)
    assert summary["ic_std"] == pytest.approx(std)
    assert summary["icir"] == pytest.approx((0.5 + ic_a) / 2 / std)
    assert summary["mean_rank_ic"] == pytest.approx((0.5 + rank_a) / 2)
    assert summary["dates"] == 2
    assert metrics.ic_summary(np.zeros(0), np.zeros(0))["mean_ic"] is None


def test_score_of_a_constant_forecaster_has_no_ic():
    real = np.array([[0.1], [-0.2], [0.3]])
    result = metrics.score(pred_close_norm=np.zeros((3, 1)), actual_close_norm=np.ones((3, 1)),
                           pred_returns=np.zeros((3, 1)), real_returns=real, dates=np.zeros(3, np.int64),
                           with_ic=False)
    assert result["ic"]["mean_ic"] is None and result["ic"]["dates"] == 0
    assert result["all_features"] is None
    assert result["direction"]["accuracy"] == pytest.approx(1 / 3)  # "down or flat" is right once
    assert result["close"]["mae"] == pytest.approx(1.0)


def test_quantile_calibration_by_hand():
    assert metrics.central_bands([0.5, 0.9, 0.1]) == [(0.1, 0.9)]
    assert metrics.central_bands([0.05, 0.1, 0.5, 0.9, 0.95]) == [(0.05, 0.95), (0.1, 0.9)]
    assert metrics.central_bands([0.2, 0.7]) == [(0.2, 0.7)]
    # 4 origins, 2 horizons, quantiles 0.1 / 0.5 / 0.9 forecast as [-1, 0, 1] everywhere.
    bands = np.broadcast_to(np.array([-1.0, 0.0, 1.0]), (4, 2, 3))
    actual = np.array([[-2.0, -1.0], [-0.5, 0.0], [0.5, 1.0], [3.0, 0.2]])
    result = metrics.quantile_calibration(bands, actual, [0.1, 0.5, 0.9])
    below = {entry["quantile"]: entry for entry in result["share_below"]}
    # h1: -2 | -0.5 0.5 | 3 ; h2: -1 (on the bound) 0 0.2 1 (on the bound)
    assert below[0.1]["per_horizon"] == [0.25, 0.25] and below[0.1]["overall"] == 0.25
    assert below[0.5]["per_horizon"] == [0.5, 0.5]
    assert below[0.9]["per_horizon"] == [0.75, 1.0] and below[0.9]["overall"] == 0.875
    (band,) = result["bands"]
    assert (band["lower"], band["upper"]) == (0.1, 0.9) and band["nominal"] == pytest.approx(0.8)
    assert band["per_horizon"] == [0.5, 1.0]  # bounds count as inside
    assert band["inside"] == 0.75


@pytest.mark.parametrize("days", [20, 35, 140])  # matplotlib's default labels overlapped at 20 and 35 days
def test_date_labels_of_the_examples_do_not_overlap(days):
    from ds_kronos.evaluation.report import _date_axis
    from ds_kronos.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.6))  # the size of one forecast_examples.png panel
    when = np.datetime64("2024-01-02") + np.arange(days)
    ax.plot(when, np.arange(days))
    _date_axis(ax)
    fig.tight_layout()
    fig.canvas.draw()
    boxes = [label.get_window_extent() for label in ax.get_xticklabels() if label.get_text()]
    plt.close(fig)
    assert len(boxes) >= 3
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]


# ---------------------------------------------------------------------------------------------------------------------
# Origins
# ---------------------------------------------------------------------------------------------------------------------

def crafted_split() -> tuple[np.ndarray, np.ndarray]:
    """Symbol 0: days 0..9; symbol 1: days 2..9 (listed late); symbol 2: days 0..9 without day 4 (suspended)."""
    days = [list(range(10)), list(range(2, 10)), [d for d in range(10) if d != 4]]
    timestamps = np.concatenate([np.array(d, dtype=np.int64) * DAY for d in days])
    offsets = np.array([0, 10, 18, 27], dtype=np.int64)
    return timestamps, offsets


def test_origins_on_a_shared_calendar_grid():
    timestamps, offsets = crafted_split()
    # lookback 3, pred_len 2, stride 2: grid = calendar days 2, 4, 6, 8; the last history bar needs 2 bars before
    # it and 2 after it inside its symbol.
    origins = build_origins(timestamps, offsets, lookback=3, pred_len=2, stride=2)
    assert origins.rows.tolist() == [3, 5, 7, 13, 15, 21, 24]
    assert origins.symbols.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert (origins.dates(timestamps) // DAY).tolist() == [2, 4, 6, 4, 6, 2, 6]
    for row, symbol in zip(origins.rows, origins.symbols):  # history and future stay inside the symbol
        assert offsets[symbol] <= row - 3 and row + 2 <= offsets[symbol + 1]

    latest = build_origins(timestamps, offsets, lookback=3, pred_len=2, stride=2, max_per_symbol=1)
    assert latest.rows.tolist() == [7, 15, 24]
    assert origins.for_rank(1, 2).rows.tolist() == [13, 15]
    assert origins.for_rank(0, 2).symbols.tolist() == [0, 0, 0, 2, 2]
    assert build_origins(timestamps, offsets, lookback=3, pred_len=1, stride=1).rows.size == 7 + 5 + 6
    assert len(build_origins(timestamps, offsets, lookback=3, pred_len=8, stride=1)) == 0


def test_origin_windows_normalise_like_window_dataset(demo_prepared_dir):
    from ds_kronos.data import PreparedDataset, WindowDataset

    prepared = PreparedDataset.open(demo_prepared_dir)
    split = prepared.test
    lookback, pred_len = prepared.lookback, 4
    origins = build_origins(split.timestamps, split.offsets, lookback, pred_len, stride=7)
    windows = origin_windows(split, origins.rows, lookback, pred_len, clip=5.0)
    # A WindowDataset window has lookback + predict + 1 bars: predict = pred_len - 1 gives the same span.
    reference = WindowDataset(prepared, "test", predict=pred_len - 1)
    x, stamp = reference.windows(origins.rows - lookback)
    np.testing.assert_array_equal(windows.norm, x.numpy())
    np.testing.assert_array_equal(windows.stamp, stamp.numpy())


def test_the_evaluation_samples_with_the_spread_factor(demo_prepared_dir):
    import dataclasses

    import torch

    from ds_kronos.evaluation.config import EvalConfig
    from ds_kronos.evaluation.job import forecast_origins
    from ds_kronos.evaluation.origins import origin_windows
    from ds_kronos.evaluation.selection import select_evaluation
    from ds_kronos.forecast import widen_bars
    from ds_kronos.model import Kronos, KronosTokenizer

    torch.manual_seed(0)
    tokenizer, predictor = KronosTokenizer.from_preset("tiny"), Kronos.from_preset("tiny")
    config = EvalConfig(data=str(demo_prepared_dir), tokenizer="tiny", predictor="tiny", max_origins_per_symbol=1,
                        pred_len=3, sample_count=3, temperature=1.0, top_p=0.9)
    selection = select_evaluation(config)
    origins = selection.origins.for_rank(0, 4)

    def paths(spread: float) -> np.ndarray:
        return forecast_origins(dataclasses.replace(config, spread=spread), selection, origins, tokenizer, predictor,
                                torch.device("cpu"), torch.Generator().manual_seed(1), None)

    plain, wide = paths(1.0), paths(1.8)
    mean = plain.mean(axis=1, keepdims=True)
    # The close is widened around its mean path; whole bars move with it in each window's own units (widen_bars).
    np.testing.assert_allclose(wide[..., 3], (mean + 1.8 * (plain - mean))[..., 3], rtol=1e-5, atol=1e-5)
    win = origin_windows(selection.split, origins.rows, selection.lookback, selection.pred_len, config.clip)
    bars = widen_bars(torch.from_numpy(plain), 1.8, torch.from_numpy(win.mean[:, 0]), torch.from_numpy(win.std[:, 0]))
    np.testing.assert_allclose(wide, bars.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(wide, mean + 1.8 * (plain - mean), rtol=1e-5, atol=1e-5)  # not each feature on its own
    assert np.abs(plain - mean).max() > 0.01  # the paths differ, so the check means something


# ---------------------------------------------------------------------------------------------------------------------
# launch/evaluate.py
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    import torch

    from ds_kronos.model import Kronos, KronosTokenizer

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    KronosTokenizer.from_preset("tiny").save_pretrained(root / "tokenizer")
    Kronos.from_preset("tiny").save_pretrained(root / "predictor")
    return root / "tokenizer", root / "predictor"


def eval_args(data: Path, models: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--tokenizer", str(models[0]), "--predictor", str(models[1]), "--out", str(out),
            "--max_origins_per_symbol", "3", "--sample_count", "1", "--threads", "1", *extra]


def run_eval(args: list[str], processes: int | None = None) -> subprocess.CompletedProcess:
    return run_job("evaluate.py", args, processes, timeout=180, OMP_NUM_THREADS="1")


def metric_sections(report: dict) -> dict:
    return {"model": report["model"], "baselines": report["baselines"], "counts": report["counts"]}


def finite_numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.fixture(scope="module")
def sampled_run(demo_prepared_dir, tiny_models, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("eval") / "a"
    result = run_eval(eval_args(demo_prepared_dir, tiny_models, out, "--seed", "7"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.processes
def test_end_to_end_report_plots_and_table(sampled_run, demo_prepared_dir):
    from ds_kronos.data import PreparedDataset

    out, result = sampled_run
    report = json.loads((out / "report.json").read_text())
    assert {"config", "data", "counts", "model", "baselines", "ic_series", "timing", "definitions"} <= set(report)
    assert set(report["baselines"]) == {"last_value", "zero_return", "history_mean"}
    for name in ("forecast_examples.png", "ic_over_time.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for line in ("model", "last_value", "zero_return", "history_mean"):
        assert any(row.startswith(line + " ") for row in result.stdout.splitlines()), result.stdout

    prepared = PreparedDataset.open(demo_prepared_dir)
    split, lookback, pred_len = prepared.test, prepared.lookback, prepared.predict
    origins = build_origins(split.timestamps, split.offsets, lookback, pred_len, pred_len, max_per_symbol=3)
    counts = report["counts"]
    assert counts["origins"] == len(origins) == 3 * counts["symbols_with_origins"]
    assert counts["symbols"] == len(split.symbols) and counts["ranks"] == 1
    assert report["data"]["pred_len"] == pred_len and report["data"]["stride"] == pred_len

    model = report["model"]
    for section in ("close", "all_features"):
        assert len(model[section]["mae_per_horizon"]) == pred_len
    numbers = finite_numbers(model) + finite_numbers(report["baselines"]["last_value"]["close"])
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert model["ic"]["dates"] == counts["ic_dates"] == len(report["ic_series"]["ic"]) > 0
    assert model["ic"]["mean_ic"] == pytest.approx(np.mean(report["ic_series"]["ic"]))
    assert model["ic"]["mean_rank_ic"] == pytest.approx(np.mean(report["ic_series"]["rank_ic"]))
    assert report["baselines"]["last_value"]["ic"]["mean_ic"] is None
    assert report["baselines"]["history_mean"]["ic"]["mean_ic"] is not None

    # Independent re-computation of the baselines from the raw rows, one origin at a time.
    abs_err, real_end = [], []
    for row in origins.rows:
        close = np.asarray(split.values[row - lookback: row + pred_len, 3], dtype=np.float64)
        mean, std = close[:lookback].mean(), close[:lookback].std()
        norm = np.clip((close - mean) / (std + 1e-5), -5, 5)
        abs_err.append(np.abs(norm[lookback:] - norm[lookback - 1]))
        real_end.append(close[-1] / close[lookback - 1] - 1)
    last_value = report["baselines"]["last_value"]
    assert last_value["close"]["mae_per_horizon"] == pytest.approx(np.mean(abs_err, axis=0).tolist(), rel=1e-4)
    down_or_flat = float(np.mean(np.array(real_end) <= 0))
    assert report["baselines"]["zero_return"]["direction"]["accuracy"] == pytest.approx(down_or_flat)
    assert last_value["direction"]["accuracy"] == pytest.approx(down_or_flat)


@pytest.mark.processes
def test_cache_is_the_default_and_recomputation_gives_the_same_report(sampled_run, demo_prepared_dir, tiny_models,
                                                                       tmp_path):
    first = json.loads((sampled_run[0] / "report.json").read_text())
    assert first["config"]["use_cache"] is True
    assert first["calibration"] is None  # one sampled path: no bands
    result = run_eval(eval_args(demo_prepared_dir, tiny_models, tmp_path / "r", "--seed", "7", "--use_cache", "false"))
    assert result.returncode == 0, result.stderr[-3000:]
    second = json.loads((tmp_path / "r" / "report.json").read_text())
    assert second["config"]["use_cache"] is False
    assert metric_sections(second) == metric_sections(first)
    assert second["ic_series"] == first["ic_series"]


@pytest.mark.processes
def test_calibration_of_sampled_bands(demo_prepared_dir, tiny_models, tmp_path):
    result = run_eval(eval_args(demo_prepared_dir, tiny_models, tmp_path / "c", "--seed", "2", "--sample_count", "4",
                                "--quantiles", "0.9,0.1,0.5,0.25,0.75", "--reference_predictor",
                                str(tiny_models[1])))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    calibration = report["calibration"]
    assert calibration["sample_count"] == 4 and calibration["quantiles"] == [0.1, 0.25, 0.5, 0.75, 0.9]
    pred_len = report["data"]["pred_len"]
    model = calibration["model"]
    assert set(model) == {"open", "high", "low", "close", "vol", "amt"}
    for feature in model.values():
        below = {entry["quantile"]: np.array(entry["per_horizon"]) for entry in feature["share_below"]}
        assert all(len(v) == pred_len for v in below.values())
        # Quantiles of the same paths are ordered, so the shares below them are too.
        assert np.all(np.diff(np.stack([below[q] for q in calibration["quantiles"]]), axis=0) >= 0)
        assert [(b["lower"], b["upper"]) for b in feature["bands"]] == [(0.1, 0.9), (0.25, 0.75)]
        for band in feature["bands"]:
            # Inside [lo, hi] = below hi minus strictly below lo (no realised value equals a forecast quantile).
            assert np.allclose(band["per_horizon"], below[band["upper"]] - below[band["lower"]])
            assert band["inside"] == pytest.approx(np.mean(band["per_horizon"]))
    # The same weights and seeds: the reference's bands are the model's.
    assert calibration["reference"] == model
    assert "calibration of the close (4 sampled paths" in result.stdout
    check_probabilistic_section(report, demo_prepared_dir, seed=2, paths=4)
    assert (tmp_path / "c" / "probabilistic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "distribution of the close (4 paths per origin" in result.stdout
    assert "significance (Newey-West" in result.stdout


def check_probabilistic_section(report: dict, prepared_dir: Path, seed: int, paths: int) -> None:
    """The report's probabilistic rows against independent computations from the raw rows of the split."""
    from ds_kronos.data import PreparedDataset

    section = report["probabilistic"]
    rows = section["rows"]
    # The arch baselines follow (HAR left out: the fixture's 30-bar lookback is under its 44 bars), close only.
    assert list(rows) == ["model", "reference", "random_walk", "bootstrap", "last_value", "history_mean", "garch_t",
                          "gjr_garch_t", "ewma"]
    assert list(rows["garch_t"]["features"]) == ["close"]
    fits = report["volatility"]["baseline_fits"]
    assert fits["skipped"] == {"har": "needs 44 bars of history, has 30"} and fits["history"] == "lookback"
    assert all(sum(c.values()) == report["counts"]["origins"] for c in fits["fits"].values())
    # QLIKE/MSE per sampled row (point forecasts have no variance), DM of the model against every other row.
    assert list(report["volatility"]["rows"]) == ["model", "reference", "random_walk", "bootstrap", "garch_t",
                                                  "gjr_garch_t", "ewma"]
    crps_tests = report["tests"]["crps"]
    assert set(crps_tests["diebold_mariano"]) == set(rows) - {"model"}
    assert crps_tests["diebold_mariano"]["reference"]["mean_difference"] == 0  # the same weights and draws
    assert crps_tests["diebold_mariano"]["garch_t"]["mean_difference"] == pytest.approx(
        rows["model"]["features"]["close"]["crps"]["normalised"]["mean"]
        - rows["garch_t"]["features"]["close"]["crps"]["normalised"]["mean"], abs=0.2)  # per-date vs per-origin mean
    assert set(report["tests"]["qlike"]["diebold_mariano"]) == set(report["volatility"]["rows"]) - {"model"}
    assert section["paths"] == paths and section["random_walk_window"] == 20
    for row in rows.values():
        assert list(row["features"])[0] == "close"
        assert row["skill_vs_random_walk"]["normalised"]["mean"] == pytest.approx(
            1 - row["features"]["close"]["crps"]["normalised"]["mean"]
            / rows["random_walk"]["features"]["close"]["crps"]["normalised"]["mean"])
    # A point forecast is a one-member ensemble: its CRPS is its MAE.
    assert rows["last_value"]["features"]["close"]["crps"]["normalised"]["mean"] == pytest.approx(
        report["baselines"]["last_value"]["close"]["mae"], rel=1e-5)
    assert rows["last_value"]["features"]["close"]["coverage"] is None
    # The model's bands are those of the calibration section.
    bands = rows["model"]["features"]["close"]["coverage"]
    assert [b["inside"] for b in bands] == pytest.approx([b["inside"] for b in report["calibration"]["model"]["close"][
        "bands"]])

    prepared = PreparedDataset.open(prepared_dir)
    split, lookback, pred_len = prepared.test, prepared.lookback, report["data"]["pred_len"]
    origins = build_origins(split.timestamps, split.offsets, lookback, pred_len, pred_len, max_per_symbol=3)
    # The random walk re-drawn from its documented recipe, one origin at a time, scored by the energy form.
    steps = np.random.default_rng([seed, 1]).standard_normal((len(origins), paths, pred_len, 6))
    crps, mase_last = [], []
    for i, row in enumerate(origins.rows):
        close = np.asarray(split.values[row - lookback: row + pred_len, 3], dtype=np.float64)
        mean, std = close[:lookback].mean(), close[:lookback].std()
        norm = np.clip((close - mean) / (std + 1e-5), -5, 5)
        hist = norm[:lookback]
        sigma = np.diff(hist)[-20:].std(ddof=1)
        walk = hist[-1] + np.cumsum(steps[i, :, :, 3] * sigma, axis=1)  # [S, H]
        for h in range(pred_len):
            x, y = walk[:, h], norm[lookback + h]
            crps.append(np.abs(x - y).mean() - 0.5 * np.abs(x[:, None] - x[None, :]).mean())
        naive = np.abs(np.diff(close[:lookback])).mean()
        mase_last.append(np.abs(close[lookback:] - close[lookback - 1]) / naive)
    walk_row = rows["random_walk"]["features"]["close"]
    assert walk_row["crps"]["normalised"]["mean"] == pytest.approx(np.mean(crps), rel=1e-4)
    assert rows["last_value"]["features"]["close"]["mase"]["per_horizon"] == pytest.approx(
        np.mean(mase_last, axis=0).tolist(), rel=1e-4)


@pytest.mark.processes
def test_same_seed_reproduces_the_metrics(sampled_run, demo_prepared_dir, tiny_models, tmp_path):
    first = json.loads((sampled_run[0] / "report.json").read_text())
    result = run_eval(eval_args(demo_prepared_dir, tiny_models, tmp_path / "b", "--seed", "7"))
    assert result.returncode == 0, result.stderr[-3000:]
    second = json.loads((tmp_path / "b" / "report.json").read_text())
    assert metric_sections(second) == metric_sections(first)
    assert second["ic_series"] == first["ic_series"]


@pytest.mark.processes
def test_deepspeed_two_ranks_match_one_process(demo_prepared_dir, tiny_models, tmp_path):
    # Greedy decoding: the forecast of an origin then does not depend on which rank's generator drew it. Two
    # (identical) paths: the quantile bands travel through the gather too.
    greedy = ("--top_k", "1", "--seed", "3", "--sample_count", "2")
    single = run_eval(eval_args(demo_prepared_dir, tiny_models, tmp_path / "one", *greedy))
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_eval(eval_args(demo_prepared_dir, tiny_models, tmp_path / "two", *greedy), processes=2)
    assert double.returncode == 0, (double.stdout + double.stderr)[-3000:]
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["counts"]["ranks"] == 2
    assert {**two["counts"], "ranks": 1} == one["counts"]
    assert two["baselines"] == one["baselines"]
    # Batches differ between the runs (each rank batches only its symbols); allow float rounding, nothing more.
    a, b = finite_numbers(one["model"]), finite_numbers(two["model"])
    assert len(a) == len(b) and a == pytest.approx(b, rel=1e-4, abs=1e-6)
    a, b = finite_numbers(one["calibration"]), finite_numbers(two["calibration"])
    assert len(a) == len(b) > 0 and a == pytest.approx(b, rel=1e-4, abs=1e-6)
    # The probabilistic scores (model and baselines) and the IC's significance come out the same too.
    a, b = finite_numbers(one["probabilistic"]), finite_numbers(two["probabilistic"])
    assert len(a) == len(b) > 0 and a == pytest.approx(b, rel=1e-4, abs=1e-6)
    # So do the arch baselines, each rank fitting its own symbols' origins, and the tests against them.
    assert "garch_t" in two["probabilistic"]["rows"] and two["tests"]["crps"]["mcs"]["included"]
    for section in ("tests", "volatility"):
        strip = {"volatility": lambda v: {**v, "baseline_fits": {**v["baseline_fits"], "seconds": 0}}}.get(
            section, lambda v: v)
        a, b = finite_numbers(strip(one[section])), finite_numbers(strip(two[section]))
        assert len(a) == len(b) > 0 and a == pytest.approx(b, rel=1e-4, abs=1e-6), section
    assert two["model"]["ic"]["significance"]["ic"]["t"] == pytest.approx(
        one["model"]["ic"]["significance"]["ic"]["t"], rel=1e-4)


@pytest.mark.processes
def test_a_stopped_rank_ends_the_evaluation_within_the_timeout_and_is_named(demo_prepared_dir, tiny_models, tmp_path):
    # The same one-line translation as training (ds_kronos.runtime.distributed_failures): rank 0 finishes its
    # origins and waits in the gather of the forecasts for rank 1, which was stopped while forecasting.
    command = launch_command("evaluate.py", eval_args(demo_prepared_dir, tiny_models, tmp_path / "out",
                                                      "--sample_count", "20", "--dist_timeout", "5"))
    returncode, output, elapsed = stall_a_rank(command, when=lambda line: "evaluating split" in line)
    assert returncode != 0
    assert elapsed < 30, elapsed
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert errors and all("rank 1 stopped answering" in line for line in errors), output[-3000:]
    assert "--dist_timeout 5" in errors[0]
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.processes
def test_bad_input_gives_one_line_and_exit_2(demo_prepared_dir, tiny_models, tmp_path, capsys):
    import torch

    from ds_kronos.model import TOKENIZER_PRESETS, KronosTokenizer

    mismatched = tmp_path / "tokenizer_8bit"
    torch.manual_seed(0)
    KronosTokenizer(TOKENIZER_PRESETS["tiny"].replace(s1_bits=8, s2_bits=8)).save_pretrained(mismatched)
    no_test = tmp_path / "no_test"
    shutil.copytree(demo_prepared_dir, no_test)
    manifest = json.loads((no_test / "manifest.json").read_text())
    del manifest["splits"]["test"]
    (no_test / "manifest.json").write_text(json.dumps(manifest))

    tok, pred = tiny_models
    cases = {
        "no such folder": ["--data", str(tmp_path / "missing"), "--tokenizer", str(tok), "--predictor", str(pred)],
        "split 'test' missing": ["--data", str(no_test), "--tokenizer", str(tok), "--predictor", str(pred)],
        "no forecast origin fits": eval_args(demo_prepared_dir, tiny_models, tmp_path / "o", "--pred_len", "400"),
        "tokenizer and predictor do not match": eval_args(demo_prepared_dir, (mismatched, pred), tmp_path / "o"),
        "does not exist": eval_args(demo_prepared_dir, (tmp_path / "nope", pred), tmp_path / "o"),
        "--quantiles must be in (0, 1), got 1.5": eval_args(demo_prepared_dir, tiny_models, tmp_path / "o",
                                                            "--quantiles", "0.1,1.5"),
        "--probabilistic needs at least 2 sampled paths per origin": eval_args(
            demo_prepared_dir, tiny_models, tmp_path / "o", "--probabilistic"),
    }
    for expected, argv in cases.items():
        code, err = run_in_process("evaluate.py", argv, capsys)
        assert code == 2, (expected, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (expected, err)
    assert not (tmp_path / "o").exists()

    # The real script: one stderr line, exit status 2.
    result = run_eval(eval_args(demo_prepared_dir, (mismatched, pred), tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if "tokenizer and predictor do not match" in line]
