"""Reporting of a training run: the banner, progress and validation lines, comet_ml (online or offline), the
metric history, the memory figures, ``summary.json`` and the loss-curve PNG.

The functions that take the trainer read its public attributes only; they print on rank 0 (the caller checks).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ds_kronos.console import say
from ds_kronos.deepspeed_json.resolve import warmup_steps
from ds_kronos.errors import ConfigError
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.memory_usage import peak_rss_bytes
from ds_kronos.plotting import pyplot, save_figure
from ds_kronos.runtime import all_reduce_sum
from ds_kronos.train import metrics_log
from ds_kronos.train.compiled import compile_seconds
from ds_kronos.train.efficiency import Efficiency, run_efficiency
from ds_kronos.train.finetune import parameter_counts
from ds_kronos.train.nvme import SWAP_SUBFOLDER, folder_bytes

FINISHED, STOPPED_EARLY, STOPPED_BY_REQUEST = "finished", "stopped early", "stopped (exit_after_steps)"
PREEMPTED = "preempted"
STOPPED_BY_STOP_FILE = "stopped by request (stop file)"
"""The run's status in summary.json (or "failed: ..."); a final_model/ exists after all but STOPPED_BY_REQUEST and
PREEMPTED, which saved a checkpoint and stopped (ds_kronos.train.preemption)."""
WITH_FINAL_MODEL = (FINISHED, STOPPED_EARLY, STOPPED_BY_STOP_FILE)


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class CometLogger:
    """comet_ml experiment with upstream's metric names. Offline mode writes a zip archive under ``directory``."""

    def __init__(self, mode: str, project: str, name: str | None, directory: Path, parameters: dict[str, Any]):
        # Auto-logging hooks into torch and argparse; the trainer logs what it means to log.
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        import comet_ml

        quiet = dict(log_code=False, log_graph=False, auto_param_logging=False, auto_metric_logging=False,
                     auto_output_logging=False, log_env_details=False, log_git_metadata=False, log_git_patch=False,
                     log_env_gpu=False, log_env_host=False, log_env_cpu=False, display_summary_level=0)
        if mode == "online":
            api_key = os.environ.get("COMET_API_KEY")
            if not api_key:
                raise ConfigError("--comet online needs COMET_API_KEY in the environment (or use --comet offline)")
            self.experiment = comet_ml.Experiment(api_key=api_key, project_name=project, **quiet)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self.experiment = comet_ml.OfflineExperiment(project_name=project, offline_directory=str(directory),
                                                         **quiet)
        if name:
            self.experiment.set_name(name)
        self.experiment.log_parameters(parameters)

    def log(self, name: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        self.experiment.log_metric(name, value, step=step, epoch=epoch)

    def end(self) -> None:
        self.experiment.end()


@dataclass
class History:
    """Everything plotted and summarised at the end (rank 0)."""

    train: list[tuple[int, float]] = field(default_factory=list)
    """(step, mean training loss over the log interval)"""
    val: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss)"""
    lr: list[tuple[int, float]] = field(default_factory=list)
    """(step, learning rate used by that optimizer step), at log intervals"""
    forecast: list[tuple[int, float, float | None, float]] = field(default_factory=list)
    """(step, CRPS, RankIC, skill vs the random walk) of the forecast validation, when it runs"""

    def to_dict(self) -> dict[str, list]:
        return {"train": self.train, "val": self.val, "lr": self.lr, "forecast": self.forecast}

    @classmethod
    def from_dict(cls, values: dict[str, list]) -> "History":
        return cls(*([tuple(p) for p in values.get(key, [])] for key in ("train", "val", "lr", "forecast")))

    def plot(self, path: Path, title: str, ylabel: str) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        if self.train:
            ax.plot(*zip(*self.train), label="train loss (mean over log interval)", lw=1)
        if self.val:
            ax.plot(*zip(*self.val), "o-", label="validation loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if self.forecast:  # the forecast's CRPS has its own scale
            crps_axis = ax.twinx()
            steps, crps = [p[0] for p in self.forecast], [p[1] for p in self.forecast]
            crps_axis.plot(steps, crps, "s--", color="tab:red", label="validation forecast CRPS (close)")
            crps_axis.set_ylabel("CRPS, normalised units")
            more_handles, more_labels = crps_axis.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels)
        save_figure(fig, path)


class Progress:
    """One line per log interval: step, epoch, losses, lr, throughput (samples/s, tokens/s, TFLOP/s per rank, MFU:
    ds_kronos.train.efficiency), ETA."""

    def __init__(self, total_steps: int, epochs: int, samples_per_step: int, efficiency: Efficiency,
                 start_step: int = 0, clock: Callable[[], float] = time.perf_counter):
        self.total_steps, self.epochs, self.samples_per_step = total_steps, epochs, samples_per_step
        self.efficiency, self.clock = efficiency, clock
        self.start_step = start_step
        self.last = clock()
        self.started = time.perf_counter()  # the ETA counts validations and saves too: wall time
        self.last_step = start_step

    @classmethod
    def of(cls, trainer) -> "Progress":
        """The trainer's progress from its current step, with its efficiency figures, timed by its training clock (a
        validation between two lines does not count, so the line after it reads the training speed too)."""
        c, rt, data = trainer.config, trainer.runtime, trainer.data
        efficiency = run_efficiency(trainer.task, data.train_set.window, rt.world_size, rt.device,
                                    trainer.ds_view.precision, c.peak_tflops)

        def training_seconds() -> float:
            running = time.perf_counter() - trainer.timed_since if trainer.timed_since is not None else 0.0
            return trainer.position.train_seconds + running

        return cls(trainer.total_steps, data.epochs, trainer.batch.global_batch, efficiency,
                   start_step=trainer.position.step, clock=training_seconds)

    def passed_over(self, steps: int) -> None:
        """Steps skipped untrained (ds_kronos.train.skipped_steps): not counted in the speed or the ETA's rate."""
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


