"""Training-state checkpoints (DeepSpeed's own format, for resume): atomic publication, self-healing selection.

Saving (collective). Every rank writes its DeepSpeed files and its RNG state into a staging folder
``checkpoints/.stepNNNNNNNN.partial`` and reports the files it wrote with their sizes, as it sees them: on a shared
filesystem another node's view of a folder may lag (NFS caches listings and attributes), so rank 0 does not list
the others' files itself. Rank 0 gathers the reports, writes ``manifest.json`` (every file with its size, and the
layout of the run: world size, micro batch, accumulation, ZeRO stage), renames the folder to ``stepNNNNNNNN`` and
moves ``latest`` to it through a temporary file and ``os.replace``. A save that fails or is killed leaves only a
dot-folder, which no run takes for a checkpoint and the next run removes.

Resuming. Candidates are the ``stepNNNNNNNN`` folders inside ``checkpoints/`` (``latest`` is a hint, never a path:
a pointer elsewhere is ignored), newest first; a candidate is complete when its manifest lists every file at its
size. Incomplete ones are skipped with one line each saying why; loading itself (restricted unpickling, see
ds_kronos.train.checkpoint.safe_load) may still find a file unreadable, and then every rank moves on to the next
candidate.

Per-rank torch RNG states (the s1 sampling and dropout streams) are stored as safetensors, one file per rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ds_kronos.atomic import replace_folder, write_text_atomic
from ds_kronos.deepspeed_json.resolve import BatchLayout
from ds_kronos.jsonio import write_json_atomic
from ds_kronos.runtime import Runtime, all_gather_objects, barrier

LATEST = "latest"
MANIFEST = "manifest.json"
UNIVERSAL_DIR = "universal"
OFFLOADED_TENSORS = "offloaded_tensors"  # DeepSpeed's copy of each rank's NVMe optimizer swap files, in a tag
_TAG = re.compile(r"^step(\d{8})$")
_STAGING = re.compile(r"^\.step\d{8}\.partial(-old)?$")


@dataclass(frozen=True)
class RunLayout:
    """What a checkpoint's state depends on, beyond the model: how the run that wrote it split its batch over its
    ranks, its engine (ZeRO stage, optimizer offload) and what it trained. Recorded in each manifest (flat, see
    :meth:`to_manifest`), compared on ``--resume``."""

    batch: BatchLayout
    zero_stage: int
    optimizer_offload: str | None = None
    """Where the optimizer state lived: "none", "cpu" or "nvme" (None: a manifest from before it was recorded)."""
    trained: str | None = None
    """What the run trained (ds_kronos.train.engine.finetune.FinetuneSpec.signature; None: from before it was
    recorded)."""

    def to_manifest(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.batch), "zero_stage": self.zero_stage,
                "optimizer_offload": self.optimizer_offload, "trained": self.trained}

    @classmethod
    def from_manifest(cls, entry: dict[str, Any]) -> RunLayout:
        """Raises TypeError/KeyError for an entry that is not one (the caller reports the tag as unreadable)."""
        batch = BatchLayout(micro_batch=entry["micro_batch"], grad_accum=entry["grad_accum"],
                            world_size=entry["world_size"])
        return cls(batch=batch, zero_stage=entry["zero_stage"], optimizer_offload=entry.get("optimizer_offload"),
                   trained=entry.get("trained"))


def run_layout(batch: BatchLayout, ds_config: dict[str, Any], trained: str) -> RunLayout:
    """The layout of this run (recorded in each checkpoint's manifest)."""
    from ds_kronos.deepspeed_json.view import DeepSpeedView

    view = DeepSpeedView.of(ds_config)
    return RunLayout(batch=batch, zero_stage=view.zero_stage, optimizer_offload=view.offload_optimizer,
                     trained=trained)


@dataclass(frozen=True)
class Candidate:
    """A complete checkpoint: its tag and the layout of the run that wrote it."""

    tag: str
    layout: RunLayout


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def _rng_name(rank: int) -> str:
    return f"rng_rank{rank:05d}.safetensors"


# ----------------------------------------------------------------------------------------------------------- saving
def save_training_state(engine, runtime: Runtime, checkpoint_dir: Path, step: int, client_state: dict[str, Any],
                        keep_last: int, layout: RunLayout, extra: Callable[[Path], None] | None = None) -> str:
    """Collective: every rank must call it at the same step. ``extra(staging)``: rank 0 adds more to the tag before
    its manifest is written (the best export of the step, ds_kronos.train.checkpoint.best_model), so the manifest lists
    it."""
    tag = tag_for(step)
    staging = checkpoint_dir / f".{tag}.partial"
    if runtime.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    recorder = _RecordingCheckpointEngine(engine.checkpoint_engine)
    engine.checkpoint_engine = recorder
    try:
        engine.save_checkpoint(str(checkpoint_dir), tag=staging.name, client_state=client_state, save_latest=False)
    finally:
        engine.checkpoint_engine = recorder.inner
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(staging / _rng_name(runtime.rank)))
    reports = all_gather_objects(_own_files(staging, recorder.saved + [staging / _rng_name(runtime.rank)],
                                            runtime.rank, _swap_copy_rank(engine, runtime)))
    if runtime.is_main:
        if extra is not None:
            extra(staging)
        _publish(checkpoint_dir, staging, tag, layout, _manifest_files(staging, reports))
        _prune(checkpoint_dir, keep_last, protect=tag)
    barrier()
    return tag


