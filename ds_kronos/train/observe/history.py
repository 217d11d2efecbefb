"""The metric history of a run (saved in every checkpoint), plotted as loss_curve.png at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ds_kronos.plotting import pyplot, save_figure


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
