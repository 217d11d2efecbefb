"""Which evaluation's weights become ``best_model/``, and when to stop: the selection metric, early stopping and
the start model as a candidate.

Every evaluation is a candidate, the start model's (the evaluation before the first step) included. A candidate
becomes the best when it improves on the best so far by more than ``min_delta`` in the metric's direction (lower
loss or CRPS, higher RankIC); ``patience`` evaluations in a row without such an improvement stop the run. The
state lives in the run's :class:`ds_kronos.train.position.Position`, so a resumed run decides exactly as an
uninterrupted one. Every rank holds the same all-reduced scores, so every rank reaches the same verdict; the
Trainer still agrees on a stop with one reduction, at evaluations only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SELECT_BY = ("loss", "crps", "rank_ic")
HIGHER_IS_BETTER = {"loss": False, "crps": False, "rank_ic": True}


@dataclass
class SelectionState:
    """What the selection has seen (saved in every checkpoint)."""

    best: float | None = None
    best_step: int | None = None
    start: float | None = None
    """The start model's score (the evaluation at step 0), None when the start was not evaluated."""
    best_later: float | None = None
    """The best score of the evaluations after the start, whether or not it beat the start."""
    best_later_step: int | None = None
    stale: int = 0
    """Evaluations in a row that did not improve on the best."""
    stop_reason: str | None = None
    scores: list[tuple[int, float | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "scores": [list(s) for s in self.scores]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SelectionState":
        return cls(**{**values, "scores": [tuple(s) for s in values.get("scores", [])]})


@dataclass(frozen=True)
class Selection:
    metric: str = "loss"
    patience: int = 0
    """Stop after this many evaluations in a row without improvement (0: never)."""
    min_delta: float = 0.0

    def better(self, value: float, than: float | None) -> bool:
        """An improvement: ahead of ``than`` by more than ``min_delta`` (anything beats no score)."""
        if than is None:
            return True
        return value > than + self.min_delta if HIGHER_IS_BETTER[self.metric] else value < than - self.min_delta

    def ahead(self, value: float, than: float) -> bool:
        return value > than if HIGHER_IS_BETTER[self.metric] else value < than

    def consider(self, state: SelectionState, step: int, value: float | None) -> bool:
        """Record the evaluation at ``step``; True when it is the new best (export it as ``best_model/``). A score
        that is undefined (None or NaN: e.g. no date with a RankIC) never improves."""
        defined = value is not None and math.isfinite(value)
        state.scores.append((step, value if defined else None))
        if step == 0 and state.start is None and defined:
            state.start = value
        elif step > 0 and defined and (state.best_later is None or self.ahead(value, state.best_later)):
            state.best_later, state.best_later_step = value, step
        if defined and self.better(value, state.best):
            state.best, state.best_step, state.stale = value, step, 0
            return True
        state.stale += 1
        if self.patience and state.stale >= self.patience:
            state.stop_reason = (f"early stop: {self.metric} did not improve on {state.best:.6g} (step "
                                 f"{state.best_step}) by more than {self.min_delta:g} in {state.stale} evaluations"
                                 if state.best is not None else
                                 f"early stop: {self.metric} undefined in {state.stale} evaluations")
        return False

    def improved_on_start(self, state: SelectionState) -> bool | None:
        """Whether ``best_model/`` is a trained model rather than the start (None: the start was not scored)."""
        if state.start is None:
            return None
        return state.best_step is not None and state.best_step > 0

    def summary(self, state: SelectionState) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "min_delta": self.min_delta,
                "improved_on_start": self.improved_on_start(state), "start_score": state.start,
                "best_score": state.best, "best_step": state.best_step, "best_trained_score": state.best_later,
                "best_trained_step": state.best_later_step, "stop_reason": state.stop_reason,
                "scores": [list(s) for s in state.scores]}

    def verdict_line(self, state: SelectionState) -> str | None:
        """The closing line about the start model, when the start was scored."""
        improved = self.improved_on_start(state)
        if improved is None:
            return None
        if improved:
            return (f"best_model/ is step {state.best_step}: {self.metric} {state.best:.6g} vs {state.start:.6g} "
                    f"for the start model")
        later = ("no later evaluation" if state.best_later is None else
                 f"the best trained model (step {state.best_later_step}) has {state.best_later:.6g}")
        return (f"no evaluation improved on the start model by {self.metric} (start {state.start:.6g}; {later}"
                f"{f', min_delta {self.min_delta:g}' if self.min_delta else ''}): best_model/ is the start model")
