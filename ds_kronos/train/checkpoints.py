"""Training-state checkpoints (DeepSpeed's own format, for resume) and the exported best model.

DeepSpeed writes its ``latest`` pointer without a barrier or a rename, so a crash during a save can leave it
pointing at a half-written tag. Here every rank saves with ``save_latest=False``, all ranks meet at a barrier,
and only then rank 0 publishes the tag by writing ``latest`` to a temporary file and ``os.replace``-ing it. Old tags
beyond ``keep_last`` are removed after the pointer moved.

Per-rank torch RNG states (the s1 sampling and dropout streams) are stored next to DeepSpeed's files as
safetensors, one file per rank (DeepSpeed's client state is written by one rank only), and the layout of the run
that wrote the tag (world size, micro batch, accumulation, ZeRO stage) in ``ds_kronos.json``.

Resuming on a different number of ranks (elastic resume) uses DeepSpeed's universal checkpoints: rank 0 converts
the tag with ``deepspeed.checkpoint.ds_to_universal`` into ``checkpoints/universal/<tag>`` and the engine is built
with ``"checkpoint": {"load_universal": true}``. ZeRO-0 fp32 engines keep whole optimizer states in the model file
and load on any world size as they are. The converted copy is removed once the run writes its next checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ds_kronos.errors import UserError
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.runtime import Runtime, barrier
from ds_kronos.train.masters import full_fp32_master

LATEST = "latest"
LAYOUT_FILE = "ds_kronos.json"
UNIVERSAL_DIR = "universal"
_TAG = re.compile(r"^step(\d+)$")


@dataclass(frozen=True)
class RunLayout:
    """How the ranks of the run that wrote a checkpoint were laid out."""

    world_size: int
    micro_batch: int
    grad_accum: int
    zero_stage: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    def describe(self) -> str:
        return (f"{self.micro_batch} per rank x {self.grad_accum} accumulation x {self.world_size} ranks = "
                f"{self.global_batch}")


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
                        keep_last: int, layout: RunLayout) -> str:
    """Collective: every rank must call it at the same step."""
    tag = tag_for(step)
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=client_state, save_latest=False)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(_rng_file(checkpoint_dir, tag, runtime.rank)))
    if runtime.is_main:
        write_json_atomic(checkpoint_dir / tag / LAYOUT_FILE, dataclasses.asdict(layout))
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
    shutil.rmtree(checkpoint_dir / UNIVERSAL_DIR, ignore_errors=True)  # a resumed run has its own tags now


def read_layout(checkpoint_dir: Path, tag: str) -> RunLayout | None:
    """The layout saved with ``tag`` (None for checkpoints written before layouts were saved)."""
    path = checkpoint_dir / tag / LAYOUT_FILE
    if not path.is_file():
        return None
    try:
        return RunLayout(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise UserError(f"--resume: {path} is not a valid checkpoint layout ({exc})") from None


def needs_universal(checkpoint_dir: Path, tag: str) -> bool:
    """Whether the tag holds optimizer state partitioned by data-parallel rank (ZeRO-1/2/3, the bf16 optimizer)."""
    return any((checkpoint_dir / tag).glob("*optim_states.pt"))


def convert_to_universal(checkpoint_dir: Path, tag: str) -> Path:
    """DeepSpeed's ``ds_to_universal`` of ``tag`` into ``checkpoints/universal/<tag>`` (rank 0 only; the result is
    published by a rename, so a crash mid-conversion leaves no folder that looks complete)."""
    import argparse
    import contextlib
    import io

    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    target = checkpoint_dir / UNIVERSAL_DIR / tag
    if target.is_dir():
        return target
    staging = target.parent / f".{tag}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(input_folder=str(checkpoint_dir / tag), output_folder=str(staging),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    noise = io.StringIO()  # its progress bars and banners; shown only if it fails
    try:
        with contextlib.redirect_stdout(noise), contextlib.redirect_stderr(noise):
            ds_to_universal(args)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"--resume: DeepSpeed could not convert {checkpoint_dir / tag} to a universal checkpoint "
                        f"for the new world size: {exc}") from None
    os.replace(staging, target)
    return target


def load_training_state(engine, runtime: Runtime, checkpoint_dir: Path, tag: str, universal: bool,
                        restore_rng: bool) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and (``restore_rng``: same world size) this rank's RNG; returns the
    client state saved with them. ``universal``: load the converted copy (see :func:`convert_to_universal`)."""
    load_dir = checkpoint_dir / UNIVERSAL_DIR if universal else checkpoint_dir
    path, client_state = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise UserError(f"--resume: DeepSpeed could not load checkpoint {load_dir / tag}")
    rng_path = _rng_file(checkpoint_dir, tag, runtime.rank)
    if restore_rng and rng_path.is_file():
        rng = load_file(str(rng_path))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return client_state or {}


def gather_fp32_state_dict(engine, frozen: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full fp32 weights from the optimizer's master copies (bf16/fp16 modules hold low-precision copies),
    gathered across ZeRO partitions, plus buffers. ``frozen`` holds the exact values of tensors that have no master
    (frozen parameters, buffers; see ds_kronos.train.masters). Collective: every rank must call it."""
    import deepspeed

    module, frozen = engine.module, frozen or {}
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        full = full_fp32_master(engine, param) if param.requires_grad else None
        if full is None:
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                full = param.detach().clone()
        state[name] = frozen[name] if name in frozen else full.detach().float().cpu()
    for name, buffer in module.named_buffers():
        state[name] = frozen[name] if name in frozen else buffer.detach().cpu()
    return state
