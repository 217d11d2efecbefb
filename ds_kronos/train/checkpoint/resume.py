"""``--resume``: which checkpoint to continue from, and loading it with a fall-back to older complete ones.

Decided before the engine is built (an elastic resume needs ``load_universal`` in the DeepSpeed config): the
complete checkpoints, newest first (see ds_kronos.train.checkpoint.training_state), the layout of the run that wrote
them, and whether the world size changed. What DeepSpeed cannot load is refused first with one line: another ZeRO stage
(but ZeRO-1 <-> 2), another optimizer offload device, and a changed world size with NVMe optimizer offload.
Loading then tries them in turn; every rank agrees on each attempt (one small
all-reduce), so a file that one rank cannot read moves all ranks on together. On another world size rank 0 first
converts the candidate (ds_kronos.train.checkpoint.universal) while the others wait for its outcome outside any
collective, so a conversion that outlasts ``--dist_timeout`` is not taken for a rank that stopped answering.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ds_kronos.console import say
from ds_kronos.deepspeed_json.resolve import BatchLayout
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.errors import UserError
from ds_kronos.runtime import Runtime, all_reduce_max, outcome_on_main, rank_seed, seed_everything
from ds_kronos.train.checkpoint.best_model import restore_best_model
from ds_kronos.train.checkpoint.training_state import (
    Candidate,
    RunLayout,
    load_training_state,
    needs_universal,
    resume_candidates,
    written_offload,
)
from ds_kronos.train.checkpoint.universal import (
    CONVERSION_WAIT_S,
    conversion_space_problem,
    convert_to_universal,
    remove_universal_copy,
)
from ds_kronos.train.position import Position


@dataclass(frozen=True)
class ResumeSource:
    candidates: tuple[Candidate, ...]
    """Complete checkpoints written with the newest one's layout, newest first."""
    layout: RunLayout
    elastic: bool
    """The world size differs from the one that wrote the checkpoints."""
    universal: bool
    """Load DeepSpeed universal copies (elastic, and the optimizer state is partitioned by rank)."""


def find_resume_source(checkpoint_dir: Path, batch: BatchLayout, runtime: Runtime, say: Callable[[str], None],
                       ds_config: dict[str, Any], trained: str) -> ResumeSource | None:
    """``trained``: what this run trains (--finetune's signature), which must be what the checkpoints hold.

    None when ``checkpoint_dir`` holds no checkpoint at all (no tag, no ``latest``): the run starts from scratch,
    as the first run of a job script that always passes --resume must. Tags that exist but none of which is complete
    are an error: a damaged run must not silently start again from step 0."""
    candidates, notes = resume_candidates(checkpoint_dir)
    if runtime.is_main:
        for note in notes:
            say(f"--resume: {note}")
    if not candidates and not notes:
        if runtime.is_main:
            say(f"--resume: no checkpoint in {checkpoint_dir} yet: starting from scratch")
        return None
    if not candidates:
        raise UserError(f"--resume: no complete checkpoint to resume from in {checkpoint_dir} ({len(notes)} passed "
                        f"over, see above); a damaged run does not start again from step 0: move the folder away to "
                        f"start afresh")
    layout = candidates[0].layout
    check_same_engine(checkpoint_dir, candidates[0], ds_config)
    if layout.trained is not None and layout.trained != trained:
        raise UserError(f"--resume: {candidates[0].tag} was written by a run that trains {layout.trained}; this run "
                        f"trains {trained}. Resume with the same --finetune options (another kind of fine-tuning "
                        f"is a new run: start it from an exported model folder, in a new --save_dir)")
    if layout.batch.global_batch != batch.global_batch:
        raise UserError(f"--resume: {candidates[0].tag} was trained with a global batch of {layout.batch.describe()}; "
                        f"this run has {batch.micro_batch} x {batch.grad_accum} x {runtime.world_size} = "
                        f"{batch.global_batch}. Keep the global batch when resuming (on another number of ranks, "
                        f"change --batch_size/--grad_accum so the product stays {layout.batch.global_batch})")
    elastic = layout.batch.world_size != runtime.world_size
    offloads = (DeepSpeedView.of(ds_config).offload_optimizer, written_offload(checkpoint_dir, candidates[0]))
    if elastic and "nvme" in offloads:
        raise UserError(f"--resume: {candidates[0].tag} was written by {layout.batch.world_size} rank(s) and this run "
                        f"has {runtime.world_size}, which NVMe optimizer offload does not support (each rank's swapped "
                        f"optimizer state is saved as its own files, which DeepSpeed's universal conversion does not "
                        f"read): resume on {layout.batch.world_size} rank(s)")
    same_layout = tuple(c for c in candidates if c.layout == layout)
    universal = elastic and needs_universal(checkpoint_dir, candidates[0].tag)
    if universal:
        problem = conversion_space_problem(checkpoint_dir, candidates[0].tag)
        if problem:
            raise UserError(f"--resume: {problem}: free space there, or resume on {layout.batch.world_size} rank(s)")
    return ResumeSource(same_layout, layout, elastic, universal)


STAGES_DEEPSPEED_LOADS_ACROSS = {1, 2}
"""ZeRO-1 and ZeRO-2 save the same optimizer state (stage_1_and_2.py), so either loads the other's checkpoint."""


