"""Selection by forecast quality and early stopping through the deepspeed launcher (issue 23 items 1-3).

The forecast scores of the start model are the same on 1 rank (in process), on 2 ranks at ZeRO-2 and on 3 ranks at
ZeRO-3, with an origin count whose chunks divide by neither (ZeRO-3 pads the short ranks' decoding); an early stop
ends every rank at the same step with a checkpoint and both exports, keeps the start as best_model/ when nothing
beats it, and a resumed stopped run trains no further.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from ds_kronos.data import verify_prepared
from ds_kronos.forecast.sampler_file import SAMPLER_FILE, resolve_sampler, write_sampler_file
from ds_kronos.model import Kronos, KronosTokenizer
from ds_kronos.train.validation import forecast_validation
from ds_kronos.train.validation.forecast_validation import CHUNK_ORIGINS, ForecastValidation
from helpers import SEED, deepspeed_train, error_lines, run_job, summary, train_args, two_at_a_time

ORIGINS = 72  # whole dates of up to 8 symbols: 5 chunks of 16 (3 + 2 on 2 ranks, 2 + 2 + 1 on 3)
PATHS = 4


def run_args(prepared, checkpoints, save_dir, *extra: str) -> list[str]:
    return train_args(prepared, checkpoints, save_dir, epochs=None, batch_size=None, n_train_iter=96, n_val_iter=24,
                      eval_every=1, select_by="crps", val_paths=PATHS) + list(extra)


def start_model_crps(prepared_dir, checkpoints, monkeypatch) -> float:
    """The start model's forecast CRPS computed in this process, on one rank."""
    prepared = verify_prepared(str(prepared_dir))
    torch.manual_seed(0)
    tokenizer = KronosTokenizer.from_folder_or_preset(str(checkpoints[0]))
    model = Kronos.from_folder_or_preset(str(checkpoints[1]))
    validation = ForecastValidation(prepared.split("val"), prepared.lookback, prepared.predict, origins=ORIGINS,
                                    paths=PATHS, clip=5.0, seed=SEED, sampler=resolve_sampler(str(checkpoints[1]),
                                                                                              None, None),
                                    max_context=512, pad_forwards=False)
    monkeypatch.setattr(forecast_validation, "all_reduce_sum", lambda tensor: tensor)
    runtime = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    return validation.score(SimpleNamespace(module=model), tokenizer, runtime).crps


