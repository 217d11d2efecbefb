"""``best_model/`` follows the selection state: each checkpoint keeps the best export current at its step.

The selection state (which step is best, with what score) lives in the checkpoint's position; ``best_model/`` is a
folder beside it that every improvement replaces. A roll-back or a resume restores the position of an older step,
so the folder can hold the export of a step that was undone (a roll-back) or never checkpointed (a run killed after
an export): summary.json would then name one model and ``best_model/`` hold another. So every checkpoint tag holds
``best_model/`` as it was when the tag was written (hard links: no copy of the weights; a copy where the filesystem
has none), listed in its manifest like the DeepSpeed files, and restoring a tag publishes that copy again
(:func:`restore_best_model`). Exports are never written in place (ds_kronos.model.published.write_folder builds a
new folder and swaps it in), so a link always holds the export it was made from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ds_kronos.atomic import replace_folder, temporary_sibling
from ds_kronos.train.validation.selection import SelectionState

BEST_MODEL = "best_model"


def link_folder(source: Path, target: Path) -> None:
    """``target`` (not existing) with ``source``'s files, hard-linked where the filesystem allows, else copied."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)


def keep_best_model(save_dir: Path, selection: SelectionState, staging_tag: Path) -> None:
    """Rank 0, while a checkpoint is staged: ``save_dir/best_model`` into the tag as ``best_model/``, when the
    selection has chosen one (a folder there before any evaluation of this run is another run's)."""
    best = save_dir / BEST_MODEL
    if selection.best_step is not None and best.is_dir():
        link_folder(best, staging_tag / BEST_MODEL)


def restore_best_model(save_dir: Path, tag_dir: Path, selection: SelectionState) -> str | None:
    """Rank 0, after the position of ``tag_dir`` was restored: make ``save_dir/best_model`` the export that tag
    kept (atomically: a new folder swapped in). Returns a line to print, or None when there is nothing to say."""
    kept, best = tag_dir / BEST_MODEL, save_dir / BEST_MODEL
    if kept.is_dir():
        staging = temporary_sibling(best, keep_suffix=False)
        shutil.rmtree(staging, ignore_errors=True)
        link_folder(kept, staging)
        replace_folder(staging, best)
        return None
    if selection.best_step is None:  # nothing selected yet at that step: an export from after it is not the best
        if best.is_dir():
            retired = temporary_sibling(best, keep_suffix=False)  # a start-up clean-up removes it, never restores it
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(best, retired)
            shutil.rmtree(retired, ignore_errors=True)
            return f"removed {BEST_MODEL}/: it was exported after {tag_dir.name}, which had selected none yet"
        return None
    return (f"{tag_dir.name} does not keep its {BEST_MODEL}/ (written by an older ds_kronos): {BEST_MODEL}/ is left "
            f"as it is and may not be step {selection.best_step}'s export until a later evaluation replaces it")
