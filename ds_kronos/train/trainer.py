"""The training loop: set-up (train/build.py), then per optimizer step the micro-steps (train/step.py) and what is
due after it, until the run control (train/control/) says stop; every stop ends in :meth:`Trainer._end` and
summary.json. The map of the components: docs/architecture.md."""

from __future__ import annotations

import time
from typing import Any

from ds_kronos.console import say
from ds_kronos.runtime import distributed_failures
from ds_kronos.train.build import build_run
from ds_kronos.train.checkpoint.save_dir_lock import release_save_dir
from ds_kronos.train.config import CommonTrainConfig
from ds_kronos.train.control.divergence import Diverged
from ds_kronos.train.control.preemption import StopRequests, stop_if_preempted
from ds_kronos.train.control.run_control import StopReason
from ds_kronos.train.position import Position
from ds_kronos.train.step import train_micro_step


class Trainer:
    """Runs one training job (the task decides which model and loss) on a DeepSpeed engine."""

    def __init__(self, config: CommonTrainConfig, stops: StopRequests | None = None):
        self.started = time.perf_counter()
        run = build_run(config, stops or StopRequests(config.save_on_signal, config.exit_after_steps))
        self.run_parts, self.ctx, self.runtime = run, run.context, run.context.runtime
        self.control, self.checkpoints = run.control, run.checkpoints  # the stop decision; save, restore, export
        self.validator, self.observer = run.validator, run.observer  # evaluations and the selection; what is reported
        self.position = Position()  # where the run stands: saved in every checkpoint

    def run(self) -> dict[str, Any]:
        self.position = self.checkpoints.resume() or self.position
        self.observer.begin(self.position, self.validator.adopt(self.position))
        try:
            if self.ctx.task.random_init and self.position.step == 0 and not self.checkpoints.resume_source:
                self.checkpoints.export("initial_model")  # a preset's random start, to compare the run with
            if due := self.position.take_due_validation(self.ctx.config.eval_at_start):
                self._validate(due)
                self.control.agree_on_early_stop(self.position)
            self.control.resume(self.position)
            while True:
                try:
                    status = self._train()
                    break
                except Diverged as exc:  # the policy restores through the checkpoints, or stops the run
                    self.position = self.control.roll_back(exc, self.position, self.checkpoints)
                    self.observer.restart(self.position)
        except Diverged as exc:
            self.run_parts.finish(self.position, f"failed: {exc}", self.started)
            raise
        result = self.run_parts.finish(self.position, status, self.started)
        self.observer.end()
        return result

    def _train(self) -> str:
        """The epoch loop from the current position; returns the run's status."""
        ctx, pos, data, control = self.ctx, self.position, self.ctx.data, self.control
        self.observer.start(pos)
        ctx.engine.train()
        stop = control.after_step(pos)
        while stop is None and pos.step < ctx.total_steps:
            control.skips.move_past(pos, ctx.total_steps, self.observer)
            if pos.micro_in_epoch >= data.micro_per_epoch:
                pos.epoch, pos.micro_in_epoch = pos.epoch + 1, 0
            data.train_sampler.set_epoch(pos.epoch)
            data.train_sampler.set_start_batch(pos.micro_in_epoch)
            for x, stamp in data.train_loader:
                if self._epoch_over() or control.skips.due(pos):
                    break
                losses, lr_used = train_micro_step(ctx.engine, ctx.task, x, stamp, ctx.built.grad_reduction)
                control.record(losses)  # on the device: no host sync
                self.observer.record(losses)
                pos.micro_in_epoch += 1
                if pos.micro_in_epoch % ctx.batch.grad_accum:
                    continue
                pos.step += 1
                pos.samples += ctx.batch.global_batch
                if stop := self._after_step(lr_used):
                    break
            if stop is None and not control.skips.due(pos):  # the loader is exhausted either way
                pos.micro_in_epoch = max(pos.micro_in_epoch, data.micro_per_epoch)
        return self._end(stop)

    def _epoch_over(self) -> bool:
        pos, ctx = self.position, self.ctx
        return pos.micro_in_epoch >= ctx.data.micro_per_epoch or pos.step >= ctx.total_steps

    def _after_step(self, lr_used: float) -> StopReason | None:
        """Log, check, validate and save when due. A stop request (a signal, --exit_after_steps) is agreed at the
        step's end and again after a validation or a save (both can take minutes); the stop file and an early stop
        let the step finish."""
        pos, control, observer = self.position, self.control, self.observer
        end_of_epoch = self._epoch_over()
        if observer.log_due(pos.step):  # the stop file's flag rides on the log line's all-reduce
            control.agree_on_log(observer.log(pos, lr_used, control.log_flags()), pos.step)
        control.maybe_check(pos.step, lr_used)
        due = self.validator.due(pos.step, end_of_epoch)
        if stop := control.agree(pos):  # a stop at once saves without validating: the resumed run validates first
            pos.due_validation = due
            return stop
        if due:
            observer.pause(pos)
            control.check(pos.step)
            self._validate(due)
            observer.resume()
            if stop := control.agree(pos, evaluated=True):  # a signal during the validation
                return stop
        if self.checkpoints.maybe_save(pos, end_of_epoch) and (stop := control.agree(pos)):
            return stop  # a signal during the save: saved already
        return control.after_step(pos)

    def _validate(self, label: str) -> None:  # collective; the caller agrees on an early stop
        verdict = self.validator.validate(self.position, label)
        if verdict.improved:
            self.checkpoints.export("best_model")
        self.observer.validation(self.position, verdict)

    def _end(self, stop: StopReason | None) -> str:
        """Every stop ends here: this step's checkpoint and, unless stopped at once, final validation and model."""
        pos = self.position
        self.observer.pause(pos)
        if stop is not None and stop.at_once:
            self.checkpoints.save(pos)
            stop = StopReason(stop.status, self.control.closing_line(self.checkpoints.last_tag, pos.step))
        else:
            self.control.check(pos.step)
            if self.control.final_validation() and not self.validator.validated_at(pos):
                self._validate("final")
                self.control.agree_on_early_stop(pos)
            self.checkpoints.save(pos)
            self.checkpoints.export("final_model")
            stop = self.control.ending(pos)
        if stop.line and self.runtime.is_main:
            say(stop.line)
        return stop.status


def run_training(config: CommonTrainConfig) -> dict[str, Any]:
    stops = StopRequests(config.save_on_signal, config.exit_after_steps)  # listens from here on
    with distributed_failures(config.dist_timeout, lambda: stops.received):
        trainer = Trainer(config, stops)
        try:
            summary = trainer.run()
            trainer.runtime.close()  # every rank leaves together: one leaving early can abort another's gloo exit
            return stop_if_preempted(summary)
        finally:
            trainer.run_parts.remove_swap_files()
            release_save_dir(trainer.run_parts.save_dir_lock)
