"""Elastic resume: DeepSpeed's universal checkpoints for a run resumed on a different number of ranks.

Rank 0 converts a tag with DeepSpeed's own ``deepspeed.checkpoint.ds_to_universal`` into
``checkpoints/universal/<tag>``; the engine is then built with ``"checkpoint": {"load_universal": true}`` and loads
that copy. ZeRO-0 fp32 engines keep whole optimizer states in the model file and load on any world size as they
are (see ``needs_universal``). The copy is removed when the run writes its next checkpoint, or at once when it
cannot be loaded (before the next candidate is converted).

The conversion takes time in proportion to the checkpoint, which may be far longer than ``--dist_timeout``: the
other ranks wait for its outcome outside any collective (ds_kronos.runtime.outcome_on_main), up to
:data:`CONVERSION_WAIT_S`. It needs room for about two more copies of the tag (DeepSpeed's temporary fragments and
the universal copy), checked before the engine is built.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ds_kronos.atomic import replace_folder, temporary_sibling
from ds_kronos.errors import UserError
from ds_kronos.train.checkpoint.best_model import BEST_MODEL
from ds_kronos.train.checkpoint.nvme import folder_bytes
from ds_kronos.train.checkpoint.training_state import UNIVERSAL_DIR

CONVERSION_WAIT_S = 3 * 3600.0
"""How long the other ranks wait for rank 0's conversion: far above any conversion (linear in the checkpoint's
size), so only a hung rank 0 reaches it; a rank 0 that dies ends the wait at once."""
COPIES_NEEDED = 2
"""Free space the conversion needs, in sizes of the tag: ds_to_universal's temporary fragments (``tmp/``, removed
at its end) and its output hold about one copy of the tag's tensors each."""


@dataclass(frozen=True)
class Conversion:
    path: Path
    seconds: float
    extract_workers: int
    merge_workers: int

    def describe(self) -> str:
        return (f"{self.seconds:.1f} s ({self.extract_workers} extract and {self.merge_workers} merge "
                f"worker{'s' if self.merge_workers > 1 else ''})")


def universal_copy(checkpoint_dir: Path, tag: str) -> Path:
    return checkpoint_dir / UNIVERSAL_DIR / tag


def conversion_space_problem(checkpoint_dir: Path, tag: str) -> str | None:
    """Why ``tag`` cannot be converted here for lack of disk space (None: there is room, or it is converted)."""
    if universal_copy(checkpoint_dir, tag).is_dir():
        return None
    # The tag's best_model/ (hard links of an export, ds_kronos.train.checkpoint.best_model) is not converted.
    needed = COPIES_NEEDED * (folder_bytes(checkpoint_dir / tag) - folder_bytes(checkpoint_dir / tag / BEST_MODEL))
    free = shutil.disk_usage(checkpoint_dir).free
    if free >= needed:
        return None
    return (f"converting {tag} to a universal checkpoint for the new world size needs about {_size(needed)} free in "
            f"{checkpoint_dir} (two more copies of the tag), and {_size(free)} is free")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def conversion_workers(input_folder: Path) -> tuple[int, int]:
    """(extract, merge) worker processes for ds_to_universal: as many as this process's cores allow. An extract
    worker holds one rank's optimizer file at a time, so their number is also bounded by the optimizer files and
    by the memory available for them; a merge worker holds one parameter's fragments (DeepSpeed's own defaults keep
    half as many merge workers as extract workers)."""
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    shards = [p.stat().st_size for p in input_folder.glob("*optim_states.pt")]
    by_memory = psutil.virtual_memory().available // (2 * max(shards)) if shards else cores
    extract = max(1, min(cores, len(shards) or 1, by_memory))
    return extract, max(1, cores // 2)


@contextlib.contextmanager
def _one_torch_thread(forks: bool):
    """ds_to_universal's workers are forked: a child of a process whose OpenMP pool ran with several threads hangs
    in its first parallel torch operation (GNU OpenMP is not fork-safe), so the parent runs with one thread."""
    previous = torch.get_num_threads()
    if forks:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def convert_to_universal(checkpoint_dir: Path, tag: str) -> Conversion:
    """``ds_to_universal`` of ``tag`` (rank 0 only). The result is published by a rename, so a crash mid-conversion
    leaves no folder that looks complete. Unpickling is restricted as for loading
    (ds_kronos.train.checkpoint.safe_load)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    from ds_kronos.train.checkpoint.safe_load import weights_only_loading

    started = time.perf_counter()
    target = universal_copy(checkpoint_dir, tag)
    if target.is_dir():
        return Conversion(target, 0.0, 0, 0)
    staging = temporary_sibling(target, keep_suffix=False)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    extract, merge = conversion_workers(checkpoint_dir / tag)
    args = argparse.Namespace(input_folder=str(checkpoint_dir / tag), output_folder=str(staging),
                              num_extract_workers=extract, num_merge_workers=merge, keep_temp_folder=False,
                              strict=True, inject_missing_state=True)
    noise = io.StringIO()  # its progress bars and banners
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise), weights_only_loading(), \
                _one_torch_thread(max(extract, merge) > 1):
            ds_to_universal(args)
    except Exception as exc:  # DeepSpeed raises assorted types for unreadable or inconsistent checkpoints
        shutil.rmtree(staging, ignore_errors=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"DeepSpeed could not convert {checkpoint_dir / tag} to a universal checkpoint "
                        f"for the new world size: {detail}") from None
    return Conversion(replace_folder(staging, target), time.perf_counter() - started, extract, merge)


def remove_universal_copy(checkpoint_dir: Path, tag: str) -> None:
    """Rank 0, once no rank reads it any more: a copy that could not be loaded makes room for the next one."""
    shutil.rmtree(universal_copy(checkpoint_dir, tag), ignore_errors=True)