class _RecordingCheckpointEngine:
    """DeepSpeed's checkpoint engine (what ``engine.save_checkpoint`` writes its files through), noting each path:
    the files this rank wrote."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.saved: list[Path] = []

    def save(self, state_dict, path: str) -> None:
        self.inner.save(state_dict, path)
        self.saved.append(Path(path))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _swap_copy_rank(engine, runtime: Runtime) -> int:
    """The rank number of this rank's folder in ``offloaded_tensors/`` (DeepSpeed's save_checkpoint names it by the
    local rank when checkpoints go to node-local storage)."""
    return runtime.local_rank if engine.use_node_local_storage() else runtime.rank


def _own_files(staging: Path, written: list[Path], rank: int, swap_copy_rank: int) -> dict[str, int]:
    """This rank's report: name (relative to ``staging``) -> bytes of the files it wrote, from its own view of them:
    ``written`` and its copy of the NVMe swap files (DeepSpeed copies each rank's into ``offloaded_tensors/rankNN``,
    outside its checkpoint engine)."""
    from deepspeed.checkpoint.ds_to_universal import dp_index_to_str

    swap_copy = staging / OFFLOADED_TENSORS / f"rank{dp_index_to_str(swap_copy_rank)}"
    paths = written + ([p for p in sorted(swap_copy.rglob("*")) if p.is_file()] if swap_copy.is_dir() else [])
    root = staging.resolve()
    return {str(p.resolve().relative_to(root)): p.stat().st_size for p in paths}


def _manifest_files(staging: Path, reports: list[dict[str, int]]) -> dict[str, int]:
    """Rank 0: every rank's report, and from its own listing what DeepSpeed wrote on rank 0 outside its checkpoint
    engine (its recovery scripts). Another rank's file is taken from that rank's report, never from this listing."""
    files: dict[str, int] = {}
    for report in reports:
        files.update(report)
    for path in sorted(staging.rglob("*")):
        name = str(path.relative_to(staging))
        if name not in files and path.is_file():
            files[name] = path.stat().st_size
    return dict(sorted(files.items()))


def _publish(checkpoint_dir: Path, staging: Path, tag: str, layout: RunLayout, files: dict[str, int]) -> None:
    write_json_atomic(staging / MANIFEST, {"tag": tag, "layout": layout.to_manifest(), "files": files})
    # The same step saved again (a run resumed at its last step) is replaced whole.
    replace_folder(staging, checkpoint_dir / tag, retired=checkpoint_dir / f".{tag}.partial-old")
    write_text_atomic(checkpoint_dir / LATEST, tag)


def _step_tags(checkpoint_dir: Path) -> list[str]:
    """``stepNNNNNNNN`` folders, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir() and _TAG.match(p.name))


def _prune(checkpoint_dir: Path, keep_last: int, protect: str) -> None:
    tags = _step_tags(checkpoint_dir)
    for name in tags[:-keep_last] if keep_last > 0 else tags:
        if name != protect:
            shutil.rmtree(checkpoint_dir / name, ignore_errors=True)
    shutil.rmtree(checkpoint_dir / UNIVERSAL_DIR, ignore_errors=True)  # a resumed run has its own tags now


def _recover_interrupted_resave(checkpoint_dir: Path) -> list[str]:
    """A kill between the two renames of a re-saved step (see ``_publish``) leaves ``.stepN.partial-old`` (the
    previous complete tag) and ``.stepN.partial`` (the new one, manifest written) and no ``stepN``. As model folders
    are recovered (ds_kronos.atomic.recover_folders): the staged tag is published if its manifest checks, else the
    previous one is moved back. Returns what was done."""
    done = []
    for retired in sorted(checkpoint_dir.glob(".step*.partial-old")):
        tag = retired.name[1:].removesuffix(".partial-old")
        if not _TAG.match(tag) or (checkpoint_dir / tag).exists():
            continue
        for source, which in ((checkpoint_dir / f".{tag}.partial", "the new copy"), (retired, "the previous copy")):
            if source.is_dir() and _manifest_names(source, tag) and _completeness_problem(source)[0] is None:
                os.replace(source, checkpoint_dir / tag)
                done.append(f"{tag}: kept {which} from a re-save that was interrupted")
                break
    return done


