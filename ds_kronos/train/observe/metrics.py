"""Where a run's metrics go besides its log lines (rank 0): comet_ml through ``--comet`` (upstream's metric names),
and DeepSpeed's own monitors, the ``tensorboard``, ``csv_monitor``, ``wandb`` and ``comet`` sections of the DeepSpeed
JSON, through the engine's ``MonitorMaster`` (``engine.monitor.write_events``), so they write with DeepSpeed's own
writers, folders and settings.

DeepSpeed 0.19's engine writes only ``Train/Samples/lr`` (and ``Train/Samples/loss_scale`` under fp16) at each
optimizer step: no loss reaches its monitors. The trainer adds, on the same axis (global samples trained, DeepSpeed's
``global_samples``): the training loss and its parts as logged (the global batch's mean over the log interval,
``Train/Samples/train_loss``, the name DeepSpeed's engine used before it stopped writing it), and each validation's
loss, parts and forecast scores (``Validation/Samples/...``). They are written when the log line is: no extra host
sync.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ds_kronos.train.observe.comet import CometLogger

TRAIN, VALIDATION = "Train/Samples", "Validation/Samples"


def train_events(labels: tuple[str, ...], mean: list[float], samples: int) -> list[tuple[str, float, int]]:
    """``Train/Samples/train_loss``, ``Train/Samples/train_s1_loss`` ... (the progress line's labels)."""
    return [(f"{TRAIN}/train_{'' if label == 'loss' else label + '_'}loss", value, samples)
            for label, value in zip(labels, mean)]


def validation_events(names, result, forecast, samples: int) -> list[tuple[str, float, int]]:
    events = [(f"{VALIDATION}/val_loss", result.loss, samples)]
    events += [(f"{VALIDATION}/{name}", value, samples) for name, value in zip(names.val_components_comet,
                                                                               result.components)]
    if forecast is not None:
        events += [(f"{VALIDATION}/forecast_crps", forecast.crps, samples),
                   (f"{VALIDATION}/forecast_skill_vs_random_walk", forecast.skill, samples)]
        if forecast.rank_ic is not None:
            events.append((f"{VALIDATION}/forecast_rank_ic", forecast.rank_ic, samples))
    return events


class RunMetrics:
    """The trainer's one call per log interval and per validation, fanned out to comet_ml and DeepSpeed's monitors.
    Rank 0 only (DeepSpeed's monitors exist on rank 0 only)."""

    def __init__(self, names, comet=None, monitor: Any = None):
        self.names, self.comet = names, comet
        self.monitor = monitor if monitor is not None and monitor.enabled else None

    @classmethod
    def for_run(cls, context) -> "RunMetrics":
        """The run's sinks: on rank 0 its --comet experiment and its engine's monitors; elsewhere none."""
        c, rt, names = context.config, context.runtime, context.task.names
        if not rt.is_main:
            return cls(names)
        comet = None
        if c.comet != "off":
            comet = CometLogger(c.comet, c.comet_project, c.comet_name, context.save_dir / "comet",
                                {**dataclasses.asdict(c), "world_size": rt.world_size})
        return cls(names, comet, getattr(context.engine, "monitor", None))

    def train(self, step: int, samples: int, mean: list[float], lr: float) -> None:
        if self.comet:
            for name, value in zip(self.names.train_comet + (self.names.lr_comet,), mean + [lr]):
                self.comet.log(name, value, step=step)
        if self.monitor:
            self.monitor.write_events(train_events(self.names.labels, mean, samples))

    def validation(self, step: int, epoch: int, samples: int, result, forecast=None) -> None:
        if self.comet:
            self.comet.log(self.names.val_comet, result.loss, step=step, epoch=epoch)
            for name, value in zip(self.names.val_components_comet, result.components):
                self.comet.log(name, value, step=step)
            if forecast is not None:
                self.comet.log("val_forecast_crps", forecast.crps, step=step)
                self.comet.log("val_forecast_skill_vs_random_walk", forecast.skill, step=step)
                if forecast.rank_ic is not None:
                    self.comet.log("val_forecast_rank_ic", forecast.rank_ic, step=step)
        if self.monitor:
            self.monitor.write_events(validation_events(self.names, result, forecast, samples))

    def end(self) -> None:
        """Closes every sink. DeepSpeed closes none of its monitors; its comet experiment must be ended here: comet_ml
        ends it from a hook of interpreter shutdown (threading._register_atexit), which a finished job's process skips
        (ds_kronos.cli ends it with os._exit after the atexit handlers), and the offline archive was an empty zip."""
        if self.comet:
            self.comet.end()
        monitor = self.monitor
        if monitor and monitor.tb_monitor is not None:
            monitor.tb_monitor.summary_writer.close()
        if monitor and monitor.wandb_monitor is not None:
            import wandb

            wandb.finish()
        if monitor and monitor.comet_monitor is not None and monitor.comet_monitor.experiment is not None:
            monitor.comet_monitor.experiment.end()
