"""The run control's one stop decision (ds_kronos.train.control.run_control), in-process: each reason to stop gives
one status and says whether the run stops at once (no final validation or export) or ends with its final model; the
early-stop verdict of any rank stops every rank. The launcher runs of each path are in test_preemption.py,
test_rollback.py, test_selection_runs.py and test_sweep_runs.py."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ds_kronos.train.config import TrainConfig
from ds_kronos.train.control.preemption import StopRequests
from ds_kronos.train.control.run_control import ANOTHER_RANKS_VERDICT, RunControl
from ds_kronos.train.control.stop_file import STOP_NAME, StopFile
from ds_kronos.train.observe.status import FINISHED, STOPPED_BY_REQUEST, STOPPED_BY_STOP_FILE, STOPPED_EARLY
from ds_kronos.train.position import Position


def control(tmp_path, exit_after_steps: int = 0) -> RunControl:
    runtime = SimpleNamespace(device=torch.device("cpu"), is_main=True, world_size=1)
    context = SimpleNamespace(config=TrainConfig(log_every=2), runtime=runtime, total_steps=10,
                              ds_view=SimpleNamespace(fp16=False), batch=SimpleNamespace(grad_accum=1),
                              data=SimpleNamespace(micro_per_epoch=5), engine=SimpleNamespace(lr_scheduler=None))
    return RunControl(context, StopRequests(["none"], exit_after_steps), StopFile(tmp_path, is_main=True))


def test_a_stop_request_stops_at_once_and_the_other_reasons_end_with_the_final_model(tmp_path):
    requested = control(tmp_path, exit_after_steps=3)
    assert requested.agree(Position(step=2)) is None and requested.after_step(Position(step=2)) is None
    stop = requested.agree(Position(step=3))
    assert stop.status == STOPPED_BY_REQUEST and stop.at_once
    assert requested.after_step(Position(step=3)) == stop  # the same decision when the step is done

    plain = control(tmp_path)
    position = Position(step=4)
    assert plain.after_step(position) is None and plain.ending(position).status == FINISHED
    (tmp_path / STOP_NAME).touch()
    plain.agree_on_log(plain.log_flags(), position.step)  # what the log line's all-reduce carries (one rank)
    stop = plain.after_step(position)
    assert stop.status == STOPPED_BY_STOP_FILE and not stop.at_once and not plain.final_validation()

    position.selection.stop_reason = "early stop: crps did not improve"
    stop = plain.after_step(position)  # an early stop names itself, also after a stop file
    assert stop.status == STOPPED_EARLY and not stop.at_once
    assert stop.line == "early stop: crps did not improve: stopped at step 4 of 10"


def test_another_ranks_early_stop_stops_this_rank_too(tmp_path):
    run = control(tmp_path)
    position = Position(step=6)
    run.agree_on_early_stop(position, agreed=[0.0])
    assert position.selection.stop_reason is None and run.after_step(position) is None
    run.agree_on_early_stop(position, agreed=[1.0])  # the sum over the ranks: one of them stops
    assert position.selection.stop_reason == ANOTHER_RANKS_VERDICT
    assert run.after_step(position).status == STOPPED_EARLY
