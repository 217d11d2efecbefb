"""Rank-0 reporting: progress lines, comet_ml (online or offline), the metric history and the loss-curve PNG."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ds_kronos.errors import ConfigError
from ds_kronos.plotting import pyplot, save_figure


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

    def to_dict(self) -> dict[str, list]:
        return {"train": self.train, "val": self.val, "lr": self.lr}

    @classmethod
    def from_dict(cls, values: dict[str, list]) -> "History":
        return cls(*([tuple(p) for p in values.get(key, [])] for key in ("train", "val", "lr")))

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
        ax.legend()
        save_figure(fig, path)


class Progress:
    """One line per log interval: step, epoch, losses, lr, samples/s, ETA."""

    def __init__(self, total_steps: int, epochs: int, samples_per_step: int, start_step: int = 0):
        self.total_steps, self.epochs, self.samples_per_step = total_steps, epochs, samples_per_step
        self.start_step = start_step
        self.start = self.last = time.perf_counter()
        self.last_step = start_step

    def line(self, step: int, epoch: int, losses: dict[str, float], lr: float) -> str:
        now = time.perf_counter()
        rate = (step - self.last_step) * self.samples_per_step / max(now - self.last, 1e-9)
        overall = (step - self.start_step) / max(now - self.start, 1e-9)
        eta = (self.total_steps - step) / overall if overall > 0 else 0.0
        self.last, self.last_step = now, step
        (name, loss), *parts = losses.items()
        detail = ", ".join(f"{label} {value:.4f}" for label, value in parts)
        return (f"step {step}/{self.total_steps} | epoch {epoch + 1}/{self.epochs} | {name} {loss:.4f} ({detail}) "
                f"| lr {lr:.3e} | {rate:.3g} samples/s | ETA {format_seconds(eta)}")  # 3 digits: 0.412 for large models

