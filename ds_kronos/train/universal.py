"""Elastic resume: DeepSpeed's universal checkpoints for a run resumed on a different number of ranks.

Rank 0 converts a tag with DeepSpeed's own ``deepspeed.checkpoint.ds_to_universal`` into
``checkpoints/universal/<tag>``; the engine is then built with ``"checkpoint": {"load_universal": true}`` and loads
that copy. ZeRO-0 fp32 engines keep whole optimizer states in the model file and load on any world size as they
are (see ``needs_universal``). The copy is removed when the run writes its next checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

from ds_kronos.atomic import replace_folder, temporary_sibling
from ds_kronos.errors import UserError
from ds_kronos.train.training_state import UNIVERSAL_DIR


def convert_to_universal(checkpoint_dir: Path, tag: str) -> Path:
    """``ds_to_universal`` of ``tag`` (rank 0 only). The result is published by a rename, so a crash mid-conversion
    leaves no folder that looks complete. Unpickling is restricted as for loading (ds_kronos.train.safe_load)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    from ds_kronos.train.safe_load import weights_only_loading

    target = checkpoint_dir / UNIVERSAL_DIR / tag
    if target.is_dir():
        return target
    staging = temporary_sibling(target, keep_suffix=False)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(input_folder=str(checkpoint_dir / tag), output_folder=str(staging),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    noise = io.StringIO()  # its progress bars and banners
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise), weights_only_loading():
            ds_to_universal(args)
    except Exception as exc:  # DeepSpeed raises assorted types for unreadable or inconsistent checkpoints
        shutil.rmtree(staging, ignore_errors=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--resume: DeepSpeed could not convert {checkpoint_dir / tag} to a universal checkpoint "
                        f"for the new world size: {detail}") from None
    return replace_folder(staging, target)
