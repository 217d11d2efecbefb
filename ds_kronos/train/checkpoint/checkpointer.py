"""The run's checkpoint component: saving the training state when due, restoring it (``--resume``, a roll-back)
and publishing the exports (best_model/, final_model/, initial_model/).

It owns which step was saved last and the layout recorded in each checkpoint; the position it saves is the loop's,
handed in at each call. Before any save it runs ``before_save`` (the run control's divergence check): a diverged
state is never saved over the last good one.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

from ds_kronos.train.checkpoint.best_model import keep_best_model
from ds_kronos.train.checkpoint.export import export_fp32_state_dict
from ds_kronos.train.checkpoint.resume import ResumeSource, load_position, resume_position
from ds_kronos.train.checkpoint.training_state import Candidate, RunLayout, save_training_state, tag_for
from ds_kronos.train.position import Position


class Checkpointer:
    def __init__(self, context, resume_source: ResumeSource | None, layout: RunLayout,
                 export_extra: Callable[..., Any] | None, before_save: Callable[[int], None]):
        self.ctx, self.resume_source, self.layout = context, resume_source, layout
        self.export_extra = export_extra
        """What each export adds (the sampler settings its forecasts were scored with; None: nothing)."""
        self.before_save = before_save
        self.last_step = -1
        """The step of the last checkpoint this run wrote or resumed from (-1: none yet)."""

    @property
    def last_tag(self) -> str:
        return tag_for(self.last_step)

    # ---------------------------------------------------------------------------------------------- save
    def resume(self) -> Position | None:
        """``--resume``: the position of the newest loadable checkpoint, loaded into the engine (collective); None
        for a new run."""
        if not self.resume_source:
            return None
        c, ctx = self.ctx.config, self.ctx
        position = resume_position(ctx.engine, ctx.runtime, ctx.checkpoint_dir, self.resume_source, ctx.batch, c.seed,
                                   ctx.save_dir)
        self.last_step = position.step
        return position

    def due(self, step: int, end_of_epoch: bool) -> bool:
        """A checkpoint every ``--save_every`` steps, else at the end of each epoch."""
        save_every = self.ctx.config.save_every
        return bool(save_every and step % save_every == 0) or (end_of_epoch and not save_every)

    def maybe_save(self, position: Position, end_of_epoch: bool) -> bool:
        """Save when due (collective); whether it did."""
        if not self.due(position.step, end_of_epoch):
            return False
        self.save(position)
        return True

    def save(self, position: Position) -> None:
        """The training state of ``position.step`` (collective; once per step)."""
        if self.last_step == position.step:
            return
        self.before_save(position.step)  # never save a diverged state over the last good one
        ctx = self.ctx
        save_training_state(ctx.engine, ctx.runtime, ctx.checkpoint_dir, position.step, position.to_client_state(),
                            ctx.config.keep_last, self.layout, partial(keep_best_model, ctx.save_dir,
                                                                       position.selection))
        self.last_step = position.step

    def export(self, folder: str) -> None:
        """The fp32 master weights into ``save_dir/folder`` in the published format. Collective."""
        ctx = self.ctx
        state = export_fp32_state_dict(ctx.engine, ctx.built.frozen_fp32, keep=ctx.runtime.is_main)
        if ctx.runtime.is_main:
            ctx.task.publish(ctx.save_dir / folder, state, self.export_extra)

    # ------------------------------------------------------------------------------------------- restore
    def restore_problem(self) -> str | None:
        """Why the last checkpoint cannot be restored into this engine, or None."""
        resumed = self.resume_source
        if resumed and resumed.universal and not any(c.tag == self.last_tag for c in resumed.candidates):
            # The engine loads universal checkpoints only (DeepSpeed's load_universal), and this tag is not one.
            return ("this run resumed from a checkpoint of another world size, after which DeepSpeed's engine loads "
                    "universal checkpoints only; continue with --resume instead")
        return None

    def restore_last(self) -> Position:
        """Collective: load the last checkpoint (the one this run wrote last, or the one it resumed from) through the
        loading code of ``--resume``; returns its position. Raises UserError when it cannot be loaded."""
        ctx, tag = self.ctx, self.last_tag
        resumed = self.resume_source
        if resumed and any(candidate.tag == tag for candidate in resumed.candidates):
            source = dataclasses.replace(resumed, candidates=tuple(c for c in resumed.candidates if c.tag == tag))
        else:
            source = ResumeSource((Candidate(tag, self.layout),), self.layout, elastic=False, universal=False)
        _, position = load_position(ctx.engine, ctx.runtime, ctx.checkpoint_dir, source, ctx.batch, ctx.config.seed,
                                    ctx.save_dir)
        return position
