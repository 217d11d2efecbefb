"""``--on_divergence rollback``: on a diverged loss, go back to the last checkpoint, skip the suspect steps, go on.

The divergence guard (ds_kronos.train.divergence) raises :class:`Diverged` on every rank at the same check (its
verdict is all-reduced). With ``rollback``, :meth:`Rollbacks.run` catches it and every rank

1. loads the run's last checkpoint, the tag of ``trainer.checkpointed_step``, through the loading code of
   ``--resume`` (ds_kronos.train.resume.load_position: model, optimizer, scheduler, RNG, data position, and the
   ``best_model/`` of that step with its selection state); only the tag this run wrote or resumed from, never an
   older run's tag in the same folder;
2. skips the steps since the last check that passed, up to the step where the divergence was seen: the offending
   micro-batch is among them (every step before had a finite, not exploded mean loss), so they are passed over
   (ds_kronos.train.skipped_steps); the steps between the checkpoint and that check are trained again, identically;
3. multiplies the lr from then on by ``--rollback_lr_factor`` (cumulative: f**n after n roll-backs), on top of the
   schedule, which keeps its own clock (the step number);
4. records the roll-back in the position (so in summary.json and in every later checkpoint: a resumed run keeps
   skipping those steps and keeps the factor) and rank 0 prints one line.

No checkpoint yet, ``--max_rollbacks`` reached, or a checkpoint that cannot be loaded: the run stops as with
``--on_divergence stop``, the line saying why. A run given the recorded ``skipped_steps`` with ``--skip_steps`` from
the start trains the same steps on the same data, so it ends with the same weights (tests/test_rollback.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from ds_kronos.console import say
from ds_kronos.errors import ConfigError, UserError
from ds_kronos.train import metrics_log
from ds_kronos.train.config import rollback_checkpoint_problem
from ds_kronos.train.divergence import Diverged
from ds_kronos.train.resume import ResumeSource, load_position
from ds_kronos.train.skipped_steps import describe_spans, micro_batch_spans
from ds_kronos.train.training_state import Candidate, tag_for

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
    """The trainer's divergence policy; reads and sets the trainer's public attributes (as reporting does)."""

    def __init__(self, trainer):
        self.trainer, c = trainer, trainer.config
        self.enabled = c.on_divergence == ROLLBACK
        problem = rollback_checkpoint_problem(c.save_every, c.epochs, c.max_steps, trainer.data.steps_per_epoch)
        if self.enabled and problem and not trainer.resume_source:
            raise ConfigError(problem)  # what the options alone could not tell: the data sized the epochs

    def run(self, train: Callable[[], str]) -> str:
        """``train()`` (the trainer's loop, which continues from the trainer's position), again after each
        roll-back; returns its status. The roll-backs of a resumed run are taken up first."""
        t = self.trainer
        for record in t.position.rollbacks:
            t.skips.add(*record["skipped_steps"])
        set_lr_factor(t.engine, lr_factor(t.position.rollbacks), loaded=lr_factor(t.position.rollbacks))
        while True:
            try:
                return train()
            except Diverged as exc:
                if not self.enabled:
                    raise
                self._roll_back(exc)

    def _roll_back(self, exc: Diverged) -> None:
        """Collective (every rank holds the same verdict): restore, skip, scale, record; or raise :class:`Diverged`
        saying why not."""
        t, c, rt = self.trainer, self.trainer.config, self.trainer.runtime
        t.timed_since = None  # the undone steps' time is not training time (the clock goes back to the checkpoint's)
        done = list(t.position.rollbacks)
        if len(done) >= c.max_rollbacks:
            raise Diverged(f"{exc}; {len(done)} roll-back(s) already (--max_rollbacks {c.max_rollbacks}): stopped")
        if t.checkpointed_step < 0:
            first = c.save_every or t.data.steps_per_epoch
            raise Diverged(f"{exc}; no checkpoint to roll back to yet (the first is due at step {first}: a smaller "
                           f"--save_every makes one sooner)")
        detected, tag = t.position.step, tag_for(t.checkpointed_step)
        source = self._source(tag, exc)
        try:
            _, position = load_position(t.engine, rt, t.checkpoint_dir, source, t.batch, c.seed, t.save_dir)
        except UserError as error:
            raise Diverged(f"{exc}; could not roll back to {tag}: {error}") from error
        first = min(max(t.guard.good_through, position.step) + 1, detected)
        record = {"detected_at_step": detected, "restored_step": position.step, "skipped_steps": [first, detected],
                  "skipped_micro_batches": micro_batch_spans(first, detected, t.data.steps_per_epoch,
                                                             t.batch.grad_accum),
                  "lr_factor": c.rollback_lr_factor, "reason": str(exc)}
        loaded = lr_factor(position.rollbacks)
        position.rollbacks = done + [record]
        t.position = position
        t.skips.add(first, detected)
        set_lr_factor(t.engine, lr_factor(position.rollbacks), loaded)
        t.guard.restart(position.step, int(getattr(t.engine, "skipped_steps", 0)))
        t.running.zero_()
        t.running_count = 0
        if rt.is_main:
            metrics_log.restart(t.save_dir, position, t.selection.metric)  # the evaluations after it are undone
            lr = f"; lr x{c.rollback_lr_factor:g} from here on" if c.rollback_lr_factor != 1 else ""
            say(f"roll-back {len(done) + 1} of at most {c.max_rollbacks}: divergence seen at step {detected}; "
                f"restored {tag}; steps {first}-{detected} will be skipped "
                f"({describe_spans(record['skipped_micro_batches'])}){lr}")

    def _source(self, tag: str, exc: Diverged) -> ResumeSource:
        """The checkpoint to go back to: the one this run wrote last, or the one it resumed from."""
        t = self.trainer
        resumed = t.resume_source
        if resumed and any(candidate.tag == tag for candidate in resumed.candidates):
            return dataclasses.replace(resumed, candidates=tuple(c for c in resumed.candidates if c.tag == tag))
        if resumed and resumed.universal:
            # The engine loads universal checkpoints only (DeepSpeed's load_universal), and this tag is not one.
            raise Diverged(f"{exc}; cannot roll back to {tag}: this run resumed from a checkpoint of another world "
                           f"size, after which DeepSpeed's engine loads universal checkpoints only; continue with "
                           f"--resume instead")
        return ResumeSource((Candidate(tag, t.layout),), t.layout, elastic=False, universal=False)


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
