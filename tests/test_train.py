"""The DeepSpeed predictor trainer, run for real: 2 CPU ranks through the deepspeed launcher on the demo data.

One short run per ds_configs/zero*.json is made once per session (a session fixture, also used by test_scale.py) and
inspected by several tests, to keep the suite's time down: 2 epochs x 4 optimizer steps, 75 validation samples (38 +
37 over the two ranks).
"""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ds_kronos.deepspeed_json.resolve import warmup_steps
from ds_kronos.model import Kronos
from ds_kronos.train.engine.schedule import onecycle_trajectory, warmup_cosine_trajectory
from helpers import (
    COMET_RUN,
    CONFIGS,
    MONITORED,
    TOTAL_STEPS,
    VAL_SAMPLES,
    run_job,
    single_process_val_losses,
    summary,
)

pytestmark = pytest.mark.processes  # every test here starts processes


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_trains_and_writes_loadable_models(config_runs, name):
    result = summary(config_runs[name])
    assert result["status"] == "finished"
    assert result["steps"] == TOTAL_STEPS and result["world_size"] == 2
    assert result["deepspeed_config"]["train_batch_size"] == 32
    losses = [loss for _, loss in result["history"]["train"]]
    assert len(losses) == TOTAL_STEPS and all(np.isfinite(losses))
    assert [step for step, _ in result["history"]["val"]] == [0, 4, 8]
    assert result["best_val_loss"] == min(loss for _, loss in result["history"]["val"])
    for folder in ("best_model", "final_model"):
        model = Kronos.from_pretrained(config_runs[name] / folder)
        assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    assert (config_runs[name] / "loss_curve.png").stat().st_size > 1000
    assert (config_runs[name] / "checkpoints" / "latest").read_text().strip() == "step00000008"
    # Efficiency (issue 24): from the run's samples/s and the FLOP count per sample; MFU only against a known peak.
    rate = result["samples_per_s"]
    assert result["tokens_per_s"] == pytest.approx(rate * 35, rel=1e-4)  # positions per sample: 36 bars - 1
    assert result["tflops_per_rank"] == pytest.approx(rate * result["flops_per_sample"] / 2 / 1e12, rel=1e-4)
    if name == "zero0":  # --peak_tflops 0.5
        assert result["peak_tflops"] == 0.5
        assert result["mfu"] == pytest.approx(result["tflops_per_rank"] / 0.5, rel=1e-5)  # both rounded to 6 digits
    else:
        assert result["mfu"] is None and result["peak_tflops"] is None


def test_training_moves_the_weights_and_lowers_the_loss(config_runs, tiny_checkpoints):
    result = summary(config_runs["zero2"])
    assert result["final_val_loss"] < result["first_val_loss"]
    before = Kronos.from_pretrained(tiny_checkpoints[1]).state_dict()
    after = Kronos.from_pretrained(config_runs["zero2"] / "final_model").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # Buffers travel unchanged (rotary frequencies stay fp32 even though bf16 engines cast the module).
    bf16 = Kronos.from_pretrained(config_runs["zero2_bf16"] / "final_model").state_dict()
    for key in before:
        if key.endswith("inv_freq"):
            assert torch.equal(before[key], bf16[key])


def test_zero0_and_zero2_give_the_same_losses(config_runs):
    zero0, zero2 = summary(config_runs["zero0"]), summary(config_runs["zero2"])
    np.testing.assert_allclose([v for _, v in zero0["history"]["train"]], [v for _, v in zero2["history"]["train"]],
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose([v for _, v in zero0["history"]["val"]], [v for _, v in zero2["history"]["val"]],
                               rtol=0, atol=1e-4)
    a = Kronos.from_pretrained(config_runs["zero0"] / "final_model").state_dict()
    b = Kronos.from_pretrained(config_runs["zero2"] / "final_model").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)


def test_bf16_run_tracks_fp32(config_runs):
    fp32, bf16 = summary(config_runs["zero2"]), summary(config_runs["zero2_bf16"])
    np.testing.assert_allclose([v for _, v in bf16["history"]["val"]], [v for _, v in fp32["history"]["val"]],
                               atol=0.02)


def test_all_reduced_validation_equals_single_process(config_runs, demo_prepared_dir, tiny_checkpoints):
    """75 samples over 2 ranks (38 + 37): the all-reduced mean must equal one process scoring all 75."""
    first_val = summary(config_runs["zero3"])["history"]["val"][0]
    assert first_val[0] == 0
    per_sample = single_process_val_losses(demo_prepared_dir, tiny_checkpoints, VAL_SAMPLES)
    assert per_sample.shape == (VAL_SAMPLES,)
    assert first_val[1] == pytest.approx(per_sample.double().mean().item(), abs=1e-5)
    # A mean of per-rank means (upstream's reduction) would differ:
    rank_means = (per_sample[0::2].mean() + per_sample[1::2].mean()) / 2
    assert abs(rank_means.item() - per_sample.mean().item()) > 1e-7


def test_learning_rate_trajectories_in_real_runs(config_runs):
    deepspeed_lrs = [lr for _, lr in summary(config_runs["zero2"])["history"]["lr"]]
    np.testing.assert_allclose(deepspeed_lrs, warmup_cosine_trajectory(4e-5, TOTAL_STEPS, warmup_steps(TOTAL_STEPS)),
                               rtol=1e-9)
    onecycle_lrs = [lr for _, lr in summary(config_runs["zero1"])["history"]["lr"]]
    np.testing.assert_allclose(onecycle_lrs, onecycle_trajectory(4e-5, TOTAL_STEPS)[0], rtol=1e-9)


