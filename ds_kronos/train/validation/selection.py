"""Which evaluation's weights become ``best_model/``, and when to stop: the selection metric, early stopping and
the start model as a candidate.

Every evaluation is a candidate, the start model's (the evaluation before the first step) included. A candidate
becomes the best when it improves on the best so far by more than ``min_delta`` in the metric's direction (lower
loss or CRPS, higher RankIC); ``patience`` evaluations in a row without such an improvement stop the run.

By forecast (crps, rank_ic), a trained candidate must also beat the start by more than chance: every evaluation
scores the same origins with the same sampler draws, so the candidate's and the start's per-date scores are paired,
and their per-date difference must have a mean in the candidate's favour with a one-sided p-value below
``beat_start_p`` (Newey-West HAC t-test of ds_kronos.evaluation.significance, the dates' overlap in the lag).
Why: the validation score of a fine-tuned model wanders between evaluations, so the best of them can "beat" the
start by chance and still be worse on test (measured in docs/finetune.md). With fewer than 3 dates, or by loss,
there is no test and ``min_delta`` alone decides. The state lives in the run's
:class:`ds_kronos.train.position.Position`, so a resumed run decides exactly as an uninterrupted one. Every rank
holds the same all-reduced scores, so every rank reaches the same verdict; the run control
(ds_kronos.train.control.run_control) still agrees on a stop, at evaluations only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ds_kronos.errors import ConfigError
from ds_kronos.evaluation.significance import MIN_DATES, hac_lags, hac_mean_test

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
    start_daily: list[tuple[int, float]] | None = None
    """The start model's per-date scores (date, value), the pairs of the test against the start."""
    best_later_test: dict[str, Any] | None = None
    """The test against the start of the best trained candidate (:meth:`Selection.test_against_start`)."""
    scoring: dict[str, Any] | None = None
    """How the scores were computed: the metric and its set-up (:func:`scoring_setup`); a resumed run must score
    the same way (:meth:`Selection.adopt`). None: a state from before it was recorded."""

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "scores": [list(s) for s in self.scores],
                "start_daily": None if self.start_daily is None else [list(d) for d in self.start_daily]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SelectionState":
        daily = values.get("start_daily")
        return cls(**{**values, "scores": [tuple(s) for s in values.get("scores", [])],
                      "start_daily": None if daily is None else [tuple(d) for d in daily]})


