"""The sampler file (schema, precedence, never executed) and launch/calibrate.py: a 2-rank grid search that writes
sampler.json, which launch/evaluate.py then uses by default (and ignores with --sampler_file false)."""

from __future__ import annotations

import json
import pickle

import pytest

from ds_kronos.errors import ConfigError
from ds_kronos.forecast.sampler_file import SAMPLER_FILE, read_sampler_file, resolve_sampler, write_sampler_file
from helpers import run_in_process, run_job


def test_sampler_file_round_trip_and_precedence(tmp_path):
    write_sampler_file(tmp_path / SAMPLER_FILE, 1.3, 1.0, {"split": "val"})
    settings = read_sampler_file(tmp_path / SAMPLER_FILE)
    assert (settings.temperature, settings.top_p, settings.calibration) == (1.3, 1.0, {"split": "val"})
    used = resolve_sampler(str(tmp_path), None, None)
    assert (used.temperature, used.top_p) == (1.3, 1.0) and SAMPLER_FILE in used.sources["top_p"]
    explicit = resolve_sampler(str(tmp_path), 0.7, None)
    assert (explicit.temperature, explicit.top_p) == (0.7, 1.0)
    assert explicit.sources["temperature"] == "command line" and SAMPLER_FILE in explicit.sources["top_p"]
    ignored = resolve_sampler(str(tmp_path), None, None, use_file=False)
    assert (ignored.temperature, ignored.top_p, ignored.file) == (1.0, 0.9, None)
    assert resolve_sampler("tiny", None, None).sources == {"temperature": "default", "top_p": "default"}


@pytest.mark.parametrize("content, message", [
    ('{"temperature": 1.2, "top_p": 0.9}', "not a ds_kronos sampler file"),
    ('[1, 2]', "not a ds_kronos sampler file"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": -1, "top_p": 0.9}', "'temperature' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": 1e9, "top_p": 0.9}', "'temperature' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": 1, "top_p": 1.5}', "'top_p' must be"),
    ('{"format": "ds_kronos.sampler", "version": 1, "temperature": true, "top_p": 0.5}', "'temperature' must be"),
    ('{"format": "ds_kronos.sampler", "version": 2, "temperature": 1, "top_p": 0.5}', "version 2"),
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
    write_sampler_file(tmp_path / "pred" / SAMPLER_FILE, 1.25, 0.95, {})
    forecaster = KronosForecaster.from_folders(str(tmp_path / "tok"), str(tmp_path / "pred"))
    assert (forecaster.sampler.temperature, forecaster.sampler.top_p) == (1.25, 0.95)
    assert KronosForecaster.from_folders(str(tmp_path / "tok"), str(tmp_path / "pred"),
                                         sampler_file=False).sampler.temperature == 1.0


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
    grid = written["calibration"]["grid"]
    assert [(g["temperature"], g["top_p"]) for g in grid] == [(0.5, 1.0), (2.0, 1.0)]
    best = min(grid, key=lambda g: g["crps"])
    assert (written["temperature"], written["top_p"]) == (best["temperature"], best["top_p"])
    after, before = written["calibration"]["after"], written["calibration"]["before"]
    assert after["split"]["crps"] == best["crps"] and (before["temperature"], before["top_p"]) == (1.0, 0.9)
    for side in (before, after):
        check = side["check_split"]
        assert check["crps"] > 0 and [b["nominal"] for b in check["coverage"]] == [pytest.approx(0.8)]
    assert "chosen: temperature" in run.stdout

    def evaluate(out: str, *extra: str):
        return run_job("evaluate.py", [*common, "--out", str(tmp_path / out), *extra], timeout=180,
                       OMP_NUM_THREADS="1")

    used = evaluate("e1")
    assert used.returncode == 0, used.stderr[-3000:]
    report = json.loads((tmp_path / "e1" / "report.json").read_text())
    assert (report["sampler"]["temperature"], report["sampler"]["top_p"]) == (best["temperature"], 1.0)
    assert SAMPLER_FILE in report["sampler"]["sources"]["temperature"]
    assert report["sampler"]["calibration"]["split"] == "val"
    assert f"sampler: temperature {best['temperature']:g}, top_p 1 (from {SAMPLER_FILE}" in used.stdout

    (tmp_path / "pred" / SAMPLER_FILE).write_text('{"format": "ds_kronos.sampler", "version": 1, '
                                                  '"temperature": 0, "top_p": 0.9}')
    bad = evaluate("e2")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "'temperature' must be a number" in bad.stderr and not (tmp_path / "e2").exists()
    ignored = evaluate("e3", "--sampler_file", "false")
    assert ignored.returncode == 0, ignored.stderr[-3000:]
    report = json.loads((tmp_path / "e3" / "report.json").read_text())
    assert report["sampler"]["sources"] == {"temperature": "default", "top_p": "default"}


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
