"""What a training run reports, and its training clock: the log line per interval (the global batch's mean loss,
one all-reduce, at log intervals only), each evaluation's lines, metrics.jsonl, comet_ml and DeepSpeed's monitors.

It owns the running loss sums, the progress line, the metric sinks and the clock (training time excludes
validations, saves and exports); the position it reads and adds history to is the loop's, handed in at each call.
"""

from __future__ import annotations

import time

import torch

from ds_kronos.console import say
from ds_kronos.runtime import all_reduce_sum
from ds_kronos.train.observe import metrics_log
from ds_kronos.train.observe.efficiency import run_efficiency
from ds_kronos.train.observe.metrics import RunMetrics
from ds_kronos.train.observe.progress import Progress, banner, validation_line


class Observer:
    def __init__(self, context, selection_metric: str, forecasts=None):
        self.ctx, self.metric, self.forecasts = context, selection_metric, forecasts
        self.running = torch.zeros(len(context.task.names.labels), device=context.runtime.device)
        self.running_count = 0
        """Micro-batches summed in ``running`` since the last log line."""
        self.metrics = RunMetrics(context.task.names)  # no sinks until :meth:`begin`
        self.progress: Progress | None = None
        self.timed_since: float | None = None
        """Training time is counted from here (None: not training now)."""

    def begin(self, position, note: str | None = None) -> None:
        """The run's start: the banner, metrics.jsonl from the position, the metric sinks."""
        if self.ctx.runtime.is_main:
            if note:
                say(note)
            banner(self.ctx)
            metrics_log.restart(self.ctx.save_dir, position, self.metric)
        self.metrics = RunMetrics.for_run(self.ctx)

    # ---------------------------------------------------------------------------------------------- clock
    def start(self, position) -> None:
        """Training (re)starts from ``position``: a progress line from its step, timed by the training clock (a
        validation between two lines does not count, so the line after it reads the training speed too)."""
        ctx = self.ctx
        efficiency = run_efficiency(ctx.task, ctx.data.train_set.window, ctx.runtime.world_size, ctx.runtime.device,
                                    ctx.ds_view.precision, ctx.config.peak_tflops)

        def training_seconds() -> float:
            running = time.perf_counter() - self.timed_since if self.timed_since is not None else 0.0
            return position.train_seconds + running

        self.progress = Progress(ctx.total_steps, ctx.data.epochs, ctx.batch.global_batch, efficiency,
                                 start_step=position.step, clock=training_seconds)
        self.timed_since = time.perf_counter()

    def pause(self, position) -> None:
        """Add the time since the clock last started to the position's training time."""
        if self.timed_since is not None:
            position.train_seconds += time.perf_counter() - self.timed_since
            self.timed_since = None

    def resume(self) -> None:
        self.timed_since = time.perf_counter()

    # ------------------------------------------------------------------------------------------- training
    def record(self, losses: torch.Tensor) -> None:
        """One micro-batch's losses, added on the device (no host sync)."""
        self.running += losses
        self.running_count += 1

    def log_due(self, step: int) -> bool:
        return step % self.ctx.config.log_every == 0 or step == self.ctx.total_steps

    def log(self, position, lr_used: float, flags: list[float]) -> list[float]:
        """The log line of ``position.step``. The global batch's mean (every rank's share), so the logged loss does
        not depend on how the batch is split across ranks; a host sync, at log intervals only. ``flags`` ride along
        in the same all-reduce; returns their sums."""
        rt, names = self.ctx.runtime, self.ctx.task.names
        reduced = all_reduce_sum(torch.cat([self.running, self.running.new_tensor(flags)])).tolist()
        totals, flags = reduced[:len(self.running)], reduced[len(self.running):]
        mean = [total / (self.running_count * rt.world_size) for total in totals]
        self.running.zero_()
        self.running_count = 0
        position.history.train.append((position.step, mean[0]))
        position.history.lr.append((position.step, lr_used))
        if rt.is_main:
            say(self.progress.line(position.step, position.epoch, dict(zip(names.labels, mean)), lr_used))
            self.metrics.train(position.step, position.samples, mean, lr_used)
        return flags

    def passed_over(self, steps: int) -> None:
        """Skipped steps: not counted in the speed or the ETA."""
        if self.progress is not None:
            self.progress.passed_over(steps)

    def validation(self, position, verdict) -> None:
        """An evaluation (a :class:`ds_kronos.train.validation.validator.Verdict`): its lines, its line in
        metrics.jsonl and its metrics (rank 0)."""
        if not self.ctx.runtime.is_main:
            return
        metrics_log.append_last(self.ctx.save_dir, position, self.metric)
        validation_line(self.ctx.task.names, self.metric, position.step, verdict.label, verdict.result,
                        verdict.improved, verdict.forecast, self.forecasts,
                        tuple(source["path"] for source in self.ctx.data.sources))
        self.metrics.validation(position.step, position.epoch, position.samples, verdict.result, verdict.forecast)

    def restart(self, position) -> None:
        """After a roll-back to ``position``: the undone steps' time and losses are not counted, and the evaluations
        after it are undone in metrics.jsonl."""
        self.timed_since = None
        self.running.zero_()
        self.running_count = 0
        if self.ctx.runtime.is_main:
            metrics_log.restart(self.ctx.save_dir, position, self.metric)

    def end(self) -> None:
        self.metrics.end()