@dataclass(frozen=True)
class Selection:
    metric: str = "loss"
    patience: int = 0
    """Stop after this many evaluations in a row without improvement (0: never)."""
    min_delta: float = 0.0
    beat_start_p: float = 0.05
    """One-sided p-value a trained candidate's per-date improvement on the start must be below (1: no test)."""

    def better(self, value: float, than: float | None) -> bool:
        """An improvement: ahead of ``than`` by more than ``min_delta`` (anything beats no score)."""
        if than is None:
            return True
        return value > than + self.min_delta if HIGHER_IS_BETTER[self.metric] else value < than - self.min_delta

    def ahead(self, value: float, than: float) -> bool:
        return value > than if HIGHER_IS_BETTER[self.metric] else value < than

    def test_against_start(self, state: SelectionState, daily: dict[int, float] | None) -> dict[str, Any] | None:
        """The paired test of a candidate's per-date scores against the start's (module docstring): the mean
        per-date gain over the start (positive: better), its HAC t-statistic and one-sided p-value, the dates paired
        and whether it passes. None when there is no test: by loss, ``beat_start_p`` 1, no start or too few dates."""
        if self.metric == "loss" or self.beat_start_p >= 1 or not state.start_daily or not daily:
            return None
        start = dict(state.start_daily)
        dates = [d for d in sorted(start) if d in daily and math.isfinite(daily[d]) and math.isfinite(start[d])]
        if len(dates) < MIN_DATES:
            return None
        sign = 1.0 if HIGHER_IS_BETTER[self.metric] else -1.0
        gains = np.array([sign * (daily[d] - start[d]) for d in dates])
        lags = hac_lags(len(dates), 1, 1)  # the validation dates are spread over the split: no window overlap
        test = hac_mean_test(gains, lags)
        if test["t"] is None:  # a constant gain series: no spread to test against
            mean, t, p = float(gains.mean()), None, 0.0 if gains.mean() > 0 else 1.0
        else:
            mean, t = test["mean"], test["t"]
            p = test["p_value"] / 2 if t > 0 else 1 - test["p_value"] / 2
        return {"gain": mean, "t": t, "p_one_sided": p, "dates": len(dates), "lags": lags,
                "passes": p < self.beat_start_p}

    def consider(self, state: SelectionState, step: int, value: float | None,
                 daily: dict[int, float] | None = None) -> bool:
        """Record the evaluation at ``step`` (``daily``: its per-date scores, for the test against the start);
        True when it is the new best (export it as ``best_model/``). A score that is undefined (None or NaN: e.g.
        no date with a RankIC) never improves; nor does a trained candidate that fails the test against the start."""
        defined = value is not None and math.isfinite(value)
        state.scores.append((step, value if defined else None))
        test = None
        if step == 0 and state.start is None and defined:
            state.start = value
            state.start_daily = sorted(daily.items()) if daily else None
        elif step > 0 and defined:
            test = self.test_against_start(state, daily)
            if state.best_later is None or self.ahead(value, state.best_later):
                state.best_later, state.best_later_step, state.best_later_test = value, step, test
        if defined and self.better(value, state.best) and (test is None or test["passes"]):
            state.best, state.best_step, state.stale = value, step, 0
            return True
        state.stale += 1
        if self.patience and state.stale >= self.patience:
            tested = " (and beat the start's by more than chance)" if state.best_later_test is not None else ""
            state.stop_reason = (f"early stop: {self.metric} did not improve on {state.best:.6g} (step "
                                 f"{state.best_step}) by more than {self.min_delta:g}{tested} in {state.stale} "
                                 f"evaluations"
                                 if state.best is not None else
                                 f"early stop: {self.metric} undefined in {state.stale} evaluations")
        return False

    def adopt(self, state: SelectionState, scoring: dict[str, Any],
              val_losses: list[tuple[int, float]] = ()) -> str | None:
        """Bind ``state`` (a new run's, or a resumed one's) to how this run scores (``scoring``, of
        :func:`scoring_setup`); returns a note to print, or raises ConfigError when the state's scores came from
        another metric or set-up, which this run's scores could not be compared with (a CRPS "beating" a loss).
        A state from before the set-up was recorded is resumed by loss when its scores are the run's validation
        losses (``val_losses``, the position's history: a run selected by loss), and refused otherwise: its metric
        and set-up cannot be known."""
        if state.scoring == scoring or not state.scores:
            state.scoring = scoring
            return None
        if state.scoring is None:
            losses = dict((step, loss) for step, loss in val_losses)
            if self.metric == "loss" and all(v is None or losses.get(step) == v for step, v in state.scores):
                state.scoring = scoring
                return ("--resume: the checkpoint's selection state does not record how it was scored (an older "
                        "ds_kronos); its scores are the validation losses: resumed as selected by loss")
            why = " and its scores are not the validation losses" if self.metric == "loss" else ""
            raise ConfigError(f"--resume: the checkpoint's selection state does not record how it was scored (an "
                              f"older ds_kronos){why}, so this run's {self.metric} cannot be compared with its best "
                              f"score; start a new run (new --save_dir) from its best_model/")
        raise ConfigError(f"--resume: the checkpoint's best model was selected by "
                          f"{describe_scoring(state.scoring, scoring)}; "
                          f"this run scores {describe_scoring(scoring, state.scoring)}: its scores cannot be "
                          f"compared with the checkpoint's; resume with the same selection options and start model "
                          f"(sampler.json), or start a new run (new --save_dir) from its best_model/")

    def improved_on_start(self, state: SelectionState) -> bool | None:
        """Whether ``best_model/`` is a trained model rather than the start (None: the start was not scored)."""
        if state.start is None:
            return None
        return state.best_step is not None and state.best_step > 0

    def summary(self, state: SelectionState) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "min_delta": self.min_delta,
                "beat_start_p": None if self.metric == "loss" else self.beat_start_p,
                "improved_on_start": self.improved_on_start(state), "start_score": state.start,
                "best_trained_test": state.best_later_test,
                "best_score": state.best, "best_step": state.best_step, "best_trained_score": state.best_later,
                "best_trained_step": state.best_later_step, "stop_reason": state.stop_reason, "scoring": state.scoring,
                "scores": [list(s) for s in state.scores]}

    def verdict_line(self, state: SelectionState) -> str | None:
        """The closing line about the start model, when the start was scored."""
        improved = self.improved_on_start(state)
        if improved is None:
            return None
        if improved:
            test = state.best_later_test if state.best_later_step == state.best_step else None
            return (f"best_model/ is step {state.best_step}: {self.metric} {state.best:.6g} vs {state.start:.6g} "
                    f"for the start model{_describe(test, self.beat_start_p)}")
        later = ("no later evaluation" if state.best_later is None else
                 f"the best trained model (step {state.best_later_step}) has {state.best_later:.6g}"
                 f"{_describe(state.best_later_test, self.beat_start_p)}")
        return (f"no evaluation improved on the start model by {self.metric} (start {state.start:.6g}; {later}"
                f"{f', min_delta {self.min_delta:g}' if self.min_delta else ''}): best_model/ is the start model")


def _describe(test: dict[str, Any] | None, threshold: float) -> str:
    if test is None:
        return ""
    t = "" if test["t"] is None else f"t {test['t']:.2f}, "
    return (f", paired over {test['dates']} dates: {t}one-sided p {test['p_one_sided']:.3g} "
            f"{'<' if test['passes'] else '>='} --beat_start_p {threshold:g}")


def scoring_setup(metric: str, val_samples: int, forecasts: dict[str, Any] | None) -> dict[str, Any]:
    """What a selection score depends on besides the weights: the metric and, by loss, the validation samples; by
    forecast, the forecast validation's set-up (ds_kronos.train.validation.forecast_validation.ForecastValidation.setup:
    origins, paths, seed, sampler settings)."""
    if metric == "loss":
        return {"metric": metric, "val_samples": val_samples}
    return {"metric": metric, **(forecasts or {})}


def describe_scoring(scoring: dict[str, Any], other: dict[str, Any] | None = None) -> str:
    """``scoring``'s metric, and the set-up entries where it differs from ``other``'s (default: every entry)."""
    shown = {k: v for k, v in scoring.items() if k != "metric" and (other is None or other.get(k) != v)}
    return scoring["metric"] + (f" ({', '.join(f'{k} {v}' for k, v in shown.items())})" if shown else "")