# ------------------------------------------------------------------------------------------- the trainer's lines
def banner(trainer) -> None:
    """What runs: processes, ZeRO stage, precision, model, data, batch layout and schedule (rank 0)."""
    c, rt, batch, view, task = trainer.config, trainer.runtime, trainer.batch, trainer.ds_view, trainer.task
    trained, params = parameter_counts(trainer.model)
    built = " (built partitioned: deepspeed.zero.Init)" if task.partitioned else ""
    offload = view.describe_offload()
    say(f"ds_kronos {task.kind} training: {rt.world_size} process(es) on {rt.device.type}, ZeRO-{view.zero_stage}"
        f"{built}{f' ({offload})' if offload else ''}, {view.precision}; {task.description}; {trained:,} of "
        f"{params:,} parameters trained (in the optimizer)"
        + (f"; compiled (torch.compile, {trainer.compile_backend}: the first step and validation compile)"
           if trainer.compile_backend else "")
        + ("; gradient all-reduce overlapped with backward" if trainer.grad_reduction is not None else ""))
    data = trainer.data
    train_set, val_set = data.train_set, data.val_set
    say(f"data {c.data}: {train_set.num_windows:,} train windows ({len(train_set):,} per epoch), "
        f"{val_set.num_windows:,} val windows ({len(val_set):,} per evaluation); window {train_set.window} bars")
    say(f"batch {batch.micro_batch} per rank x {batch.grad_accum} accumulation x {rt.world_size} ranks = "
        f"{batch.global_batch}; {data.steps_per_epoch} steps/epoch, {data.total_steps} steps over "
        f"{data.epochs} epoch(s); lr schedule {c.lr_schedule} (warm-up {warmup_steps(data.total_steps)} steps)")


def validation_line(trainer, label: str, result, improved: bool, forecast=None) -> None:
    """One line per evaluation (two with forecast scores) and its line in metrics.jsonl (rank 0)."""
    pos, names = trainer.position, trainer.task.names
    metrics_log.append_last(trainer.save_dir, pos, trainer.selection.metric)
    note = f" (best so far by {trainer.selection.metric}: saved best_model/)" if improved else ""
    parts = ", ".join(f"{name.removeprefix('val_').removesuffix('_loss')} {value:.4f}"
                      for name, value in zip(names.val_components_comet, result.components))
    say(f"validation {label} at step {pos.step}: loss {result.loss:.4f} ({parts}) over {result.samples} "
        f"samples{note if forecast is None else ''}")
    if forecast is not None:
        rank_ic = "undefined" if forecast.rank_ic is None else f"{forecast.rank_ic:+.4f}"
        verdict = "better" if forecast.skill > 0 else "WORSE"
        strongest = trainer.forecasts.strongest_baseline()
        against = "" if strongest is None else (f"; {'better' if forecast.crps < strongest[1] else 'WORSE'} than "
                                                f"{strongest[0]}'s {strongest[1]:.4f}, the strongest baseline")
        say(f"  forecasts at step {pos.step}: crps {forecast.crps:.4f} ({verdict} than the random walk's "
            f"{trainer.forecasts.random_walk_crps:.4f}: skill {forecast.skill:+.3f}{against}), rank_ic {rank_ic}; "
            f"{len(trainer.forecasts)} origins x {trainer.forecasts.paths} paths in {forecast.seconds:.1f} s{note}")


