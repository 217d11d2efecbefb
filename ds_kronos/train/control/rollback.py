"""``--on_divergence rollback``: on a diverged loss, go back to the last checkpoint, skip the suspect steps, go on.

The divergence guard (ds_kronos.train.control.divergence) raises :class:`Diverged` on every rank at the same check
(its verdict is all-reduced). The training loop catches it and asks :meth:`Rollbacks.roll_back`; with ``rollback``
every rank

1. restores the run's last checkpoint through the checkpoint component (ds_kronos.train.checkpoint.checkpointer,
   the loading code of ``--resume``: model, optimizer, scheduler, RNG, data position, and the ``best_model/`` of
   that step with its selection state); only the tag this run wrote or resumed from, never an older run's tag in
   the same folder;
2. skips the steps since the last check that passed, up to the step where the divergence was seen: the offending
   micro-batch is among them (every step before had a finite, not exploded mean loss), so they are passed over
   (ds_kronos.train.control.skipped_steps); the steps between the checkpoint and that check are trained again,
   identically;
3. multiplies the lr from then on by ``--rollback_lr_factor`` (cumulative: f**n after n roll-backs), on top of the
   schedule, which keeps its own clock (the step number);
4. records the roll-back in the position (so in summary.json and in every later checkpoint: a resumed run keeps
   skipping those steps and keeps the factor) and rank 0 prints one line; the loop then goes on from the restored
   position.

No checkpoint yet, ``--max_rollbacks`` reached, or a checkpoint that cannot be loaded: the run stops as with
``--on_divergence stop``, the line saying why. A run given the recorded ``skipped_steps`` with ``--skip_steps`` from
the start trains the same steps on the same data, so it ends with the same weights (tests/test_rollback.py).
"""

from __future__ import annotations

import math
from typing import Any

from ds_kronos.console import say
from ds_kronos.errors import UserError
from ds_kronos.train.control.divergence import Diverged, DivergenceGuard
from ds_kronos.train.control.skipped_steps import SkippedSteps, describe_spans, micro_batch_spans

ROLLBACK = "rollback"


def lr_factor(rollbacks: list[dict[str, Any]]) -> float:
    """The lr factor in force after these roll-backs: the product of theirs."""
    return math.prod(record["lr_factor"] for record in rollbacks)


class ScaledSchedule:
    """The engine's lr scheduler with every lr it sets multiplied by ``factor``: DeepSpeed's engine steps it after
    each optimizer step and saves and loads its state (the scheduler's own; the factor lives in the position)."""

    def __init__(self, inner, factor: float):
        self.inner, self.factor = inner, factor

    def step(self, *args, **kwargs) -> None:
        self.inner.step(*args, **kwargs)
        for group in self.inner.optimizer.param_groups:
            group["lr"] *= self.factor

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class Rollbacks:
    """The divergence policy: asked by the loop when a :class:`Diverged` reaches it. Owns nothing of the run; it
    adds the skipped steps to the run control's :class:`SkippedSteps` and restarts its guard (both handed to it by
    the run control, their owner) and restores through the checkpoint component."""

    def __init__(self, context, skips: SkippedSteps, guard: DivergenceGuard):
        self.ctx, self.skips, self.guard = context, skips, guard
        self.enabled = context.config.on_divergence == ROLLBACK

    def resume(self, position) -> None:
        """Take up the roll-backs of a resumed run: their skipped steps and their lr factor."""
        for record in position.rollbacks:
            self.skips.add(*record["skipped_steps"])
        set_lr_factor(self.ctx.engine, lr_factor(position.rollbacks), loaded=lr_factor(position.rollbacks))

    def roll_back(self, exc: Diverged, position, checkpoints) -> Any:
        """Collective (every rank holds the same verdict): restore the last checkpoint through ``checkpoints`` (the
        run's :class:`ds_kronos.train.checkpoint.checkpointer.Checkpointer`), skip, scale, record; returns the
        restored position. Raises :class:`Diverged` (``exc`` itself when the policy is to stop) saying why not."""
        if not self.enabled:
            raise exc
        c, rt, data, engine = self.ctx.config, self.ctx.runtime, self.ctx.data, self.ctx.engine
        done = list(position.rollbacks)
        if len(done) >= c.max_rollbacks:
            raise Diverged(f"{exc}; {len(done)} roll-back(s) already (--max_rollbacks {c.max_rollbacks}): stopped")
        if checkpoints.last_step < 0:
            first = c.save_every or data.steps_per_epoch
            raise Diverged(f"{exc}; no checkpoint to roll back to yet (the first is due at step {first}: a smaller "
                           f"--save_every makes one sooner)")
        detected, tag = position.step, checkpoints.last_tag
        problem = checkpoints.restore_problem()
        if problem:
            raise Diverged(f"{exc}; cannot roll back to {tag}: {problem}")
        try:
            restored = checkpoints.restore_last()
        except UserError as error:
            raise Diverged(f"{exc}; could not roll back to {tag}: {error}") from error
        first = min(max(self.guard.good_through, restored.step) + 1, detected)
        record = {"detected_at_step": detected, "restored_step": restored.step, "skipped_steps": [first, detected],
                  "skipped_micro_batches": micro_batch_spans(first, detected, data.steps_per_epoch,
                                                             data.batch.grad_accum),
                  "lr_factor": c.rollback_lr_factor, "reason": str(exc)}
        loaded = lr_factor(restored.rollbacks)
        restored.rollbacks = done + [record]
        self.skips.add(first, detected)
        set_lr_factor(engine, lr_factor(restored.rollbacks), loaded)
        self.guard.restart(restored.step, int(getattr(engine, "skipped_steps", 0)))
        if rt.is_main:
            lr = f"; lr x{c.rollback_lr_factor:g} from here on" if c.rollback_lr_factor != 1 else ""
            say(f"roll-back {len(done) + 1} of at most {c.max_rollbacks}: divergence seen at step {detected}; "
                f"restored {tag}; steps {first}-{detected} will be skipped "
                f"({describe_spans(record['skipped_micro_batches'])}){lr}")
        return restored


def set_lr_factor(engine, factor: float, loaded: float) -> None:
    """Make the engine's lr ``factor`` times the schedule's from now on. ``loaded``: the factor of the lr its
    optimizer holds now (a checkpoint stores the scaled lr of its step)."""
    scheduler = engine.lr_scheduler
    if factor != loaded:
        for group in (scheduler.optimizer if scheduler is not None else engine.optimizer).param_groups:
            group["lr"] *= factor / loaded
    if isinstance(scheduler, ScaledSchedule):
        scheduler.factor = factor
    elif scheduler is not None and factor != 1.0:
        engine.lr_scheduler = ScaledSchedule(scheduler, factor)
