"""The training jobs: data -> (frozen tokenizer) -> DeepSpeed engine -> validation -> outputs.

One trainer for both stages; the task (ds_kronos.train.tasks) decides the model and loss (how to run it: the
docstrings of launch/train.py and launch/train_tokenizer.py). Outputs in ``save_dir``: ``best_model/`` (best
evaluation by the selection metric), ``final_model/`` (last step), ``initial_model/`` (a preset's start), all in
the published format from the fp32 masters; ``checkpoints/`` (for ``--resume``), ``summary.json``,
``metrics.jsonl``, ``loss_curve.png``; metrics also go to comet and DeepSpeed's monitors (train/metrics.py).

The loop (:meth:`Trainer.run`): set-up (train/build.py), then per optimizer step :func:`train_micro_step` over the
accumulation's micro-batches and :meth:`Trainer._after_step` (log, divergence check, stop file, stop request,
validation, checkpoint at their intervals), then the final validation, checkpoint and exports. Skipped steps are
passed over (train/skipped_steps.py); a divergence stops the run or rolls it back (train/rollback.py).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ds_kronos.atomic import recover_folders
from ds_kronos.console import say
from ds_kronos.deepspeed_json.resolve import load_ds_config
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.forecast.sampler_file import selection_sampler_writer
from ds_kronos.memory_usage import peak_rss_bytes
from ds_kronos.model.published import is_model_folder
from ds_kronos.runtime import (
    Runtime,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    distributed_failures,
    init_runtime,
    rank_seed,
    seed_everything,
)
from ds_kronos.train import metrics_log, reporting
from ds_kronos.train.best_model import keep_best_model
from ds_kronos.train.build import build_data, build_engine, build_forecast_validation, build_task
from ds_kronos.train.config import CommonTrainConfig
from ds_kronos.train.divergence import CHECK_EVERY, Diverged, DivergenceGuard
from ds_kronos.train.export import export_fp32_state_dict
from ds_kronos.train.metrics import RunMetrics
from ds_kronos.train.monitors import check_monitors
from ds_kronos.train.nvme import prepare_swap_folder, remove_swap_files
from ds_kronos.train.position import Position
from ds_kronos.train.preemption import StopRequests, stop_if_preempted
from ds_kronos.train.reporting import FINISHED, STOPPED_EARLY, Progress
from ds_kronos.train.resume import ResumeSource, find_resume_source, resume_position
from ds_kronos.train.rollback import Rollbacks
from ds_kronos.train.save_dir_lock import hold_save_dir, release_save_dir
from ds_kronos.train.selection import scoring_setup
from ds_kronos.train.skipped_steps import SkippedSteps
from ds_kronos.train.step import train_micro_step
from ds_kronos.train.stop_file import StopFile
from ds_kronos.train.training_state import remove_leftovers, run_layout, save_training_state
from ds_kronos.train.validation import ValidationResult, validate


class Trainer:
    """Runs one training job (the task decides which model and loss) on a DeepSpeed engine."""

    def __init__(self, config: CommonTrainConfig, stops: StopRequests | None = None):
        self.started = time.perf_counter()
        self.stops = stops or StopRequests(config.save_on_signal, config.exit_after_steps)  # listens from here on
        self.config = config
        self.ds_json = load_ds_config(config.deepspeed_config)  # fail fast, before processes wait on each other
        check_monitors(self.ds_json, config.deepspeed_config, config.comet)
        self.runtime: Runtime = init_runtime(config.threads, config.dist_timeout)
        self.save_dir_lock = hold_save_dir(Path(config.save_dir), self.runtime)  # before anything touches save_dir
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        seed_everything(config.seed)  # identical preset init on every rank
        self.save_dir, self.checkpoint_dir = Path(config.save_dir), Path(config.save_dir) / "checkpoints"
        self.stop_file = StopFile(self.save_dir, self.runtime.is_main)
        if self.runtime.is_main:
            for note in remove_leftovers(self.checkpoint_dir) + recover_folders(self.save_dir, is_model_folder):
                say(f"start-up clean-up: {note}")
        data = build_data(config, self.runtime, self.ds_json)
        self.data, self.batch, self.ds_config, self.total_steps = data, data.batch, data.ds_config, data.total_steps
        self.ds_view = DeepSpeedView.of(self.ds_config)
        self.layout = run_layout(self.batch, self.ds_config, config.trained())  # recorded in each checkpoint
        self.swap_dir, self.removes_swap_dir = prepare_swap_folder(self.ds_config, config.nvme_dir, config.save_dir,
                                                                   self.runtime)
        self.resume_source: ResumeSource | None = (
            find_resume_source(self.checkpoint_dir, self.batch, self.runtime, say, self.ds_config, config.trained())
            if config.resume else None)
        self.rollbacks = Rollbacks(self)  # --on_divergence (refuses a run that could never roll back)
        self.task = build_task(config, self.runtime, self.ds_config)
        self.model = self.task.model
        self.model_peak_rss = peak_rss_bytes()  # building (and loading) the model, before DeepSpeed's engine
        self.selection = config.selection()
        self.forecasts = build_forecast_validation(config, data, self.task, self.ds_config)
        # Exports carry the sampler settings their forecasts were scored with (None: no forecast validation).
        self.export_extra = None if self.forecasts is None else selection_sampler_writer(self.forecasts.sampler)
        # The model is built (identically on every rank); from here each rank draws its own random numbers.
        seed_everything(rank_seed(config.seed, self.runtime.rank))
        built = build_engine(config, self.task, self.ds_config, self.total_steps, resuming=bool(self.resume_source),
                             universal=bool(self.resume_source and self.resume_source.universal))
        self.engine, self.scheduler, self.frozen_fp32 = built.engine, built.scheduler, built.frozen_fp32
        self.compile_backend, self.grad_reduction = built.compile_backend, built.grad_reduction
        self.build_peak_rss = peak_rss_bytes()  # building, loading and partitioning the model: reported at the end
        self.skips = SkippedSteps.of(self)  # --skip_steps, and the steps of roll-backs
        self.position, self.metrics = Position(), RunMetrics(self.task.names)  # metrics: no sinks until run()
        self.guard = DivergenceGuard(fp16=self.ds_view.fp16, device=self.runtime.device)
        self.progress: Progress | None = None
        self.lr_used = float("nan")  # the lr of the last optimizer step, for the divergence message
        self.running = torch.zeros(len(self.task.names.labels), device=self.runtime.device)
        self.running_count = 0  # micro-batches summed in ``running`` since the last log line
        self.checkpointed_step = -1
        self.timed_since: float | None = None  # training time is counted from here (None: not training now)

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        c, rt = self.config, self.runtime
        if self.resume_source:
            self.position = resume_position(self.engine, rt, self.checkpoint_dir, self.resume_source, self.batch,
                                            c.seed, self.save_dir)
            self.checkpointed_step = self.position.step
        note = self.selection.adopt(self.position.selection, scoring_setup(  # a resume must score as it was scored
            self.selection.metric, len(self.data.val_set), None if self.forecasts is None else self.forecasts.setup()),
            self.position.history.val)
        if rt.is_main:
            if note:
                say(note)
            reporting.banner(self)
            metrics_log.restart(self.save_dir, self.position, self.selection.metric)
        self.metrics = RunMetrics.of(self)
        try:
            if self.task.random_init and self.position.step == 0 and not self.resume_source:
                # A preset starts from random weights: keep them, to compare the run with its starting point.
                self._export("initial_model")
            if due := self.position.take_due_validation(c.eval_at_start):
                self._validate(due)
            status = self.rollbacks.run(self._train)  # the loop, again after each roll-back
        except Diverged as exc:
            self._finish(f"failed: {exc}")
            raise
        summary = self._finish(status)
        self.metrics.end()
        return summary

    # -------------------------------------------------------------------------------------------- training
    def _train(self) -> str:
        """The epoch loop; returns the run's status (finished, stopped early, stopped on a request or a signal)."""
        pos, batch = self.position, self.batch
        self.progress = Progress.of(self)
        self.engine.train()
        self.timed_since = time.perf_counter()
        while pos.step < self.total_steps and not (pos.selection.stop_reason or self.stop_file.requested):
            self.skips.move_past(pos, self.total_steps, self.progress)
            if pos.micro_in_epoch >= self.data.micro_per_epoch:
                pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0
            self.data.train_sampler.set_epoch(pos.epoch)
            self.data.train_sampler.set_start_batch(pos.micro_in_epoch)
            for x, stamp in self.data.train_loader:
                if self._epoch_over() or self.skips.due(pos):
                    break
                losses, lr_used = train_micro_step(self.engine, self.task, x, stamp, self.grad_reduction)
                self._record_micro_step(losses)
                if pos.micro_in_epoch % batch.grad_accum:
                    continue
                pos.step += 1
                pos.samples += batch.global_batch
                self._after_step(lr_used)
                if self.stops.reason:  # a preemption signal or --exit_after_steps: save this step and stop
                    self._stop_timing()
                    self._checkpoint()
                    if self.runtime.is_main:
                        say(self.stops.closing_line(pos.step))
                    return self.stops.status
                if pos.selection.stop_reason or self.stop_file.requested:
                    break
            if pos.selection.stop_reason or self.stop_file.requested:
                break
            if not self.skips.due(pos):  # the loader is exhausted either way
                pos.micro_in_epoch = max(pos.micro_in_epoch, self.data.micro_per_epoch)
        self._stop_timing()
        self._check_divergence()
        if not self.stop_file.requested and (not pos.history.val or pos.history.val[-1][0] != pos.step):
            self._validate("final")
        self._checkpoint()
        self._export("final_model")
        if pos.selection.stop_reason and self.runtime.is_main:
            say(f"{pos.selection.stop_reason}: stopped at step {pos.step} of {self.total_steps}")
        return STOPPED_EARLY if pos.selection.stop_reason else self.stop_file.status or FINISHED

    def _epoch_over(self) -> bool:
        return self.position.micro_in_epoch >= self.data.micro_per_epoch or self.position.step >= self.total_steps

    def _record_micro_step(self, losses: torch.Tensor) -> None:
        """Accumulate the logged losses and the divergence guard's sums on the device (no host sync)."""
        self.guard.add(losses[0])
        self.running += losses
        self.running_count += 1
        self.position.micro_in_epoch += 1

    def _after_step(self, lr_used: float) -> None:
        c, pos = self.config, self.position
        self.lr_used = lr_used
        end_of_epoch = self._epoch_over()
        if pos.step % c.log_every == 0 or pos.step == self.total_steps:
            self._log(lr_used)
        if pos.step % min(c.log_every, CHECK_EVERY) == 0:
            self._check_divergence()
        due = "end of epoch" if end_of_epoch else "periodic" if c.eval_every and pos.step % c.eval_every == 0 else None
        if self.stops.poll(pos.step, self.total_steps, self.runtime):  # collective; a stop saves without validating
            pos.due_validation = due
            return
        if due:
            self._stop_timing()
            self._check_divergence()
            self._validate(due)
            self.timed_since = time.perf_counter()
            if self.stops.poll(pos.step, self.total_steps, self.runtime):  # a signal during the validation
                return
        if (c.save_every and pos.step % c.save_every == 0) or (end_of_epoch and not c.save_every):
            self._checkpoint()
            self.stops.poll(pos.step, self.total_steps, self.runtime)  # during the save: _train stops, saved already

    def _stop_timing(self) -> None:
        """Add the time since ``timed_since`` to the training time (validation and exports are not in it)."""
        if self.timed_since is not None:
            self.position.train_seconds += time.perf_counter() - self.timed_since
            self.timed_since = None

    def _log(self, lr_used: float) -> None:
        rt, pos, names = self.runtime, self.position, self.task.names
        # The global batch's mean (every rank's share), so the logged loss does not depend on how the batch is split
        # across ranks; a host sync, at log intervals only. The stop file's flag rides along.
        totals = self.stop_file.agree(all_reduce_sum(self.stop_file.with_flag(self.running)).tolist(), pos.step)
        mean = [total / (self.running_count * rt.world_size) for total in totals]
        self.running.zero_()
        self.running_count = 0
        pos.history.train.append((pos.step, mean[0]))
        pos.history.lr.append((pos.step, lr_used))
        if rt.is_main:
            say(self.progress.line(pos.step, pos.epoch, dict(zip(names.labels, mean)), lr_used))
            self.metrics.train(pos.step, pos.samples, mean, lr_used)

    def _check_divergence(self) -> None:
        """Every rank reaches the same verdict from the all-reduced losses since the last check (a host sync)."""
        self.guard.check_all_ranks(self.position.step, self.lr_used, int(getattr(self.engine, "skipped_steps", 0)))

    # ----------------------------------------------------------------------------------- validate and export
    def _validate(self, label: str) -> ValidationResult:
        """Validate (collective): the token loss and, when asked, the forecasts; keep the best candidate by the
        selection metric (ds_kronos.train.selection); decide on an early stop; report."""
        result = validate(self.engine, self.task, self.data.val_loader, self.runtime, self.config.seed)
        pos = self.position
        pos.last_val = result.loss
        pos.first_val = result.loss if pos.first_val is None else pos.first_val
        pos.best_val = min(pos.best_val, result.loss)
        pos.history.val.append((pos.step, result.loss))
        forecast = None
        if self.forecasts is not None:
            forecast = self.forecasts.score(self.engine, self.task.tokenizer, self.runtime)
            pos.history.forecast.append((pos.step, forecast.crps, forecast.rank_ic, forecast.skill))
        metric = self.selection.metric
        improved = self.selection.consider(pos.selection, pos.step, *(
            (result.loss, None) if metric == "loss" else (forecast.value(metric), forecast.daily[metric])))
        # Every rank holds the same reduced scores, so the same verdict; one reduction guarantees that every rank
        # stops at the same step.
        if all_reduce_max(int(pos.selection.stop_reason is not None), self.runtime.device) and \
                not pos.selection.stop_reason:
            pos.selection.stop_reason = "early stop (another rank's verdict)"
        if improved:
            self._export("best_model")
        if self.runtime.is_main:
            reporting.validation_line(self, label, result, improved, forecast)
            self.metrics.validation(pos.step, pos.epoch, pos.samples, result, forecast)
        return result

    def _export(self, folder: str) -> None:
        """The fp32 master weights into ``save_dir/folder`` in the published format. Collective."""
        state = export_fp32_state_dict(self.engine, self.frozen_fp32, keep=self.runtime.is_main)
        if self.runtime.is_main:
            self.task.publish(self.save_dir / folder, state, self.export_extra)

    def _checkpoint(self) -> None:
        if self.checkpointed_step == self.position.step:
            return
        self._check_divergence()  # never save a diverged state over the last good one
        save_training_state(self.engine, self.runtime, self.checkpoint_dir, self.position.step,
                            self.position.to_client_state(), self.config.keep_last, self.layout,
                            partial(keep_best_model, self.save_dir, self.position.selection))
        self.checkpointed_step = self.position.step

    # ------------------------------------------------------------------------------------------------- end
    def remove_swap_files(self) -> None:
        """This rank's NVMe swap files (no collective: a failing run cleans up too)."""
        if self.swap_dir is not None:
            remove_swap_files(self.swap_dir, self.runtime.rank, remove_dir=self.removes_swap_dir)

    def _finish(self, status: str) -> dict[str, Any]:
        """summary.json and the loss curve (rank 0); collective (the memory report and a barrier)."""
        summary = reporting.summary(self, status)
        if self.runtime.is_main:
            reporting.write_outputs(self, summary)
        barrier()
        return summary


def run_training(config: CommonTrainConfig) -> dict[str, Any]:
    stops = StopRequests(config.save_on_signal, config.exit_after_steps)  # listens from here on
    with distributed_failures(config.dist_timeout, lambda: stops.received):
        trainer = Trainer(config, stops)
        try:
            summary = trainer.run()
            trainer.runtime.close()  # every rank leaves together: one leaving early can abort another's gloo exit
            return stop_if_preempted(summary)
        finally:
            trainer.remove_swap_files()
            release_save_dir(trainer.save_dir_lock)
