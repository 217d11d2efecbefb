"""The run's validation component: when an evaluation is due, running it (the token loss and, when asked, the
forecasts) and the selection's verdict on it (a new best model? an early stop?).

It owns the selection rules and the forecast validation; the selection state and history it records into are the
position's (saved in every checkpoint, so a resumed run decides as an uninterrupted one), handed in at each call.
What follows from a verdict is the loop's: the best model's export (the checkpoint component), the lines (observe),
the agreement on an early stop (the run control).
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_kronos.train.validation.forecast_validation import ForecastScores, ForecastValidation
from ds_kronos.train.validation.loss import ValidationResult, validate
from ds_kronos.train.validation.selection import scoring_setup


@dataclass(frozen=True)
class Verdict:
    label: str
    result: ValidationResult
    forecast: ForecastScores | None
    improved: bool
    """The new best by the selection metric: export it as best_model/."""


class Validator:
    def __init__(self, context, forecasts: ForecastValidation | None):
        self.ctx, self.forecasts = context, forecasts
        self.selection = context.config.selection()

    def adopt(self, position) -> str | None:
        """Bind the position's selection state to how this run scores (a resume must score as it was scored);
        returns a note to print."""
        setup = None if self.forecasts is None else self.forecasts.setup()
        return self.selection.adopt(position.selection, scoring_setup(
            self.selection.metric, len(self.ctx.data.val_set), setup), position.history.val)

    def due(self, step: int, end_of_epoch: bool) -> str | None:
        """The label of the evaluation due after ``step``, if any."""
        eval_every = self.ctx.config.eval_every
        return "end of epoch" if end_of_epoch else "periodic" if eval_every and step % eval_every == 0 else None

    @staticmethod
    def validated_at(position) -> bool:
        return bool(position.history.val) and position.history.val[-1][0] == position.step

    def validate(self, position, label: str) -> Verdict:
        """Collective: evaluate the engine's model at ``position.step`` and record it in the position."""
        ctx, pos = self.ctx, position
        result = validate(ctx.engine, ctx.task, ctx.data.val_loader, ctx.runtime, ctx.config.seed)
        pos.last_val = result.loss
        pos.first_val = result.loss if pos.first_val is None else pos.first_val
        pos.best_val = min(pos.best_val, result.loss)
        pos.history.val.append((pos.step, result.loss))
        if result.source_losses:
            pos.history.val_sources.append((pos.step, list(result.source_losses)))
        forecast = None
        if self.forecasts is not None:
            forecast = self.forecasts.score(ctx.engine, ctx.task.tokenizer, ctx.runtime)
            pos.history.forecast.append((pos.step, forecast.crps, forecast.rank_ic, forecast.skill))
        metric = self.selection.metric
        improved = self.selection.consider(pos.selection, pos.step, *(
            (result.loss, None) if metric == "loss" else (forecast.value(metric), forecast.daily[metric])))
        return Verdict(label, result, forecast, improved)
