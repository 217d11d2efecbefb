"""Each evaluation of a training run as one line of JSON in ``save_dir/metrics.jsonl``, for a program that follows
the run while it trains (``launch/sweep.py`` reports the lines to Optuna and prunes on them).

A line: ``{"step", "val_loss", "crps", "rank_ic", "skill", "metric", "value"}``: the optimizer step, the validation
token loss, the forecast scores (null without forecast validation; ``rank_ic`` also when undefined), the selection
metric's name (``--select_by``) and its value at this evaluation (null when undefined); with a ``--data``
mixture also ``source_val_losses``, each source's loss in the order of ``--data`` (summary.json's ``sources``).
Rank 0 appends one line per evaluation, in one write, and flushes it: a reader takes complete lines only.

When a run starts, the file is rewritten from the run's position: empty for a new run; for a resumed one, the
evaluations up to its checkpoint, so that the lines a killed run wrote after its checkpoint go with the steps
that are trained again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ds_kronos.atomic import write_text_atomic
from ds_kronos.jsonio import to_jsonable

METRICS_NAME = "metrics.jsonl"


def records(position, metric: str) -> list[dict[str, Any]]:
    """Every evaluation in ``position`` (a :class:`ds_kronos.train.position.Position`) as a line's content."""
    forecasts = {entry[0]: entry for entry in position.history.forecast}
    values = dict(position.selection.scores)
    by_source = dict(position.history.val_sources)
    lines = []
    for step, loss in position.history.val:
        _, crps, rank_ic, skill = forecasts.get(step, (step, None, None, None))
        lines.append({"step": step, "val_loss": loss, "crps": crps, "rank_ic": rank_ic, "skill": skill,
                      "metric": metric, "value": values.get(step)})
        if step in by_source:
            lines[-1]["source_val_losses"] = list(by_source[step])
    return lines


def _line(record: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(record), allow_nan=False) + "\n"


def restart(save_dir: Path, position, metric: str) -> None:
    """Rewrite the file with the evaluations the run starts from (rank 0, when the run starts; a new run's save_dir
    may not exist yet)."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(save_dir) / METRICS_NAME, "".join(_line(r) for r in records(position, metric)))


def append_last(save_dir: Path, position, metric: str) -> None:
    """Append the latest evaluation (rank 0, after each evaluation)."""
    with open(Path(save_dir) / METRICS_NAME, "a", encoding="utf-8") as handle:
        handle.write(_line(records(position, metric)[-1]))
