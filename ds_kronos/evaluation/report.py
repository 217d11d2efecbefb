"""Rank-0 outputs of the evaluation: report.json, the two PNG plots and the stdout table.

Every file is written to a temporary name in the output folder and renamed into place, so a reader never sees
a half-written report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ds_kronos.plotting import pyplot, save_figure

REPORT_NAME = "report.json"
EXAMPLES_PLOT = "forecast_examples.png"
IC_PLOT = "ic_over_time.png"


def _datetimes(ns: np.ndarray) -> np.ndarray:
    return np.asarray(ns, dtype=np.int64).astype("datetime64[ns]")


@dataclass(frozen=True)
class Example:
    """One origin to draw: close prices of the history, the realised future and the forecast."""

    symbol: str
    history_ns: np.ndarray
    history_close: np.ndarray
    future_ns: np.ndarray
    actual_close: np.ndarray
    forecast_close: np.ndarray


def plot_examples(path: Path, examples: Sequence[Example], title: str) -> None:
    plt = pyplot()
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), squeeze=False)
    for ax, ex in zip(axes[:, 0], examples):
        # Join the lines to the last history bar so the forecast visibly starts where the history ends.
        joint_ns = np.concatenate([ex.history_ns[-1:], ex.future_ns])
        ax.plot(_datetimes(ex.history_ns), ex.history_close, color="0.3", lw=1, label="history")
        ax.plot(_datetimes(joint_ns), np.concatenate([ex.history_close[-1:], ex.actual_close]), color="C0", lw=1.5,
                label="actual")
        ax.plot(_datetimes(joint_ns), np.concatenate([ex.history_close[-1:], ex.forecast_close]), color="C3",
                lw=1.5, ls="--", label="forecast")
        ax.set_title(ex.symbol, fontsize=9)
        ax.set_ylabel("close")
        ax.grid(alpha=0.3)
    if not examples:
        axes[0, 0].text(0.5, 0.5, "no origins", ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_ic(path: Path, dates_ns: np.ndarray, ic: np.ndarray, rank_ic: np.ndarray, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if len(dates_ns):
        when = _datetimes(dates_ns)
        ax.plot(when, ic, "o-", ms=3, lw=1, color="C0", label=f"IC (mean {np.mean(ic):+.3f})")
        ax.plot(when, rank_ic, "s-", ms=3, lw=1, color="C1", label=f"RankIC (mean {np.mean(rank_ic):+.3f})")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no date with enough symbols", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_ylabel("correlation across symbols")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _cell(value: float | None, width: int, signed: bool = False) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:+.4f}".rjust(width) if signed else f"{value:.4f}".rjust(width)


def format_table(scores: dict[str, dict[str, Any]]) -> str:
    """Model vs baselines, one row each (normalised-unit errors; '-' where a metric is undefined)."""
    columns = ["close MAE", "close RMSE", "all MAE", "all RMSE", "dir acc", "IC", "ICIR", "RankIC"]
    name_width = max(len(name) for name in scores) + 2
    header = "".ljust(name_width) + "".join(c.rjust(11) for c in columns)
    lines = [header]
    for name, s in scores.items():
        features = s["all_features"] or {}
        cells = [_cell(s["close"]["mae"], 11), _cell(s["close"]["rmse"], 11), _cell(features.get("mae"), 11),
                 _cell(features.get("rmse"), 11), _cell(s["direction"]["accuracy"], 11),
                 _cell(s["ic"]["mean_ic"], 11, True), _cell(s["ic"]["icir"], 11, True),
                 _cell(s["ic"]["mean_rank_ic"], 11, True)]
        lines.append(name.ljust(name_width) + "".join(cells))
    return "\n".join(lines)


def format_calibration(calibration: dict[str, Any]) -> str:
    """The close's calibration: each central band's share of realised values inside, and each quantile's share
    of realised values at or below it, against their nominal values."""
    lines = [f"calibration of the close ({calibration['sample_count']} sampled paths; realised share vs nominal)"]
    for name in ("model", "reference"):
        close = (calibration.get(name) or {}).get("close")
        if close is None:
            continue
        cells = [f"band {b['lower']:g}-{b['upper']:g}: {b['inside']:.3f} vs {b['nominal']:.2f}" for b in close["bands"]]
        cells += [f"<= q{q['quantile']:g}: {q['overall']:.3f}" for q in close["share_below"]]
        lines.append(f"  {name}: " + ", ".join(cells))
    return "\n".join(lines)
