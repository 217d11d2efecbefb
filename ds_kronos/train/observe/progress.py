"""The run's lines on the console (rank 0): the banner, the progress line per log interval (speed, efficiency,
ETA) and the validation lines."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ds_kronos.console import say
from ds_kronos.deepspeed_json.resolve import warmup_steps
from ds_kronos.train.engine.finetune import parameter_counts
from ds_kronos.train.observe.efficiency import Efficiency


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """One line per log interval: step, epoch, losses, lr, throughput (samples/s, tokens/s, TFLOP/s per rank, MFU:
    ds_kronos.train.observe.efficiency), ETA."""

    def __init__(self, total_steps: int, epochs: int, samples_per_step: int, efficiency: Efficiency,
                 start_step: int = 0, clock: Callable[[], float] = time.perf_counter):
        self.total_steps, self.epochs, self.samples_per_step = total_steps, epochs, samples_per_step
        self.efficiency, self.clock = efficiency, clock
        self.start_step = start_step
        self.last = clock()
        self.started = time.perf_counter()  # the ETA counts validations and saves too: wall time
        self.last_step = start_step

    def passed_over(self, steps: int) -> None:
        """Steps skipped untrained (ds_kronos.train.control.skipped_steps): not counted in the speed or the ETA's
        rate."""
        self.last_step += steps
        self.start_step += steps

    def line(self, step: int, epoch: int, losses: dict[str, float], lr: float) -> str:
        now = self.clock()
        rate = (step - self.last_step) * self.samples_per_step / max(now - self.last, 1e-9)
        overall = (step - self.start_step) / max(time.perf_counter() - self.started, 1e-9)
        eta = (self.total_steps - step) / overall if overall > 0 else 0.0
        self.last, self.last_step = now, step
        (name, loss), *parts = losses.items()
        detail = ", ".join(f"{label} {value:.4f}" for label, value in parts)
        return (f"step {step}/{self.total_steps} | epoch {epoch + 1}/{self.epochs} | {name} {loss:.4f} ({detail}) "
                f"| lr {lr:.3e} | {self.efficiency.describe(rate)} | ETA {format_seconds(eta)}")


# ------------------------------------------------------------------------------------------------ the run's lines
def banner(context) -> None:
    """What runs: processes, ZeRO stage, precision, model, data, batch layout and schedule (rank 0)."""
    c, rt, batch, view, task = context.config, context.runtime, context.batch, context.ds_view, context.task
    built = context.built
    trained, params = parameter_counts(task.model)
    partitioned = " (built partitioned: deepspeed.zero.Init)" if task.partitioned else ""
    offload = view.describe_offload()
    say(f"ds_kronos {task.kind} training: {rt.world_size} process(es) on {rt.device.type}, ZeRO-{view.zero_stage}"
        f"{partitioned}{f' ({offload})' if offload else ''}, {view.precision}; {task.description}; {trained:,} of "
        f"{params:,} parameters trained (in the optimizer)"
        + (f"; compiled (torch.compile, {built.compile_backend}: the first step and validation compile)"
           if built.compile_backend else "")
        + ("; gradient all-reduce overlapped with backward" if built.grad_reduction is not None else ""))
    data = context.data
    train_set, val_set = data.train_set, data.val_set
    say(f"data {c.data}: {train_set.num_windows:,} train windows ({len(train_set):,} per epoch), "
        f"{val_set.num_windows:,} val windows ({len(val_set):,} per evaluation); window {train_set.window} bars")
    if len(data.sources) > 1:
        say("mixture: " + "; ".join(f"{Path(s['path']).name} weight {s['weight']:.4g}, {s['train_samples']:,} "
                                    f"samples per epoch of {s['windows']:,} windows" for s in data.sources))
    say(f"batch {batch.micro_batch} per rank x {batch.grad_accum} accumulation x {rt.world_size} ranks = "
        f"{batch.global_batch}; {data.steps_per_epoch} steps/epoch, {data.total_steps} steps over "
        f"{data.epochs} epoch(s); lr schedule {c.lr_schedule} (warm-up {warmup_steps(data.total_steps)} steps)")


def validation_line(names, metric: str, step: int, label: str, result, improved: bool, forecast=None,
                    forecasts=None, source_paths: tuple[str, ...] = ()) -> None:
    """One line per evaluation, two with forecast scores (rank 0). ``names``: the task's metric names; ``metric``:
    the selection metric; ``forecasts``: the run's forecast validation; ``source_paths``: a mixture's sources, whose
    losses (``result.source_losses``) the line adds."""
    note = f" (best so far by {metric}: saved best_model/)" if improved else ""
    parts = ", ".join(f"{name.removeprefix('val_').removesuffix('_loss')} {value:.4f}"
                      for name, value in zip(names.val_components_comet, result.components))
    by_source = "".join(f"; {Path(path).name} {'n/a' if loss is None else f'{loss:.4f}'}"
                        for path, loss in zip(source_paths, result.source_losses))
    say(f"validation {label} at step {step}: loss {result.loss:.4f} ({parts}) over {result.samples} "
        f"samples{by_source}{note if forecast is None else ''}")
    if forecast is not None:
        rank_ic = "undefined" if forecast.rank_ic is None else f"{forecast.rank_ic:+.4f}"
        verdict = "better" if forecast.skill > 0 else "WORSE"
        strongest = forecasts.strongest_baseline()
        against = "" if strongest is None else (f"; {'better' if forecast.crps < strongest[1] else 'WORSE'} than "
                                                f"{strongest[0]}'s {strongest[1]:.4f}, the strongest baseline")
        say(f"  forecasts at step {step}: crps {forecast.crps:.4f} ({verdict} than the random walk's "
            f"{forecasts.random_walk_crps:.4f}: skill {forecast.skill:+.3f}{against}), rank_ic {rank_ic}; "
            f"{len(forecasts)} origins x {forecasts.paths} paths in {forecast.seconds:.1f} s{note}")
