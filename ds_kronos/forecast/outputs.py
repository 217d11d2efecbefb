"""Files of the forecast job: one CSV and one PNG per series, and summary.json (all written through a temporary
name and renamed, so a reader never sees half a file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ds_kronos.atomic import atomic_file
from ds_kronos.data.series import CLOSE
from ds_kronos.forecast.frames import Forecast, forecast_frame
from ds_kronos.plotting import pyplot, save_figure

SUMMARY_NAME = "summary.json"


def write_csv(path: Path, result: Forecast, index: int, timestamps_ns: np.ndarray) -> None:
    """The forecast of series ``index``: a ``timestamps`` column, then each field's mean and its quantile bands."""
    frame = forecast_frame(result, index, pd.DatetimeIndex(np.asarray(timestamps_ns, dtype="datetime64[ns]")))
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index_label="timestamps", float_format="%.6g")


@dataclass(frozen=True)
class Band:
    """The close forecast to draw: the median path statistic, and the outermost band (None with one path)."""

    median: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    label: str = ""


def close_band(result: Forecast, index: int) -> Band:
    """Median and outermost band of the close; with one sampled path (no quantiles), the path itself."""
    if not result.quantiles:
        return Band(result.mean[index, :, CLOSE])
    quantiles = list(result.quantiles)
    median = (result.bands[index, :, quantiles.index(0.5), CLOSE] if 0.5 in quantiles
              else result.mean[index, :, CLOSE])
    if len(quantiles) < 2 or quantiles[0] >= 0.5 or quantiles[-1] <= 0.5:
        return Band(median)
    return Band(median, result.bands[index, :, 0, CLOSE], result.bands[index, :, -1, CLOSE],
                f"q{quantiles[0]:g}-q{quantiles[-1]:g} band")


def _tick_labels(timestamps_ns: np.ndarray) -> list[str]:
    stamps = pd.DatetimeIndex(np.asarray(timestamps_ns, dtype="datetime64[ns]"))
    intraday = bool((stamps.normalize() != stamps).any())
    return list(stamps.strftime("%Y-%m-%d %H:%M" if intraday else "%Y-%m-%d"))


def plot_series(path: Path, symbol: str, history_ns: np.ndarray, history: np.ndarray, future_ns: np.ndarray,
                band: Band, title: str) -> None:
    """History [n, >= 4] (open, high, low, close, ...) as candlesticks, then the close forecast's median and band.

    Bars are drawn at consecutive positions, not at their times, so that nights, lunch breaks and weekends take
    no room; the axis labels give the times.
    """
    plt = pyplot()
    n, horizon = len(history), len(future_ns)
    x = np.arange(n)
    open_, high, low, close = (history[:, i] for i in range(4))
    up = close >= open_
    colors = np.where(up, "tab:red", "tab:green")  # the Chinese convention of the demo data: red rises
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.vlines(x, low, high, colors=colors, lw=0.8)
    body = np.maximum(np.abs(close - open_), 1e-12 * np.maximum(np.abs(close), 1.0))
    ax.bar(x, body, bottom=np.minimum(open_, close), color=colors, width=0.7)
    fx = np.arange(n - 1, n + horizon)  # joined to the last close so the forecast visibly starts there
    if band.lower is not None:
        ax.fill_between(fx, np.r_[close[-1], band.lower], np.r_[close[-1], band.upper], color="C0", alpha=0.25,
                        lw=0, label=band.label)
    ax.plot(fx, np.r_[close[-1], band.median], color="C0", lw=1.5, label="forecast median close")
    ax.axvline(n - 0.5, color="0.5", lw=0.8, ls=":")
    labels = _tick_labels(np.r_[history_ns, future_ns])
    ticks = np.unique(np.linspace(0, n + horizon - 1, min(7, n + horizon)).round().astype(int))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[t] for t in ticks], fontsize=7, rotation=20, ha="right")
    ax.set_xlim(-1, n + horizon)
    ax.set_ylabel("price")
    ax.set_title(f"{symbol}: {title}", fontsize=10)
    ax.grid(alpha=0.3)
    from matplotlib.patches import Patch

    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="tab:red", label="history: close >= open"), Patch(color="tab:green", label="history: "
                                                                               "close < open")]
    ax.legend(handles=handles, fontsize=8, loc="best")
    save_figure(fig, path)
