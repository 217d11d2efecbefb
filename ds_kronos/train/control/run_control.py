"""THE stop decision of a training run: one component that owns every reason to stop and answers, at each step
end, whether and why the run ends there.

The reasons, and where the ranks agree on each (no collective of its own; the cadences of before):

- a preemption signal, a lost launcher, ``--exit_after_steps`` (ds_kronos.train.control.preemption): the per-step
  host agreement, at every optimizer-step boundary when signals are listened for, and again after a validation or
  a save there (both can take minutes); the run saves that step and stops at once;
- an early stop (ds_kronos.train.validation.selection): every rank holds the same verdict, agreed right after the
  evaluation, riding the host agreement when signals are listened for, else in one small all-reduce of its own
  (at evaluations only, as before);
- the stop file (ds_kronos.train.control.stop_file): rides the log line's all-reduce (at log intervals);
- divergence (ds_kronos.train.control.divergence): the guard's all-reduce every ``min(log_every, CHECK_EVERY)``
  steps and before any checkpoint; it raises :class:`Diverged`, which the loop hands to :meth:`RunControl.roll_back`
  (``--on_divergence``);
- the last step (``total_steps``).

A stop file or an early stop lets the step finish (its due validation and checkpoint); a signal does not. Every
path ends in the Trainer's one ending: a checkpoint, the exports the reason allows, summary.json with its status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ds_kronos.runtime import all_reduce_max
from ds_kronos.train.control.divergence import CHECK_EVERY, Diverged, DivergenceGuard
from ds_kronos.train.control.preemption import StopRequests
from ds_kronos.train.control.rollback import Rollbacks
from ds_kronos.train.control.skipped_steps import SkippedSteps, parse_step_ranges
from ds_kronos.train.control.stop_file import StopFile
from ds_kronos.train.observe.status import FINISHED, PREEMPTED, STOPPED_BY_REQUEST, STOPPED_EARLY

ANOTHER_RANKS_VERDICT = "early stop (another rank's verdict)"


@dataclass(frozen=True)
class StopReason:
    status: str
    """The run's status in summary.json (ds_kronos.train.observe.status)."""
    line: str | None = None
    """What rank 0 says once the run's end is written."""

    @property
    def at_once(self) -> bool:
        """A stop request (a signal, --exit_after_steps): save this step and stop, no final validation or export."""
        return self.status in (PREEMPTED, STOPPED_BY_REQUEST)


class RunControl:
    """Owns the stop requests, the stop file, the divergence guard, the skipped steps and the roll-back policy."""

    def __init__(self, context, stops: StopRequests, stop_file: StopFile):
        c, rt = context.config, context.runtime
        self.ctx, self.stops, self.stop_file = context, stops, stop_file
        self.guard = DivergenceGuard(fp16=context.ds_view.fp16, device=rt.device)
        self.skips = SkippedSteps(parse_step_ranges(c.skip_steps), context.batch.grad_accum,
                                  context.data.micro_per_epoch, context.engine, rt.is_main)
        """--skip_steps, and the steps of roll-backs."""
        self.rollbacks = Rollbacks(context, self.skips, self.guard)
        self.lr_used = math.nan
        """The lr of the last optimizer step, for the divergence message."""

    # -------------------------------------------------------------------------------------------- per step
    def record(self, losses) -> None:
        """A micro-batch's losses (on the device; no host sync)."""
        self.guard.add(losses[0])

    def log_flags(self) -> list[float]:
        """What rides the log line's all-reduce: the stop file's flag."""
        return [self.stop_file.flag()]

    def agree_on_log(self, flags: list[float], step: int) -> None:
        self.stop_file.agree(flags, step)

    def maybe_check(self, step: int, lr_used: float) -> None:
        """The divergence check at its cadence."""
        self.lr_used = lr_used
        if step % min(self.ctx.config.log_every, CHECK_EVERY) == 0:
            self.check(step)

    def check(self, step: int) -> None:
        """Every rank reaches the same verdict from the all-reduced losses since the last check (a host sync);
        raises :class:`Diverged`."""
        self.guard.check_all_ranks(step, self.lr_used, int(getattr(self.ctx.engine, "skipped_steps", 0)))

    def agree(self, position, evaluated: bool = False) -> StopReason | None:
        """The ranks' agreement at a step boundary (a collective when signals are listened for; every rank calls it
        at the same points), carrying the early-stop verdict after an evaluation there (``evaluated``). Returns the
        reason to stop at once (a signal, --exit_after_steps), else None."""
        early = (float(position.selection.stop_reason is not None),) if evaluated else ()
        self.stops.poll(position.step, self.ctx.total_steps, self.ctx.runtime, early)
        if evaluated:
            self.agree_on_early_stop(position, self.stops.agreed)
        return StopReason(self.stops.status) if self.stops.reason else None

    def agree_on_early_stop(self, position, agreed: list[float] | None = None) -> None:
        """After an evaluation: every rank holds the same reduced scores, so the same verdict; one reduction (or
        ``agreed``, the host agreement's sum) guarantees that every rank stops at the same step."""
        selection = position.selection
        seen = agreed[0] if agreed is not None else all_reduce_max(int(selection.stop_reason is not None),
                                                                   self.ctx.runtime.device)
        if seen and not selection.stop_reason:
            selection.stop_reason = ANOTHER_RANKS_VERDICT

    def after_step(self, position) -> StopReason | None:
        """THE decision once the step is done (its due validation and save too): a stop at once agreed earlier in the
        step, an early stop, the stop file; None to go on (the loop ends by itself at the last step)."""
        if self.stops.reason:
            return StopReason(self.stops.status)
        if position.selection.stop_reason or self.stop_file.requested:
            return self.ending(position)
        return None

    def ending(self, position) -> StopReason:
        """How a run that ends with its final model ends: an early stop, the stop file or the last step."""
        if position.selection.stop_reason:
            return StopReason(STOPPED_EARLY, f"{position.selection.stop_reason}: stopped at step {position.step} of "
                                             f"{self.ctx.total_steps}")
        return StopReason(self.stop_file.status or FINISHED)

    def final_validation(self) -> bool:
        """Whether the run's end validates (not when stopped by the stop file: a stop is asked for to save time)."""
        return not self.stop_file.requested

    def closing_line(self, tag: str, step: int) -> str:
        return self.stops.closing_line(tag, step)

    # ------------------------------------------------------------------------------------------ divergence
    def resume(self, position) -> None:
        """A resumed run's roll-backs: their skipped steps and lr factor."""
        self.rollbacks.resume(position)

    def roll_back(self, exc: Diverged, position, checkpoints):
        """``--on_divergence``: the restored position to go on from, or :class:`Diverged` (the run stops)."""
        return self.rollbacks.roll_back(exc, position, checkpoints)

