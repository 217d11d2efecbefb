"""Where a training run stands: saved in every checkpoint, so that a resumed run continues exactly."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ds_kronos.train.validation.selection import SelectionState


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
    val_sources: list[tuple[int, list[float | None]]] = field(default_factory=list)
    """(step, validation loss of each source) with a ``--data`` mixture"""

    def to_dict(self) -> dict[str, list]:
        return {"train": self.train, "val": self.val, "lr": self.lr, "forecast": self.forecast,
                "val_sources": self.val_sources}

    @classmethod
    def from_dict(cls, values: dict[str, list]) -> "History":
        return cls(*([tuple(p) for p in values.get(key, [])]
                     for key in ("train", "val", "lr", "forecast", "val_sources")))


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    """Micro-batches this rank has drawn in the current epoch."""
    best_val: float = math.inf
    first_val: float | None = None
    last_val: float | None = None
    samples: int = 0
    train_seconds: float = 0.0
    history: History = field(default_factory=History)
    selection: SelectionState = field(default_factory=SelectionState)
    """The candidates seen so far: best_model/'s step and score, the start's, early stopping."""
    due_validation: str | None = None
    """The label of a validation that was due at ``step`` when the run stopped there on a signal (it saves without
    waiting for it): the resumed run runs it first, so it decides as an uninterrupted run."""
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    """The run's roll-backs so far (ds_kronos.train.control.rollback), as in summary.json: a resumed run goes on
    skipping
    their steps, keeps their lr factor and counts them against --max_rollbacks."""

    def take_due_validation(self, eval_at_start: bool) -> str | None:
        """The validation to run before the first step of this invocation, if any: the one a run stopped on a signal
        left to it (taken: it is run once), or the start model's (``--eval_at_start``, at step 0 only)."""
        due, self.due_validation = self.due_validation, None
        return due or ("before training" if eval_at_start and self.step == 0 and not self.history.val else None)

    def to_client_state(self) -> dict[str, Any]:
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        state["history"] = self.history.to_dict()
        state["selection"] = self.selection.to_dict()
        return state

    @classmethod
    def from_client_state(cls, state: dict[str, Any]) -> "Position":
        values = {k: v for k, v in state.items() if k in {f.name for f in dataclasses.fields(cls)}}
        return cls(**{**values, "history": History.from_dict(values.get("history", {})),
                      "selection": SelectionState.from_dict(values.get("selection", {}))})
