"""Training-state checkpoints (DeepSpeed's own format, for resume) and the exported best model.

DeepSpeed writes its ``latest`` pointer without a barrier or a rename, so a crash during a save can leave it
pointing at a half-written tag. Here every rank saves with ``save_latest=False``, all ranks meet at a barrier,
and only then rank 0 publishes the tag by writing ``latest`` to a temporary file and ``os.replace``-ing it. Old tags
beyond ``keep_last`` are removed after the pointer moved.

Per-rank torch RNG states (the s1 sampling and dropout streams) are stored next to DeepSpeed's files as
safetensors, one file per rank (DeepSpeed's client state is written by one rank only).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ds_kronos.errors import UserError
from ds_kronos.runtime import Runtime, barrier

LATEST = "latest"
_TAG = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def read_latest(checkpoint_dir: Path) -> str | None:
    pointer = checkpoint_dir / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text(encoding="utf-8").strip()
    return tag if (checkpoint_dir / tag).is_dir() else None


def _rng_file(checkpoint_dir: Path, tag: str, rank: int) -> Path:
    return checkpoint_dir / tag / f"rng_rank{rank:05d}.safetensors"


def save_training_state(engine, runtime: Runtime, checkpoint_dir: Path, step: int, client_state: dict[str, Any],
                        keep_last: int) -> str:
    """Collective: every rank must call it at the same step."""
    tag = tag_for(step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(_rng_file(checkpoint_dir, tag, runtime.rank)))
    barrier()
    if runtime.is_main:
        staging = checkpoint_dir / f".{LATEST}.tmp-{os.getpid()}"
        staging.write_text(tag, encoding="utf-8")
        os.replace(staging, checkpoint_dir / LATEST)
        _prune(checkpoint_dir, keep_last, protect=tag)
    barrier()
    return tag


def _prune(checkpoint_dir: Path, keep_last: int, protect: str) -> None:
    tags = sorted((p.name for p in checkpoint_dir.iterdir() if p.is_dir() and _TAG.match(p.name)),
                  key=lambda name: int(_TAG.match(name).group(1)))
    for name in tags[:-keep_last] if keep_last > 0 else tags:
        if name != protect:
            shutil.rmtree(checkpoint_dir / name, ignore_errors=True)


def load_training_state(engine, runtime: Runtime, checkpoint_dir: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this rank's RNG; returns the client state saved with them."""
    tag = read_latest(checkpoint_dir)
    if tag is None:
        raise UserError(f"--resume: no checkpoint to resume from in {checkpoint_dir} (no valid 'latest' pointer)")
    path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise UserError(f"--resume: DeepSpeed could not load checkpoint {checkpoint_dir / tag}")
    rng_path = _rng_file(checkpoint_dir, tag, runtime.rank)
    if rng_path.is_file():
        rng = load_file(str(rng_path))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return client_state or {}


def gather_fp32_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 weights from the optimizer's master copies (bf16/fp16 modules hold low-precision copies),
    gathered across ZeRO partitions, plus buffers. Collective: every rank must call it."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param) if param.requires_grad else None
        if full is None:
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                full = param.detach().clone()
        state[name] = full.detach().float().cpu()
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().cpu()
    return state