def check_same_engine(checkpoint_dir: Path, newest: Candidate, ds_config: dict[str, Any]) -> None:
    """Refuse, with one line naming both, a ZeRO stage or an optimizer offload that DeepSpeed cannot load the
    checkpoint into (it would report every tag as unreadable, or load it wrongly)."""
    written, stage = newest.layout.zero_stage, DeepSpeedView.of(ds_config).zero_stage
    if written != stage and not {written, stage} <= STAGES_DEEPSPEED_LOADS_ACROSS:
        raise UserError(f"--resume: {newest.tag} was written by a ZeRO-{written} run and this run is ZeRO-{stage}: "
                        f"DeepSpeed loads a checkpoint at the stage that wrote it (or across ZeRO-1 and ZeRO-2) "
                        f"only; resume with a ZeRO-{written} config")
    was, now = written_offload(checkpoint_dir, newest), DeepSpeedView.of(ds_config).offload_optimizer
    if was is not None and was != now:
        raise UserError(f"--resume: {newest.tag} was written with the optimizer state {_OFFLOAD_WORDS[was]} and "
                        f"this run has it {_OFFLOAD_WORDS[now]}: resume with the same offload_optimizer device")


_OFFLOAD_WORDS = {"none": "not offloaded", "cpu": "offloaded to the CPU", "nvme": "offloaded to NVMe"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _anyone_failed(problem: str | None, runtime: Runtime) -> bool:
    return all_reduce_max(int(problem is not None), runtime.device) > 0


def _converted(checkpoint_dir: Path, candidate: Candidate, source: ResumeSource, runtime: Runtime,
               say: Callable[[str], None]) -> str | None:
    """Rank 0: ``candidate`` converted to a universal checkpoint; None, or why it could not be."""
    say(f"--resume: {candidate.tag} was written by {source.layout.batch.world_size} rank(s), this run has "
        f"{runtime.world_size}: converting it to a DeepSpeed universal checkpoint")
    try:
        conversion = convert_to_universal(checkpoint_dir, candidate.tag)
    except UserError as exc:
        return str(exc)
    say(f"--resume: converted {candidate.tag} in {conversion.describe()}" if conversion.seconds else
        f"--resume: {candidate.tag} was converted before: loading that copy")
    return None


def load_newest(engine, runtime: Runtime, checkpoint_dir: Path, source: ResumeSource,
                say: Callable[[str], None]) -> tuple[Candidate, dict[str, Any]]:
    """Load the newest candidate that every rank can read; collective."""
    for candidate in source.candidates:
        problem = None
        if source.universal:
            problem = outcome_on_main(f"universal/{candidate.tag}",
                                      partial(_converted, checkpoint_dir, candidate, source, runtime, say), runtime,
                                      CONVERSION_WAIT_S, f"converting {candidate.tag} to a universal checkpoint")
            if problem is not None:
                if runtime.is_main:
                    say(f"--resume: skipped {candidate.tag}: {problem}")
                continue
        state = None
        try:
            state = load_training_state(engine, runtime, checkpoint_dir, candidate.tag, universal=source.universal,
                                        restore_rng=not source.elastic)
            if state is None:
                problem = "DeepSpeed found nothing to load"
        except Exception as exc:  # noqa: BLE001 - any unreadable file in a complete-looking tag: try an older one
            problem = _first_line(exc)
        if not _anyone_failed(problem, runtime):
            return candidate, state
        if runtime.is_main:
            say(f"--resume: skipped {candidate.tag}: {problem or 'another rank could not read its files'}")
            if source.universal:
                remove_universal_copy(checkpoint_dir, candidate.tag)  # every rank is past loading it
    raise UserError(f"--resume: none of the {len(source.candidates)} complete checkpoint(s) in {checkpoint_dir} "
                    f"could be loaded (see the lines above)")


def load_position(engine, runtime: Runtime, checkpoint_dir: Path, source: ResumeSource, batch: BatchLayout,
                  seed: int, save_dir: Path) -> tuple[Candidate, Position]:
    """Collective: load the newest readable checkpoint (:func:`load_newest`) and return it with where the run stood
    then; rank 0 puts back the ``best_model/`` of that step (ds_kronos.train.checkpoint.best_model). On another world
    size (elastic) the data position is kept in global samples, so the same global batch continues the same sample
    order, and ranks without a saved random stream of their own start one for this step. ``--resume`` and a
    roll-back (ds_kronos.train.control.rollback) both load through here."""
    candidate, state = load_newest(engine, runtime, checkpoint_dir, source, say)
    position = Position.from_client_state(state)
    if runtime.is_main:
        note = restore_best_model(save_dir, checkpoint_dir / candidate.tag, position.selection)
        if note:
            say(f"{candidate.tag}: {note}")
    if source.elastic:
        samples_in_epoch = position.micro_in_epoch * source.layout.batch.micro_batch * source.layout.batch.world_size
        position.micro_in_epoch = samples_in_epoch // (batch.micro_batch * runtime.world_size)
        seed_everything(rank_seed(seed, runtime.rank, step=position.step))
    return candidate, position


def resume_position(engine, runtime: Runtime, checkpoint_dir: Path, source: ResumeSource, batch: BatchLayout,
                    seed: int, save_dir: Path) -> Position:
    """``--resume``: :func:`load_position`, and rank 0 says from where."""
    candidate, position = load_position(engine, runtime, checkpoint_dir, source, batch, seed, save_dir)
    if runtime.is_main:
        how = (f"; written by {source.layout.batch.world_size} rank(s), now {runtime.world_size}"
               + (" (DeepSpeed universal checkpoint)" if source.universal else "")) if source.elastic else ""
        say(f"resumed from step {position.step} (epoch {position.epoch + 1}, micro-batch {position.micro_in_epoch}) "
            f"of {candidate.tag}{how}")
    return position
