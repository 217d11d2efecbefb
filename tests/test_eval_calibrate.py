"""The sampler file (schema, precedence, never executed), the spread factor's fit (it moves an under-dispersed
ensemble to calibration where the truth is known) and launch/calibrate.py: a 2-rank grid search that writes
sampler.json, which launch/evaluate.py then uses by default (and ignores with --sampler_file false)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from ds_kronos.errors import ConfigError
from ds_kronos.evaluation import probabilistic
from ds_kronos.evaluation.calibrate import fit_spread, widened
from ds_kronos.forecast.sampler_file import SAMPLER_FILE, read_sampler_file, resolve_sampler, write_sampler_file
from helpers import run_in_process, run_job


def test_sampler_file_round_trip_and_precedence(tmp_path):
    write_sampler_file(tmp_path / SAMPLER_FILE, 1.3, 1.0, 1.6, {"split": "val"})
    settings = read_sampler_file(tmp_path / SAMPLER_FILE)
    assert (settings.temperature, settings.top_p, settings.spread, settings.calibration) == (1.3, 1.0, 1.6,
                                                                                             {"split": "val"})
    used = resolve_sampler(str(tmp_path), None, None)
    assert (used.temperature, used.top_p, used.spread) == (1.3, 1.0, 1.6) and SAMPLER_FILE in used.sources["spread"]
    explicit = resolve_sampler(str(tmp_path), 0.7, None, spread=1.0)
    assert (explicit.temperature, explicit.top_p, explicit.spread) == (0.7, 1.0, 1.0)
    assert explicit.sources["temperature"] == explicit.sources["spread"] == "command line"
    assert SAMPLER_FILE in explicit.sources["top_p"]
    ignored = resolve_sampler(str(tmp_path), None, None, use_file=False)
    assert (ignored.temperature, ignored.top_p, ignored.spread, ignored.file) == (1.0, 0.9, 1.0, None)
    assert resolve_sampler("tiny", None, None).sources == {"temperature": "default", "top_p": "default",
                                                           "spread": "default"}
    # A version-1 file (written before the spread factor existed) still reads, as the paths sampled: spread 1.
    (tmp_path / SAMPLER_FILE).write_text('{"format": "ds_kronos.sampler", "version": 1, "temperature": 1.2, '
                                         '"top_p": 0.95}')
    old = read_sampler_file(tmp_path / SAMPLER_FILE)
    assert (old.temperature, old.top_p, old.spread) == (1.2, 0.95, 1.0)


@pytest.mark.parametrize("content, message", [
    ('{"temperature": 1.2, "top_p": 0.9}', "not a ds_kronos sampler file"),
    ('[1, 2]', "not a ds_kronos sampler file"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": -1, "top_p": 0.9}', "'temperature' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": 1e9, "top_p": 0.9}', "'temperature' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": 1, "top_p": 1.5}', "'top_p' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": true, "top_p": 0.5}', "'temperature' must be"),
    ('{"format": "ds_kronos.sampler", "version": 3, "temperature": 1, "top_p": 0.5}', "version 3"),
    ('{"format": "ds_kronos.sampler", "version": 2, "temperature": 1, "top_p": 0.5}', "'spread' must be"),
    ('{"format": "ds_kronos.sampler", "version": 2, "temperature": 1, "top_p": 0.5, "spread": 0}', "'spread' must be"),
    ('{"format": "ds_kronos.sampler", "version": 2, "temperature": 1, "top_p": 0.5, "spread": 11}',
     r"'spread' must be a number in \(0, 10\]"),
    ('{"format": "ds_kronos.sampler", "version": 2, "temperature": 1, "top_p": 0.5, "spread": "2"}',
     "'spread' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": NaN, "top_p": 0.5}', "'temperature' must be"),
    ('{"format": ', "not a readable JSON sampler file"),
])
def test_a_sampler_file_that_is_not_ours_or_out_of_range_is_one_line(tmp_path, content, message):
    (tmp_path / SAMPLER_FILE).write_text(content)
    with pytest.raises(ConfigError, match=message) as error:
        resolve_sampler(str(tmp_path), None, None)
    assert "\n" not in str(error.value)


def test_a_pickled_sampler_file_is_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran"),))

    (tmp_path / SAMPLER_FILE).write_bytes(pickle.dumps(Boom()))
    with pytest.raises(ConfigError, match="not a readable JSON sampler file"):
        read_sampler_file(tmp_path / SAMPLER_FILE)
    assert not (tmp_path / "ran").exists()


def test_kronos_forecaster_from_folders_uses_the_sampler_file(tmp_path):
    import torch

    from ds_kronos.forecast import KronosForecaster
    from ds_kronos.model import Kronos, KronosTokenizer

    torch.manual_seed(0)
    KronosTokenizer.from_preset("tiny").save_pretrained(tmp_path / "tok")
    Kronos.from_preset("tiny").save_pretrained(tmp_path / "pred")
    assert KronosForecaster.from_folders(str(tmp_path / "tok"), str(tmp_path / "pred")).sampler.top_p == 0.9
    write_sampler_file(tmp_path / "pred" / SAMPLER_FILE, 1.25, 0.95, 1.7, {})
    forecaster = KronosForecaster.from_folders(str(tmp_path / "tok"), str(tmp_path / "pred"))
    assert (forecaster.sampler.temperature, forecaster.sampler.top_p, forecaster.sampler.spread) == (1.25, 0.95, 1.7)
    assert KronosForecaster.from_folders(str(tmp_path / "tok"), str(tmp_path / "pred"),
                                         sampler_file=False).sampler.temperature == 1.0


def coverage_80(paths: np.ndarray, actual: np.ndarray) -> float:
    band = probabilistic.path_quantiles(paths, [0.1, 0.9])
    return float(((actual >= band[..., 0]) & (actual <= band[..., 1])).mean())


def ensemble(rng: np.random.Generator, n: int, S: int, truth_over_paths: float) -> tuple[np.ndarray, np.ndarray]:
    """A known truth: y ~ N(mu, k^2) with a different mu per origin, and S paths drawn from N(mu, 1): right in the
    mean, and under-dispersed by k (k > 1), calibrated (k = 1) or over-dispersed (k < 1)."""
    mu = rng.normal(size=(n, 1, 2))
    paths = (mu + rng.normal(size=(n, S, 2))).astype(np.float32)
    return paths, mu[:, 0] + truth_over_paths * rng.normal(size=(n, 2))


CALIBRATED_20 = (18.1 - 2.9) / 21
"""What the 10%-90% band of 20 paths drawn from the true distribution covers in expectation (linear interpolation
between order statistics: tests/test_eval_probabilistic.py)."""


def test_the_fitted_spread_calibrates_an_under_dispersed_ensemble():
    # As the demo model's paths: half as wide as they should be (U-shaped PIT, bands too narrow).
    paths, actual = ensemble(np.random.default_rng(5), 4000, 20, 2.0)
    spread = fit_spread(paths, actual)
    # Widening around the paths' own mean must also cover the error of that mean (variance 1/S of the paths'):
    # the minimiser is sqrt((k^2 + 1/S) / (1 + 1/S)) = 1.964 for k = 2, S = 20 (Gaussian algebra).
    assert spread == pytest.approx(math.sqrt((4 + 1 / 20) / (1 + 1 / 20)), abs=0.05)
    fixed = widened(paths, spread)
    np.testing.assert_allclose(fixed.mean(axis=1), paths.mean(axis=1), atol=1e-5)  # the point forecast stays
    assert probabilistic.crps_values(fixed, actual).mean() < 0.95 * probabilistic.crps_values(paths, actual).mean()
    # The 10%-90% band moves from about 0.42 to what 20 paths of the true distribution cover.
    assert coverage_80(paths, actual) < 0.5
    assert coverage_80(fixed, actual) == pytest.approx(CALIBRATED_20, abs=0.015)


@pytest.mark.parametrize("S", [5, 20])
def test_a_calibrated_ensemble_keeps_its_spread_and_an_over_dispersed_one_is_narrowed(S):
    rng = np.random.default_rng(6)
    paths, actual = ensemble(rng, 4000, S, 1.0)
    assert fit_spread(paths, actual) == pytest.approx(1.0, abs=0.04)
    # The fair CRPS (unbiased for the distribution the paths are drawn from) would widen it: widening around the
    # ensemble's own mean makes the paths dependent, and that estimator then credits width they do not have.
    import scoringrules
    from scipy.optimize import minimize_scalar

    fair = minimize_scalar(lambda s: float(np.mean(scoringrules.crps_ensemble(
        actual, widened(paths, s), m_axis=1, estimator="fair", backend="numpy"))), bounds=(0.05, 10), method="bounded",
        options={"xatol": 0.01})
    assert fair.x > {5: 1.4, 20: 1.07}[S]
    wide, actual = ensemble(rng, 4000, 20, 1 / 3)
    spread = fit_spread(wide, actual)
    assert spread == pytest.approx(math.sqrt((1 / 9 + 1 / 20) / (1 + 1 / 20)), abs=0.02)
    assert coverage_80(wide, actual) > 0.95
    assert coverage_80(widened(wide, spread), actual) == pytest.approx(CALIBRATED_20, abs=0.015)


@pytest.mark.processes
def test_calibrate_on_two_ranks_then_evaluate_uses_the_file(demo_prepared_dir, tmp_path):
    import torch

    from ds_kronos.model import Kronos, KronosTokenizer

    torch.manual_seed(0)
    KronosTokenizer.from_preset("tiny").save_pretrained(tmp_path / "tok")
    Kronos.from_preset("tiny").save_pretrained(tmp_path / "pred")
    common = ["--data", str(demo_prepared_dir), "--tokenizer", str(tmp_path / "tok"), "--predictor",
              str(tmp_path / "pred"), "--max_origins_per_symbol", "2", "--sample_count", "4", "--threads", "1"]
    run = run_job("calibrate.py", [*common, "--temperatures", "0.5,2", "--top_ps", "1.0"], processes=2, timeout=240,
                  OMP_NUM_THREADS="1")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    written = json.loads((tmp_path / "pred" / SAMPLER_FILE).read_text())
    calibration = written["calibration"]
    grid = calibration["grid"]
    assert [(g["temperature"], g["top_p"]) for g in grid] == [(0.5, 1.0), (2.0, 1.0)]
    for g in grid:  # each setting at its own fitted spread, which is no worse than the paths as sampled
        assert g["sampled"]["spread"] == 1.0 and 0 < g["widened"]["spread"] <= 10
        assert g["widened"]["crps"] <= g["sampled"]["crps"] + 1e-9
    best = min(grid, key=lambda g: g["widened"]["crps"])
    assert (written["temperature"], written["top_p"], written["spread"]) == (best["temperature"], best["top_p"],
                                                                             best["widened"]["spread"])
    after, before = calibration["after"], calibration["before"]
    assert after["split"] == best["widened"] and (before["temperature"], before["top_p"], before["spread"]) == (
        1.0, 0.9, 1.0)
    for side in (before, after, calibration["random_walk"]):
        check = side["check_split"]
        assert check["crps"] > 0 and [b["nominal"] for b in check["coverage"]] == [pytest.approx(0.8)]
    assert calibration["random_walk"]["split"]["crps"] > 0
    assert "chosen: temperature" in run.stdout and "random walk CRPS" in run.stdout

    def evaluate(out: str, *extra: str):
        return run_job("evaluate.py", [*common, "--out", str(tmp_path / out), *extra], timeout=180,
                       OMP_NUM_THREADS="1")

    used = evaluate("e1")
    assert used.returncode == 0, used.stderr[-3000:]
    report = json.loads((tmp_path / "e1" / "report.json").read_text())
    assert (report["sampler"]["temperature"], report["sampler"]["top_p"], report["sampler"]["spread"]) == (
        best["temperature"], 1.0, written["spread"])
    assert SAMPLER_FILE in report["sampler"]["sources"]["spread"]
    assert report["sampler"]["calibration"]["split"] == "val"
    assert (f"sampler: temperature {best['temperature']:g}, top_p 1, spread {written['spread']:g} (from "
            f"{SAMPLER_FILE}") in used.stdout

    (tmp_path / "pred" / SAMPLER_FILE).write_text('{"format": "ds_kronos.sampler", "version": 1, '
                                                  '"temperature": 0, "top_p": 0.9}')
    bad = evaluate("e2")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "'temperature' must be a number" in bad.stderr and not (tmp_path / "e2").exists()
    ignored = evaluate("e3", "--sampler_file", "false")
    assert ignored.returncode == 0, ignored.stderr[-3000:]
    report = json.loads((tmp_path / "e3" / "report.json").read_text())
    assert report["sampler"]["sources"] == {"temperature": "default", "top_p": "default", "spread": "default"}


@pytest.mark.parametrize("extra, message", [
    (["--sample_count", "1"], "--sample_count must be >= 2, got 1"),
    (["--top_ps", "0.9,1.5"], "--top_ps must be in (0, 1], got 1.5"),
    (["--temperatures", "0"], "--temperatures must be in (0, 100], got 0"),
    (["--quantiles", "0.1,1"], "--quantiles must be in (0, 1), got 1"),
])
def test_calibrate_bad_options_exit_2(tmp_path, capsys, extra, message):
    (tmp_path / "data").mkdir()
    code, err = run_in_process("calibrate.py", ["--data", str(tmp_path / "data"), "--tokenizer", "tiny", "--predictor",
                                                "tiny", "--sampler_out", str(tmp_path / "s.json"), *extra], capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("script", ["evaluate.py", "forecast.py"])
@pytest.mark.parametrize("value, message", [("0", "--spread must be in (0, 10], got 0.0"),
                                            ("11", "--spread must be in (0, 10], got 11.0"),
                                            ("nan", "argument --spread: invalid float value: 'nan'")])
def test_a_spread_option_out_of_range_exits_2(tmp_path, capsys, script, value, message):
    code, err = run_in_process(script, ["--tokenizer", "tiny", "--predictor", "tiny", "--out", str(tmp_path / "out"),
                                        "--spread", value], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()
