"""What a sweep reports: the table of trials (stdout and ``trials.csv``), the best trial's ``best_model/``, Optuna's
matplotlib plots and ``summary.json``, all in the study's folder. Every worker writes them when it ends, from the
whole study (the last to end has the final word); each file is written atomically."""

from __future__ import annotations

import csv
import io
import statistics
import warnings
from pathlib import Path
from typing import Any

from ds_kronos.atomic import write_text_atomic
from ds_kronos.plotting import pyplot, save_figure
from ds_kronos.sweep.workers import CONTINUES_ATTR

TABLE_NAME = "trials.csv"
SUMMARY_NAME = "summary.json"
PLOTS = {"history": "history.png", "intermediate": "intermediate_values.png", "slice": "slice.png",
         "importance": "importance.png"}
LAUNCH_ATTR, STEPS_ATTR, STATUS_ATTR, BEST_MODEL_ATTR = "launch_seconds", "steps", "status", "best_model"
PRUNED_AT_ATTR, FAILURE_ATTR = "pruned_at", "failure"


def trial_rows(study, param_names: list[str]) -> list[dict[str, Any]]:
    """One row per trial: number, parameters, objective, state, steps trained, wall time (Optuna's, ask to tell),
    the launched command's share and the sweep's own (the rest), the trial's folder and best_model/."""
    rows = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = trial.user_attrs
        wall = ((trial.datetime_complete - trial.datetime_start).total_seconds()
                if trial.datetime_complete and trial.datetime_start else None)
        launch = attrs.get(LAUNCH_ATTR)
        rows.append({"number": trial.number, **{name: trial.params.get(name) for name in param_names},
                     "objective": trial.value, "state": trial.state.name, "pruned_at": attrs.get(PRUNED_AT_ATTR),
                     "steps": attrs.get(STEPS_ATTR), "wall_seconds": _rounded(wall),
                     "launch_seconds": _rounded(launch),
                     "sweep_seconds": _rounded(wall - launch if wall is not None and launch is not None else None),
                     "save_dir": attrs.get("save_dir"), "best_model": attrs.get(BEST_MODEL_ATTR),
                     "note": attrs.get(FAILURE_ATTR) or (f"continues trial {attrs[CONTINUES_ATTR]}"
                                                         if attrs.get(CONTINUES_ATTR) is not None else None)})
    return rows


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], param_names: list[str], metric: str) -> str:
    """The trials as a fixed-width text table (the objective column is named after the metric)."""
    header = ["trial", *param_names, metric, "state", "steps", "wall s"]
    lines = [header]
    for row in rows:
        state = row["state"] + (f" at step {row['pruned_at']}" if row["pruned_at"] is not None else "")
        lines.append([_cell(row["number"]), *(_cell(row[name]) for name in param_names), _cell(row["objective"]),
                      state, _cell(row["steps"]), _cell(row["wall_seconds"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def write_plots(study, folder: Path, param_names: list[str], metric: str) -> list[str]:
    """Optuna's matplotlib plots of the study (those its trials allow); returns the files written."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    plt = pyplot()  # the Agg backend, before Optuna imports pyplot
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    with_curves = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    plots = {"history": lambda: optuna_plots.plot_optimization_history(study, target_name=metric),
             "slice": lambda: optuna_plots.plot_slice(study, target_name=metric)}
    if with_curves:
        plots["intermediate"] = lambda: optuna_plots.plot_intermediate_values(study)
    if len(param_names) >= 2 and len(complete) >= 2:
        plots["importance"] = lambda: optuna_plots.plot_param_importances(study, target_name=metric)
    written = []
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna marks its matplotlib plots experimental
            # The importance plot's axes refuse tight_layout; the plot is drawn as Optuna lays it out.
            warnings.filterwarnings("ignore", message=".*not compatible with tight_layout")
            axes = draw()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(max(6.4, 3.2 * len(param_names)) if name == "slice" else 6.4, 4.2)
            save_figure(figure, folder / PLOTS[name])
        written.append(PLOTS[name])
    plt.close("all")
    return written


def overhead_figures(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sweep's own seconds per trial (Optuna's wall time less the launched command's): mean, min, max."""
    values = [row["sweep_seconds"] for row in rows if row["sweep_seconds"] is not None]
    if not values:
        return None
    return {"trials": len(values), "mean": round(statistics.fmean(values), 3), "min": min(values),
            "max": max(values)}