def _manifest_names(folder: Path, tag: str) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("tag") == tag
    except (OSError, ValueError, AttributeError):
        return False


def remove_leftovers(checkpoint_dir: Path) -> list[str]:
    """Staging folders of saves that never finished (rank 0, at start), after recovering a step whose re-save was
    interrupted. Returns what was done."""
    if not checkpoint_dir.is_dir():
        return []
    removed = _recover_interrupted_resave(checkpoint_dir)
    for path in list(checkpoint_dir.iterdir()) + list((checkpoint_dir / UNIVERSAL_DIR).glob(".*.tmp-*")):
        if path.is_dir() and (_STAGING.match(path.name) or ".tmp-" in path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        elif path.is_file() and path.name.startswith(f".{LATEST}.tmp-"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


# ---------------------------------------------------------------------------------------------------------- resuming
def _completeness_problem(folder: Path) -> tuple[str | None, RunLayout | None]:
    """(why the tag cannot be used, or None; its layout). Reads only the manifest and file sizes."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        layout = RunLayout.from_manifest(manifest["layout"])
        files = {str(name): int(size) for name, size in manifest["files"].items()}
    except FileNotFoundError:
        return "no manifest.json (a save that did not finish, or written by an older ds_kronos)", None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"manifest.json is not valid ({type(exc).__name__}: {exc})", None
    for rank in range(layout.batch.world_size):
        if _rng_name(rank) not in files:
            return f"the manifest lists no RNG state for rank {rank}", layout
    for name, size in files.items():
        path = folder / name
        if not path.resolve().is_relative_to(folder.resolve()):
            return f"the manifest names a file outside the checkpoint: {name}", layout
        if not path.is_file():
            return f"{name} is missing", layout
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size:,} bytes, the manifest says {size:,} (truncated?)", layout
    return None, layout


def resume_candidates(checkpoint_dir: Path) -> tuple[list[Candidate], list[str]]:
    """Complete checkpoints, newest first, and one note per tag or pointer that was passed over."""
    notes = []
    pointer = checkpoint_dir / LATEST
    if pointer.is_file():
        hint = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if not hint:
            notes.append("checkpoints/latest is empty: looking for the newest complete checkpoint")
        elif not _TAG.match(hint):
            notes.append(f"checkpoints/latest names {hint[:80]!r}, which is not a checkpoint of this run "
                         f"(only stepNNNNNNNN folders inside {checkpoint_dir} are used)")
        elif not (checkpoint_dir / hint).is_dir():
            notes.append(f"checkpoints/latest names {hint}, which does not exist")
    candidates = []
    for tag in reversed(_step_tags(checkpoint_dir)):
        problem, layout = _completeness_problem(checkpoint_dir / tag)
        if problem:
            notes.append(f"skipped {tag}: {problem}")
        else:
            candidates.append(Candidate(tag, layout))
    return candidates, notes


def written_offload(checkpoint_dir: Path, candidate: Candidate) -> str | None:
    """Where the optimizer state of the run that wrote ``candidate`` lived, None where unknown (an older manifest
    that does not say, and no ``offloaded_tensors/``: DeepSpeed's copy of NVMe swap files)."""
    if candidate.layout.optimizer_offload is not None:
        return candidate.layout.optimizer_offload
    return "nvme" if (checkpoint_dir / candidate.tag / OFFLOADED_TENSORS).is_dir() else None


def needs_universal(checkpoint_dir: Path, tag: str) -> bool:
    """Whether the tag holds optimizer state partitioned by data-parallel rank (ZeRO-1/2/3, the bf16 optimizer)."""
    return any((checkpoint_dir / tag).glob("*optim_states.pt"))


def load_training_state(engine, runtime: Runtime, checkpoint_dir: Path, tag: str, universal: bool,
                        restore_rng: bool) -> dict[str, Any] | None:
    """Restore model, optimizer, scheduler and (``restore_rng``: same world size) this rank's RNG; returns the
    client state saved with them, or None when DeepSpeed found nothing to load."""
    from ds_kronos.train.checkpoint.nvme import offloads_optimizer_to_nvme, restore_swapped_optimizer
    from ds_kronos.train.checkpoint.safe_load import weights_only_loading

    load_dir = checkpoint_dir / UNIVERSAL_DIR if universal else checkpoint_dir
    with weights_only_loading():
        path, client_state = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if path is not None and offloads_optimizer_to_nvme(engine):
            restore_swapped_optimizer(engine, load_dir, tag)  # DeepSpeed skips the optimizer state there
    if path is None:
        return None
    if restore_rng:
        rng = load_file(str(checkpoint_dir / tag / _rng_name(runtime.rank)))
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return client_state or {}
