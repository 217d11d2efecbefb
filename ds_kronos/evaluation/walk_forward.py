"""Walk-forward evaluation (``--walk_forward K``): the evaluated origins cut by date into K consecutive,
non-overlapping test windows, each scored on its own.

The origin dates are split into K runs of consecutive dates as equal as possible (``numpy.array_split``), so
every window has at least :data:`MIN_FOLD_DATES` dates; per window: every row's CRPS of the close (normalised
units), the model's skill against each baseline (1 - CRPS_model / CRPS_baseline), the IC and RankIC with their
Newey-West t (:mod:`ds_kronos.evaluation.significance`) and the Diebold-Mariano p-value of the model against each
row (:mod:`ds_kronos.evaluation.comparisons`). Pooled: the mean, spread and count of positive skills over the
windows. The re-fit loop (train on each window's past, evaluate the window) is a loop of commands:
docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ds_kronos.errors import ConfigError
from ds_kronos.evaluation import metrics
from ds_kronos.evaluation.comparisons import diebold_mariano
from ds_kronos.evaluation.significance import MIN_DATES, ic_significance
from ds_kronos.plotting import pyplot, save_figure

MIN_FOLD_DATES = MIN_DATES  # a window's Newey-West t needs 3 dates
WALK_FORWARD_PLOT = "walk_forward.png"
MODEL_ROWS = ("model", "reference")


def fold_dates(dates: np.ndarray, folds: int) -> list[np.ndarray]:
    """The origin dates of each window, in time order; a ConfigError when there are too few dates."""
    unique = np.unique(np.asarray(dates))
    if folds * MIN_FOLD_DATES > unique.size:
        raise ConfigError(f"--walk_forward {folds} needs at least {folds * MIN_FOLD_DATES} origin dates "
                          f"({MIN_FOLD_DATES} per window); the evaluated split has {unique.size}")
    return np.array_split(unique, folds)


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))


def walk_forward_section(folds: int, dates: np.ndarray, crps: dict[str, np.ndarray], qlike: dict[str, np.ndarray],
                         model_returns: np.ndarray, real_returns: np.ndarray, pred_len: int,
                         stride: int) -> dict[str, Any]:
    """``report.json["folds"]``: per window and pooled (module docstring). ``crps``/``qlike``: per-origin losses
    [n] of each row; ``*_returns`` [n]: the model's predicted and the realised return over the window."""
    windows = []
    for window in fold_dates(dates, folds):
        keep = np.isin(dates, window)
        means = {name: float(values[keep].mean()) for name, values in crps.items()}
        ic_dates, ic, rank_ic = metrics.daily_ic(dates[keep], model_returns[keep], real_returns[keep])
        windows.append({
            "start": _iso(window[0]), "end": _iso(window[-1]), "dates": int(window.size), "origins": int(keep.sum()),
            "crps": means,
            "skill": {name: 1.0 - means["model"] / value if value > 0 else None for name, value in means.items()
                      if name not in MODEL_ROWS},
            "ic": ic_significance(ic, rank_ic, pred_len, stride),
            "dm_p_value": {loss: {name: diebold_mariano(table["model"][keep], values[keep], dates[keep], pred_len,
                                                        stride)["p_value"]
                                  for name, values in table.items() if name != "model"}
                           for loss, table in (("crps", crps), ("qlike", qlike)) if "model" in table}})
    pooled = {}
    for name in windows[0]["skill"]:
        skills = np.array([w["skill"][name] for w in windows if w["skill"][name] is not None])
        pooled[name] = {"mean": float(skills.mean()) if skills.size else None,
                        "std": float(skills.std(ddof=1)) if skills.size > 1 else None,
                        "positive_windows": int((skills > 0).sum()), "windows": int(skills.size)}
    return {"windows": len(windows), "folds": windows, "pooled_skill": pooled,
            "definition": "consecutive, non-overlapping windows of the origin dates; skill = 1 - CRPS_model / "
                          "CRPS_baseline of the close (normalised units)"}


def format_walk_forward(section: dict[str, Any]) -> str:
    """One line per window: its dates, the model's CRPS, its skill against each baseline and the IC's t."""
    names = list(section["pooled_skill"])
    lines = [f"walk-forward: {section['windows']} windows; skill of the model vs " + ", ".join(names)]
    for i, fold in enumerate(section["folds"], 1):
        skills = " ".join("-" if fold["skill"][n] is None else f"{fold['skill'][n]:+.3f}" for n in names)
        t = fold["ic"]["ic"]["t"]
        lines.append(f"  {i}: {fold['start'][:10]}..{fold['end'][:10]} ({fold['origins']} origins) CRPS "
                     f"{fold['crps']['model']:.4f}, skill {skills}, IC t {'-' if t is None else f'{t:+.2f}'}")
    pooled = " ".join("-" if p["mean"] is None else f"{p['mean']:+.3f}" for p in section["pooled_skill"].values())
    lines.append(f"  mean skill over windows: {pooled}")
    return "\n".join(lines)


def plot_walk_forward(path: Path, section: dict[str, Any], title: str) -> None:
    """The model's skill against each baseline, window by window."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(1, section["windows"] + 1)
    for name in section["pooled_skill"]:
        values = [np.nan if w["skill"][name] is None else w["skill"][name] for w in section["folds"]]
        ax.plot(x, values, marker="o", ms=4, label=name)
    ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set(xlabel="test window (in time order)", ylabel="skill = 1 - CRPS model / CRPS baseline", xticks=x,
           title=f"walk-forward skill of the model, {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