def test_comet_offline_archive_holds_upstream_metric_names(config_runs):
    archives = list((config_runs[COMET_RUN] / "comet").glob("*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        text = "".join(archive.read(name).decode("utf-8", "replace") for name in archive.namelist()
                       if name.endswith((".json", ".jsonl", ".txt")) or "messages" in name)
    for metric in ("train_predictor_loss_batch", "train_S1_loss_each_batch", "train_S2_loss_each_batch",
                   "predictor_learning_rate", "val_predictor_loss_epoch"):
        assert metric in text, metric


def tensorboard_scalars(monitors: Path) -> dict[str, list[tuple[int, float]]]:
    """DeepSpeed's TensorBoard events, read with tensorboard's own reader: tag -> [(global samples, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(monitors / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_scalars(monitors: Path) -> dict[str, list[tuple[int, float]]]:
    """The offline wandb run's history, read from its transaction log (run-<id>.wandb) with wandb's own reader and
    record types: key -> [(wandb step, which DeepSpeed sets to the global samples, value)]."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    (log,) = (monitors / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(log))
    scalars: dict[str, list[tuple[int, float]]] = {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or ".".join(item.nested_key)
                if not key.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                    scalars.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    return scalars


def comet_scalars(monitors: Path) -> dict[str, list[tuple[int, float]]]:
    """DeepSpeed's comet experiment, from the offline archive it wrote, its metric messages parsed with comet_ml's
    own message type: name -> [(step, which DeepSpeed sets to the global samples, value)]."""
    from comet_ml.messages import MetricMessage

    (archive,) = (monitors / "comet").glob("*.zip")
    scalars: dict[str, list[tuple[int, float]]] = {}
    with zipfile.ZipFile(archive) as opened:
        for line in opened.read("messages.json").decode("utf-8").splitlines():
            message = json.loads(line)
            if message["type"] == MetricMessage.type:
                metric = MetricMessage.from_message_dict(message["payload"]).metric
                scalars.setdefault(metric["metricName"], []).append((metric["step"], metric["metricValue"]))
    return scalars


@pytest.mark.parametrize("tool", ["tensorboard", "wandb", "comet"])
def test_deepspeed_monitors_get_the_losses_next_to_deepspeeds_learning_rate(config_runs, tool):
    """zero1's JSON has tensorboard, csv_monitor, wandb (offline) and comet (offline) sections: DeepSpeed's own
    writers, each read back with the tool's own reader (and the CSV files as CSV), hold summary.json's training and
    validation losses on DeepSpeed's axis (global samples), next to DeepSpeed's learning rate."""
    result, monitors = summary(config_runs[MONITORED]), config_runs[MONITORED].parent / f"{MONITORED}_monitors"
    batch = result["deepspeed_config"]["train_batch_size"]
    board = {"tensorboard": tensorboard_scalars, "wandb": wandb_scalars, "comet": comet_scalars}[tool](monitors)
    expected = {"Train/Samples/train_loss": result["history"]["train"], "Validation/Samples/val_loss":
                result["history"]["val"]}
    for tag, history in expected.items():
        assert [step for step, _ in board[tag]] == [step * batch for step, _ in history], tag
        np.testing.assert_allclose([v for _, v in board[tag]], [v for _, v in history], rtol=1e-6)  # float32 in TB
        if tool == "tensorboard":
            with open(monitors / "csv" / f"{tag.replace('/', '_')}.csv") as handle:
                rows = list(csv.reader(handle))
            assert rows[0] == ["step", tag.rsplit("/", 1)[1]]
            assert [(int(step) // batch, float(value)) for step, value in rows[1:]] == [tuple(p) for p in history]
    for part in ("train_s1_loss", "train_s2_loss", "val_S1_loss", "val_S2_loss"):
        assert len(board[f"{'Train' if part.startswith('train') else 'Validation'}/Samples/{part}"]) == \
            len(result["history"]["train" if part.startswith("train") else "val"]), part
    # DeepSpeed's own event, after its scheduler stepped: at step k's samples, the lr step k+1 uses.
    lrs = board["Train/Samples/lr"]
    assert [step for step, _ in lrs] == [k * batch for k in range(1, TOTAL_STEPS + 1)]
    np.testing.assert_allclose([v for _, v in lrs[:-1]], [lr for _, lr in result["history"]["lr"][1:]], rtol=1e-6)


@pytest.mark.parametrize("content,expected", [
    (None, "file not found"),
    ('{"optimizer": {"type": "AdamW", ', "not valid JSON (line 1"),
    ('{"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}',
     "sets train_micro_batch_size_per_gpu=8 but --batch_size is 16"),
])
def test_bad_deepspeed_config_is_one_clear_line(demo_prepared_dir, tmp_path, content, expected):
    path = tmp_path / "ds.json"
    if content is not None:
        path.write_text(content)
    result = run_job("train.py", ["--data", str(demo_prepared_dir), "--deepspeed_config", str(path), "--batch_size",
                                  "16", "--save_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_bad_options_are_listed_together(tmp_path):
    result = run_job("train.py", ["--data", str(tmp_path / "missing"), "--epochs", "0", "--lr", "-1"])
    assert result.returncode == 2
    assert "3 problems" in result.stderr and "--epochs must be >= 1" in result.stderr
    assert "--lr must be > 0" in result.stderr and "no such folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_error_under_the_launcher_is_one_line(demo_prepared_dir, tmp_path):
    """Both ranks hit the same bad input; the user sees it once, and the launcher exits non-zero."""
    path = tmp_path / "ds.json"
    path.write_text('{"optimizer": ')
    result = run_job("train.py", ["--data", str(demo_prepared_dir), "--deepspeed_config", str(path)], processes=2)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "not valid JSON" in errors[0], errors
    assert "Traceback" not in result.stdout + result.stderr
