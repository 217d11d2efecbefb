"""Rank-0 outputs of the evaluation: report.json, the two PNG plots and the stdout table.

Every file is written to a temporary name in the output folder and renamed into place, so a reader never sees
a half-written report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ds_kronos.plotting import pyplot, save_figure

REPORT_NAME = "report.json"
EXAMPLES_PLOT = "forecast_examples.png"
IC_PLOT = "ic_over_time.png"
PROBABILISTIC_PLOT = "probabilistic.png"


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
    bands: dict[str, np.ndarray] = field(default_factory=dict)  # label -> [2, H] 10% and 90% quantiles of paths


def _date_axis(ax: Any) -> None:
    """At most ~6 date ticks with concise labels (a year or month written once, not on every tick), so that the
    labels of a long history never run into each other."""
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


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
        for (label, band), color in zip(ex.bands.items(), ("C3", "C2")):
            last = ex.history_close[-1:]
            ax.fill_between(_datetimes(joint_ns), np.concatenate([last, band[0]]), np.concatenate([last, band[1]]),
                            color=color, alpha=0.18, lw=0, label=f"{label} 80% band")
        ax.set_title(ex.symbol, fontsize=9)
        ax.set_ylabel("close")
        ax.grid(alpha=0.3)
        _date_axis(ax)
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
    _date_axis(ax)
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


def _band_80(coverage: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The central band closest to 80% nominal (the headline band), or None."""
    if not coverage:
        return None
    return min(coverage, key=lambda band: abs(band["nominal"] - 0.8))


def format_probabilistic(section: dict[str, Any]) -> str:
    """The close's probabilistic scores, one row per forecaster ('-' where a score does not apply)."""
    rows = section["rows"]
    band = next((_band_80(r["features"]["close"]["coverage"]) for r in rows.values()
                 if r["features"]["close"]["coverage"]), None)
    band_name = f"cover {band['nominal']:.0%}" if band else "coverage"
    columns = ["CRPS", "CRPS price", "skill vs RW", band_name, "PIT KS", "Brier up", "WQL", "MASE", "vol ratio"]
    name_width = max(len(name) for name in rows) + 2
    lines = [f"distribution of the close ({section['paths']} paths per origin; CRPS in normalised units, skill = "
             f"1 - CRPS / CRPS of random_walk)", "".ljust(name_width) + "".join(c.rjust(12) for c in columns)]
    for name, row in rows.items():
        close = row["features"]["close"]
        chosen = _band_80(close["coverage"])
        cells = [close["crps"]["normalised"]["mean"], close["crps"]["price"]["mean"],
                 row["skill_vs_random_walk"]["normalised"]["mean"], chosen["inside"] if chosen else None,
                 close["pit"]["ks_distance"] if close["pit"] else None, close["p_up"]["mean"],
                 close["wql"]["mean"] if close["wql"] else None, close["mase"]["mean"],
                 close["volatility"]["ratio"] if close["volatility"] else None]
        lines.append(name.ljust(name_width) + "".join(_cell(v, 12, signed=(i == 2)) for i, v in enumerate(cells)))
    return "\n".join(lines)


def format_significance(significance: dict[str, Any]) -> str:
    """One line: the mean IC and RankIC with their Newey-West t-statistics and p-values."""
    def part(name: str, test: dict[str, Any]) -> str:
        if test["t"] is None:
            return f"{name}: - ({test['dates']} dates)"
        return f"{name} {test['mean']:+.4f}, t {test['t']:+.2f}, p {test['p_value']:.3f}"

    lags = significance["ic"]["lags"]
    return (f"significance (Newey-West, {lags} lag(s)): {part('IC', significance['ic'])}; "
            f"{part('RankIC', significance['rank_ic'])}")


def format_sampler(sampler: dict[str, Any]) -> str:
    """Which sampling settings were used and where they came from."""
    sources = sampler["sources"]
    names = ("temperature", "top_p", "spread")
    where = sources["temperature"] if len({sources[name] for name in names}) == 1 else ", ".join(
        f"{name}: {sources[name]}" for name in names)
    return (f"sampler: temperature {sampler['temperature']:g}, top_p {sampler['top_p']:g}, spread "
            f"{sampler['spread']:g} (from {where})")


PLOTTED_ROWS = ("model", "reference", "random_walk", "bootstrap")


def plot_probabilistic(path: Path, section: dict[str, Any], title: str) -> None:
    """Four panels of the close: PIT histogram, reliability of P(up), CRPS per horizon, band coverage vs nominal;
    the model, the reference (if any) and the two sampled baselines."""
    plt = pyplot()
    rows = {name: section["rows"][name] for name in PLOTTED_ROWS if name in section["rows"]}
    colors = {"model": "C3", "reference": "C1", "random_walk": "C0", "bootstrap": "C2"}
    styles = {"reference": "--"}  # dashed: a reference equal to the model stays visible
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    pit_ax, rel_ax, crps_ax, cov_ax = axes.reshape(-1)
    for name, row in rows.items():
        close = row["features"]["close"]
        pit = close["pit"]
        edges = np.linspace(0, 1, pit["bins"] + 1)
        pit_ax.stairs(pit["density"], edges, color=colors[name], lw=1.5, ls=styles.get(name, "-"),
                      label=f"{name} (KS {pit['ks_distance']:.3f})")
        table = [r for r in close["p_up"]["reliability"] if r["count"]]
        rel_ax.plot([r["mean_forecast"] for r in table], [r["observed"] for r in table], marker="o", ms=3,
                    ls=styles.get(name, "-"), color=colors[name], label=f"{name} (Brier {close['p_up']['mean']:.3f})")
        crps = close["crps"]["normalised"]["per_horizon"]
        crps_ax.plot(np.arange(1, len(crps) + 1), crps, marker="o", ms=3, ls=styles.get(name, "-"),
                     color=colors[name], label=name)
        if close["coverage"]:
            bands = sorted(close["coverage"], key=lambda b: b["nominal"])
            cov_ax.plot([b["nominal"] for b in bands], [b["inside"] for b in bands], marker="o", ms=4,
                        ls=styles.get(name, "-"), color=colors[name], label=name)
    pit_ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    pit_ax.set(title="PIT histogram (flat = calibrated)", xlabel="PIT of the realised close", ylabel="density")
    rel_ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
    rel_ax.set(title="reliability of P(up)", xlabel="forecast P(close > last close)", ylabel="observed frequency",
               xlim=(0, 1), ylim=(0, 1))
    crps_ax.set(title="CRPS of the close per horizon (normalised units)", xlabel="horizon (bars)", ylabel="CRPS")
    cov_ax.plot([0, 1], [0, 1], color="0.5", lw=0.8, ls="--")
    cov_ax.set(title="central band coverage vs nominal", xlabel="nominal", ylabel="share of realised closes inside",
               xlim=(0, 1), ylim=(0, 1))
    for ax in axes.reshape(-1):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}, {section['paths']} paths per origin", fontsize=10)
    save_figure(fig, path)