@pytest.mark.processes
def test_forecast_scores_do_not_depend_on_the_ranks_or_the_zero_stage(demo_prepared_dir, tiny_checkpoints,
                                                                      tmp_path, monkeypatch):
    layouts = {"zero2_2ranks": (2, "ds_configs/zero2.json", "12"), "zero3_3ranks": (3, "ds_configs/zero3.json", "8")}

    def run(name: str):
        nproc, config, micro = layouts[name]
        return deepspeed_train(run_args(demo_prepared_dir, tiny_checkpoints, tmp_path / name, "--deepspeed_config",
                                        config, "--batch_size", micro, "--max_steps", "2",
                                        "--val_forecast_origins", str(ORIGINS)), processes=nproc, timeout=400)

    outputs = dict(zip(layouts, two_at_a_time(run, layouts)))
    expected = start_model_crps(demo_prepared_dir, tiny_checkpoints, monkeypatch)
    for name in layouts:
        result = summary(tmp_path / name)
        assert result["forecast_validation"]["origins"] == ORIGINS
        assert ORIGINS % CHUNK_ORIGINS and -(-ORIGINS // CHUNK_ORIGINS) % layouts[name][0]  # uneven on purpose
        forecast = result["history"]["forecast"]
        assert [entry[0] for entry in forecast] == [0, 1, 2]
        assert forecast[0][1] == pytest.approx(expected, rel=1e-9, abs=1e-12), name  # the start: exact
        assert result["selection"]["scores"] == [[step, crps] for step, crps, _, _ in forecast]
        # A trained model replaces the start only if it is better on the paired test over the dates as well.
        later = min((1, 2), key=lambda i: forecast[i][1])
        test = result["selection"]["best_trained_test"]
        assert test["dates"] == result["forecast_validation"]["dates"] >= 3, name
        assert result["selection"]["best_trained_step"] == later, name
        best = later if forecast[later][1] < forecast[0][1] and test["passes"] else 0
        assert result["selection"]["best_step"] == best and result["improved_on_start"] == (best > 0)
        assert forecast[0][3] == pytest.approx(1 - forecast[0][1] / result["forecast_validation"]["random_walk_crps"])
        assert "forecasts at step 0: crps" in outputs[name].stdout
        assert "skill" in outputs[name].stdout
        # The strongest econometric baseline on the same origins, fitted once, the same on every layout.
        baselines = result["forecast_validation"]["baselines_crps"]
        label = min(baselines, key=baselines.get)
        assert f"than {label}'s {baselines[label]:.4f}, the strongest baseline" in outputs[name].stdout
    first = summary(tmp_path / next(iter(layouts)))["forecast_validation"]["baselines_crps"]
    assert {"GARCH-t", "EWMA"} <= set(first)
    for name in layouts:
        assert summary(tmp_path / name)["forecast_validation"]["baselines_crps"] == pytest.approx(first, rel=1e-12)


@pytest.mark.processes
def test_early_stop_keeps_the_start_and_a_resume_trains_no_further(demo_prepared_dir, tiny_checkpoints, tmp_path):
    save_dir, start_folder = tmp_path / "stopped", tmp_path / "start"
    # A start folder with a calibrated sampler.json: the forecast validation samples with its settings, and the
    # exports carry them (issue 31 item 3), so evaluate.py scores best_model/ as the selection did.
    shutil.copytree(tiny_checkpoints[1], start_folder)
    write_sampler_file(start_folder / SAMPLER_FILE, 1.0, 0.9, 1.3, {"by": "a test"})
    checkpoints = (tiny_checkpoints[0], start_folder)
    # No evaluation can improve by 1e9: the start stays best_model/, and two stale evaluations stop the run.
    args = run_args(demo_prepared_dir, checkpoints, save_dir, "--deepspeed_config", "ds_configs/zero2.json",
                    "--batch_size", "8", "--max_steps", "6", "--val_forecast_origins", "16", "--patience", "2",
                    "--min_delta", "1e9")
    first = deepspeed_train(args, timeout=300)
    result = summary(save_dir)
    assert result["status"] == "stopped early" and result["steps"] == 2
    assert result["improved_on_start"] is False
    selection = result["selection"]
    assert selection["best_step"] == 0 and selection["best_score"] == selection["start_score"]
    assert selection["stop_reason"].startswith("early stop: crps did not improve")
    assert selection["best_trained_step"] in (1, 2)
    assert result["final_model"] and result["last_checkpoint"] == 2
    assert (save_dir / "checkpoints" / "step00000002").is_dir()
    start = load_file(str(tiny_checkpoints[1] / "model.safetensors"))
    best = load_file(str(save_dir / "best_model" / "model.safetensors"))
    assert start.keys() == best.keys() and all(torch.equal(start[k], best[k]) for k in start)
    final = load_file(str(save_dir / "final_model" / "model.safetensors"))
    assert any(not torch.equal(start[k], final[k]) for k in start)  # it did train: the start won on merit
    lines = first.stdout.splitlines()
    assert sum("no evaluation improved on the start model by crps" in line for line in lines) == 1
    assert sum("early stop: crps did not improve" in line for line in lines) == 1

    assert result["forecast_validation"]["sampler"]["spread"] == 1.3
    assert result["forecast_validation"]["sampler_file_in_exports"] is True
    for export in ("best_model", "final_model"):
        published = resolve_sampler(str(save_dir / export), None, None)
        assert (published.temperature, published.top_p, published.spread) == (1.0, 0.9, 1.3), export
        assert published.calibration["file"] == str(start_folder / SAMPLER_FILE)

    # Issue 31 item 2: a resume that scores another metric (or set-up) is refused, naming both.
    other = run_job("train.py", [a if a != "crps" else "rank_ic" for a in args] + ["--resume"], 2, timeout=300)
    assert other.returncode == 2, other.stdout[-3000:] + other.stderr[-3000:]
    (line,) = error_lines(other)
    assert "the checkpoint's best model was selected by crps" in line and "this run scores rank_ic" in line, line
    assert summary(save_dir)["selection"] == selection

    again = deepspeed_train(args + ["--resume"], timeout=300)
    assert "resumed from step 2" in again.stdout
    assert not any(line.startswith("step 3/") for line in again.stdout.splitlines())
    resumed = summary(save_dir)
    assert resumed["status"] == "stopped early" and resumed["steps"] == 2
    assert resumed["selection"] == selection