# --------------------------------------------------------------------------------------------------- the summary
def memory(trainer) -> dict[str, Any]:
    """Peak resident memory (VmHWM) of each rank after building/loading the model, after the engine's set-up and
    at the end, and this node's NVMe swap files. Collective."""
    rt = trainer.runtime
    peaks = torch.zeros(3, rt.world_size, dtype=torch.float64, device=rt.device)
    peaks[:, rt.rank] = torch.tensor([trainer.model_peak_rss, trainer.build_peak_rss, peak_rss_bytes()],
                                     dtype=torch.float64)
    peaks = all_reduce_sum(peaks).tolist()
    swap = folder_bytes(trainer.swap_dir / SWAP_SUBFOLDER) if trainer.swap_dir is not None else None
    return {"model_peak_rss_bytes": [int(v) for v in peaks[0]], "build_peak_rss_bytes": [int(v) for v in peaks[1]],
            "peak_rss_bytes": [int(v) for v in peaks[2]], "nvme_swap_bytes": swap}


def summary(trainer, status: str) -> dict[str, Any]:
    """The content of summary.json. Collective (the memory figures)."""
    rt, pos = trainer.runtime, trainer.position
    best, final = trainer.save_dir / "best_model", trainer.save_dir / "final_model"
    samples_per_s = pos.samples / pos.train_seconds if pos.train_seconds else None
    return {
        "task": trainer.task.kind,
        "status": status,
        "config": dataclasses.asdict(trainer.config),
        "deepspeed_config": trainer.ds_config,
        "world_size": rt.world_size,
        "device": rt.device.type,
        "steps": pos.step,
        "total_steps": trainer.total_steps,
        "epochs": trainer.data.epochs,
        "steps_per_epoch": trainer.data.steps_per_epoch,
        "global_batch": trainer.batch.global_batch,
        "first_val_loss": pos.first_val,
        "best_val_loss": pos.best_val if math.isfinite(pos.best_val) else None,
        "final_val_loss": pos.last_val,
        "train_samples": pos.samples,
        "train_seconds": round(pos.train_seconds, 3),
        "samples_per_s": round(samples_per_s, 3) if samples_per_s else None,
        **(trainer.progress.efficiency.summary(samples_per_s) if trainer.progress else {}),
        "wall_seconds": round(time.perf_counter() - trainer.started, 3),
        "compiled": bool(getattr(trainer.engine, "is_compiled", False)),
        "compile_seconds": round(compile_seconds(), 3) if trainer.compile_backend else None,
        "grad_reduce": "overlapped" if trainer.grad_reduction is not None else "deepspeed",
        # Only folders that exist: a run that failed or stopped early names no model it did not write.
        "best_model": str(best) if (best / "config.json").is_file() else None,
        "final_model": str(final) if status in WITH_FINAL_MODEL else None,
        "improved_on_start": trainer.selection.improved_on_start(pos.selection),
        "selection": trainer.selection.summary(pos.selection),
        "forecast_validation": None if trainer.forecasts is None else trainer.forecasts.summary(),
        "last_checkpoint": trainer.checkpointed_step if trainer.checkpointed_step >= 0 else None,
        "skipped_steps": [list(steps) for steps in trainer.skips.ranges],  # --skip_steps and the roll-backs'
        "rollbacks": pos.rollbacks,
        "history": pos.history.to_dict(),
        "partitioned_construction": trainer.task.partitioned,
        "parameters": dict(zip(("trained", "total"), parameter_counts(trainer.model))),
        "memory": memory(trainer),
    }


def write_outputs(trainer, summary: dict[str, Any]) -> None:
    """summary.json, loss_curve.png and the closing line (rank 0)."""
    pos, save_dir, kind = trainer.position, trainer.save_dir, trainer.task.kind
    write_json_atomic(save_dir / "summary.json", summary)
    pos.history.plot(save_dir / "loss_curve.png", f"Kronos {kind} training",
                     "mean of s1 and s2 cross-entropy" if kind == "predictor"
                     else "(recon_pre + recon_all + bsq) / 2; val: full recon MSE")
    verdict = trainer.selection.verdict_line(pos.selection)
    if verdict and summary["status"] in WITH_FINAL_MODEL:
        say(verdict)
    if summary["status"] in WITH_FINAL_MODEL + (STOPPED_BY_REQUEST,):
        say(f"done: {summary['status']} at step {pos.step}; best val {summary['best_val_loss']}, final val "
            f"{summary['final_val_loss']}; {summary['samples_per_s']} samples/s; outputs in {save_dir}")
