"""Roll-back on a diverged loss (issue 24 items 6 and 7): ``--on_divergence rollback``, ``--skip_steps``.

The launcher test poisons one micro-batch with NaN (tests/nan_batch_train.py wraps launch/train.py) and compares the
rolled-back run with a run given the same ``--skip_steps`` from the start; the bad options are checked in process
(they end before any process group exists). The roll-back that runs out of ``--max_rollbacks`` and the one without a
checkpoint yet are in tests/test_reliability.py's divergence test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ds_kronos.atomic import replace_folder
from ds_kronos.errors import ConfigError
from ds_kronos.train.build import rollback_enabled
from ds_kronos.train.checkpoint.best_model import keep_best_model, restore_best_model
from ds_kronos.train.checkpoint.safe_load import weights_only_loading
from ds_kronos.train.config import TrainConfig
from ds_kronos.train.control.rollback import ScaledSchedule, set_lr_factor
from ds_kronos.train.control.skipped_steps import SkippedSteps, micro_batch_spans, parse_step_ranges
from ds_kronos.train.position import Position
from ds_kronos.train.validation.selection import SelectionState
from helpers import (
    REPO,
    model_weights,
    run_in_process,
    run_job,
    stopped_after,
    summary,
    train_args,
    two_at_a_time,
)

NAN_SCRIPT = REPO / "tests" / "nan_batch_train.py"


@pytest.mark.processes
def test_a_rollback_passes_over_the_nan_batch_and_ends_as_a_run_that_skipped_it(demo_prepared_dir, tiny_checkpoints,
                                                                                tmp_path):
    # 2 epochs x 4 steps of 2 ranks x 16 samples, checkpoints at steps 4 and 8, a divergence check every step
    # (--log_every 1). Rank 1's 7th micro-batch is NaN: seen at step 7, the last good check is step 6, so the run
    # goes back to step 4, trains 5 and 6 again and skips 7 (each rank's micro-batch 2 of epoch 2).
    def args(save_dir: Path, *extra: str) -> list[str]:
        return train_args(demo_prepared_dir, tiny_checkpoints, save_dir, deepspeed_config="ds_configs/zero2.json",
                          save_every=4) + list(extra)

    rolled, skipped = tmp_path / "rolled", tmp_path / "skipped"
    jobs = [(str(NAN_SCRIPT), args(rolled, "--on_divergence", "rollback", "--nan_micro_batch", "7", "--nan_rank", "1")),
            ("train.py", args(skipped, "--skip_steps", "7"))]
    results = two_at_a_time(lambda job: run_job(job[0], job[1], processes=2), jobs)
    for result in results:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Issue 31 item 1, both ways best_model/ could outlive its selection state, run side by side:
    # - a roll-back that undoes an export: 1 rank, 8 steps, evaluations every 2, checkpoints every 4; NaN at step 7,
    #   back to step 4, and an lr x1e-6 makes the re-trained step 6 differ from the undone one (its export);
    # - a resume from a checkpoint older than the last export (a run killed after step 8's export, before its
    #   checkpoint): the skipped run's copy without step 8's tag, resumed with --max_steps 4.
    undone, resumed = tmp_path / "undone", stopped_after(skipped, tmp_path / "resumed", step=4)
    one_rank = train_args(demo_prepared_dir, tiny_checkpoints, undone, deepspeed_config="ds_configs/zero2.json",
                          save_every=4, eval_every=2, epochs=1, on_divergence="rollback", rollback_lr_factor=1e-6)
    jobs = [(str(NAN_SCRIPT), one_rank + ["--nan_micro_batch", "7", "--nan_rank", "0"], 1),
            ("train.py", args(resumed, "--skip_steps", "7", "--resume", "--max_steps", "4"), 2)]
    more = two_at_a_time(lambda job: run_job(job[0], job[1], processes=job[2]), jobs)
    for result in more:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary(undone)["rollbacks"][0]["restored_step"] == 4 and summary(skipped)["selection"]["best_step"] == 8
    assert summary(undone)["selection"]["best_step"] == summary(resumed)["selection"]["best_step"] == 4
    for run in (undone, resumed, rolled, skipped):  # best_model/ holds the weights of the step summary.json names
        step = summary(run)["selection"]["best_step"]
        with weights_only_loading():
            module = torch.load(run / "checkpoints" / f"step{step:08d}" / "mp_rank_00_model_states.pt",
                                weights_only=True)["module"]
        best = model_weights(run / "best_model")
        assert set(best) <= set(module) and all(torch.equal(best[k], module[k]) for k in best), run.name
    lines = [line for line in results[0].stdout.splitlines() if line.startswith("roll-back ")]
    assert lines == ["roll-back 1 of at most 3: divergence seen at step 7; restored step00000004; steps 7-7 will be "
                     "skipped (micro-batches 2-2 of epoch 2)"], results[0].stdout[-3000:]
    assert any(line.startswith("step 7/8") and "loss nan" in line for line in results[0].stdout.splitlines())
    a, b = summary(rolled), summary(skipped)
    assert a["status"] == b["status"] == "finished" and a["steps"] == b["steps"] == 8
    (record,) = a["rollbacks"]
    assert {k: v for k, v in record.items() if k != "reason"} == {
        "detected_at_step": 7, "restored_step": 4, "skipped_steps": [7, 7],
        "skipped_micro_batches": [{"epoch": 2, "micro_batches": [2, 2]}], "lr_factor": 1.0}
    assert record["reason"].startswith("training diverged at step 7: loss nan")
    assert a["skipped_steps"] == b["skipped_steps"] == [[7, 7]] and b["rollbacks"] == []
    assert a["train_samples"] == b["train_samples"] == 7 * 32
    # The same steps were trained with the same losses, and the weights are bit-equal.
    assert a["history"] == b["history"]
    assert [step for step, _ in a["history"]["train"]] == [1, 2, 3, 4, 5, 6, 8]
    wa, wb = model_weights(rolled / "final_model"), model_weights(skipped / "final_model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # The evaluations of the undone steps are rewritten, and the last checkpoint carries the roll-back (a resumed
    # run keeps skipping its steps).
    lines = (rolled / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 4, 8]
    with weights_only_loading():
        state = torch.load(rolled / "checkpoints" / "step00000008" / "mp_rank_00_model_states.pt", weights_only=True)
    assert state["rollbacks"] == a["rollbacks"]


def test_each_checkpoint_keeps_its_best_model_and_restoring_the_checkpoint_puts_it_back(tmp_path):
    def export(text: str) -> None:  # as ds_kronos.model.published.write_folder: a new folder swapped in
        staging = tmp_path / ".best_model.tmp"
        (staging / "adapter").mkdir(parents=True)
        (staging / "model.safetensors").write_text(text)
        (staging / "adapter" / "adapter_model.safetensors").write_text(text)
        replace_folder(staging, tmp_path / "best_model")

    def best() -> str:
        return (tmp_path / "best_model" / "model.safetensors").read_text()

    tag = tmp_path / "checkpoints" / "step00000004"
    tag.mkdir(parents=True)
    keep_best_model(tmp_path, SelectionState(best_step=4), tag)  # no best_model/ yet: nothing kept
    assert not (tag / "best_model").exists()
    export("step 4")
    keep_best_model(tmp_path, SelectionState(), tag)  # nothing selected yet: the folder is another run's
    assert not (tag / "best_model").exists()
    keep_best_model(tmp_path, SelectionState(best_step=4), tag)
    kept = tag / "best_model" / "model.safetensors"
    assert kept.stat().st_ino == (tmp_path / "best_model" / "model.safetensors").stat().st_ino  # a link, no copy
    export("step 6")  # an export the roll-back or the resume undoes
    assert kept.read_text() == "step 4" and best() == "step 6"
    assert restore_best_model(tmp_path, tag, SelectionState(best_step=4)) is None
    assert best() == "step 4" and (tmp_path / "best_model" / "adapter" / "adapter_model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or retired copy left
    # A tag written before anything was selected: an export from after it is removed; one from an older ds_kronos
    # (no best_model/ kept) leaves the folder as it is, and says so.
    older = tmp_path / "checkpoints" / "step00000002"
    older.mkdir()
    assert "may not be step 2's export" in restore_best_model(tmp_path, older, SelectionState(best_step=2))
    assert best() == "step 4"
    assert "removed best_model/" in restore_best_model(tmp_path, older, SelectionState())
    assert not (tmp_path / "best_model").exists()


def test_skipped_steps_move_the_data_position_and_the_schedule():
    class Scheduler:
        steps = 0

        def step(self):
            self.steps += 1

    class Engine:
        lr_scheduler = Scheduler()

    # 4 steps per epoch of 2 accumulated micro-batches each.
    skips = SkippedSteps(parse_step_ranges(["3-5", "9"]), grad_accum=2, micro_per_epoch=8, engine=Engine(),
                         is_main=False)
    position = Position(step=2, epoch=0, micro_in_epoch=4)
    assert skips.due(position)
    position.micro_in_epoch = 5  # mid-step: never skipped there
    assert not skips.due(position)
    position.micro_in_epoch = 4
    passed_over = []
    skips.move_past(position, total_steps=12, progress=type("Progress", (), {"passed_over": passed_over.append})())
    assert (position.step, position.epoch, position.micro_in_epoch) == (5, 1, 2) and Engine.lr_scheduler.steps == 3
    assert passed_over == [3]  # not counted in the logged speed
    position = Position(step=8, epoch=1, micro_in_epoch=8)  # the end of epoch 2: step 9 opens epoch 3
    skips.move_past(position, total_steps=9)
    assert (position.step, position.epoch, position.micro_in_epoch) == (9, 2, 2)
    assert micro_batch_spans(3, 5, steps_per_epoch=4, grad_accum=2) == [
        {"epoch": 1, "micro_batches": [4, 7]}, {"epoch": 2, "micro_batches": [0, 1]}]
    assert parse_step_ranges(["7", "5-6", "20-21", "21-22"]) == [(5, 7), (20, 22)]


def test_the_lr_factor_scales_the_schedule_from_the_roll_back_on():
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    def engine():
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = WarmupCosineLR(optimizer, total_num_steps=20, warmup_num_steps=3, warmup_type="linear")
        return type("Engine", (), {"lr_scheduler": scheduler, "optimizer": optimizer})()

    def lr(e) -> float:
        return e.optimizer.param_groups[0]["lr"]

    plain, rolled = engine(), engine()
    for _ in range(3):
        plain.lr_scheduler.step()
        rolled.lr_scheduler.step()
    set_lr_factor(rolled, 0.5, loaded=1.0)  # the first roll-back: the current lr too
    assert isinstance(rolled.lr_scheduler, ScaledSchedule) and lr(rolled) == 0.5 * lr(plain)
    for _ in range(5):
        plain.lr_scheduler.step()
        rolled.lr_scheduler.step()
        assert lr(rolled) == 0.5 * lr(plain) and lr(plain) > 0
    # A resumed run: the checkpoint holds the schedule's own state and the scaled lr, the position the factor.
    resumed = engine()
    resumed.lr_scheduler.load_state_dict(rolled.lr_scheduler.state_dict())
    resumed.optimizer.param_groups[0]["lr"] = lr(rolled)
    set_lr_factor(resumed, 0.5, loaded=0.5)
    set_lr_factor(rolled, 0.25, loaded=0.5)  # a second roll-back, to a checkpoint written after the first
    for e in (plain, rolled, resumed):
        e.lr_scheduler.step()
    assert lr(rolled) == 0.25 * lr(plain) and lr(resumed) == 0.5 * lr(plain)


def test_a_run_whose_first_checkpoint_comes_too_late_is_refused_once_the_data_sized_its_epochs():
    # --max_steps 3 with a checkpoint per epoch: the options alone cannot tell (the epoch's length comes from the
    # data); the run's set-up can, before the model is built.
    config = TrainConfig(on_divergence="rollback", max_steps=3)
    with pytest.raises(ConfigError, match=r"no checkpoint would be written before the run's last step \(step 3\), as "
                                          r"checkpoints come at the end of each epoch"):
        rollback_enabled(config, steps_per_epoch=4, resuming=False)
    assert rollback_enabled(config, steps_per_epoch=2, resuming=False)  # a checkpoint at step 2
    config.on_divergence = "stop"
    assert not rollback_enabled(config, steps_per_epoch=4, resuming=False)


@pytest.mark.parametrize("extra, message", [
    (["--on_divergence", "sometimes"], "argument --on_divergence: invalid choice: 'sometimes'"),
    (["--on_divergence", "rollback", "--max_rollbacks", "0"], "--max_rollbacks 0 would never roll back"),
    (["--on_divergence", "rollback", "--rollback_lr_factor", "0"], "--rollback_lr_factor must be in (0, 1], got 0"),
    (["--on_divergence", "rollback", "--rollback_lr_factor", "1.5"], "--rollback_lr_factor must be in (0, 1], got 1.5"),
    (["--rollback_lr_factor", "0.5"], "--rollback_lr_factor 0.5 applies to roll-backs: add --on_divergence rollback"),
    (["--on_divergence", "rollback", "--save_every", "20", "--max_steps", "20"],
     "--on_divergence rollback: no checkpoint would be written before the run's last step (step 20), as "
     "checkpoints come every 20 steps (--save_every)"),
    (["--on_divergence", "rollback", "--epochs", "1"],
     "checkpoints come at the end of each epoch (--save_every 0), so there would be nothing to roll back to"),
    (["--skip_steps", "9-3"], "--skip_steps: '9-3' is not a step or a range of steps"),
    (["--skip_steps", "0"], "--skip_steps: '0' is not a step or a range of steps"),
    (["--skip_steps", "seven"], "--skip_steps: 'seven' is not a step or a range of steps"),
])
def test_bad_divergence_options_exit_2_before_any_process_group(extra, message, demo_prepared_dir, tmp_path, capsys):
    code, err = run_in_process("train.py", ["--data", str(demo_prepared_dir), "--save_dir", str(tmp_path / "run"),
                                            *extra], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 or "usage:" in err  # argparse's own error comes with its usage line
    assert not (tmp_path / "run").exists()
