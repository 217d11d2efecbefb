"""ZeRO-Infinity's NVMe swap folder: where it is, whether this machine can use it, and cleaning it up.

A DeepSpeed JSON offloads to NVMe when ``offload_param`` or ``offload_optimizer`` has ``"device": "nvme"``
(ds_configs/zero3_nvme.json). Its ``nvme_path`` may be "auto": the trainer fills in ``--nvme_dir`` (default
``save_dir/nvme_swap``). DeepSpeed writes ``<nvme_path>/zero_stage_3/{optimizer,<dtype>params}/rank<N>/*.swp``
through its async I/O op, which needs the libaio system library; without it the run stops at start with one line
that says what to install. The swap files are scratch: they are removed at the end of the run (and any left by a
killed run are removed at the next start), since a resumed run reloads its state from the checkpoint, not from them;
the folder itself goes too when empty, if it is the default one or this run created it. A multi-node run is warned
off the default folder, which sits in the shared ``save_dir``.

Resuming with the optimizer on NVMe (:func:`restore_swapped_optimizer`): DeepSpeed 0.19's ``load_checkpoint`` then
skips the ZeRO optimizer load and only copies ``<tag>/offloaded_tensors/rankNN`` back into the swap folder; a fresh
engine's swapper knows only the fp32 partitions, so the copied Adam moments would never be read, Adam's step count
would restart and the param groups would keep the warm-up lr. The trainer completes the load with DeepSpeed's own
pieces: the ZeRO optimizer load (step counts, lr and the other param-group values, in-memory sub-groups), then each
swapped sub-group's moments are registered with the swapper and read back from the copied files.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ds_kronos.console import say
from ds_kronos.errors import CheckpointError, ConfigError, UserError
from ds_kronos.runtime import Runtime, barrier

AUTO = "auto"
DEFAULT_SUBFOLDER = "nvme_swap"
SWAP_SUBFOLDER = "zero_stage_3"  # DeepSpeed's own layout under nvme_path (runtime/swap_tensor)
OFFLOAD_SECTIONS = ("offload_param", "offload_optimizer")


def nvme_sections(ds_config: dict[str, Any]) -> list[dict[str, Any]]:
    zero = ds_config.get("zero_optimization", {})
    return [zero[key] for key in OFFLOAD_SECTIONS
            if isinstance(zero.get(key), dict) and zero[key].get("device") == "nvme"]


def fill_nvme_path(ds_config: dict[str, Any], nvme_dir: str | None, save_dir: str) -> Path | None:
    """Set every "auto" (or missing) ``nvme_path`` to ``nvme_dir`` (default ``save_dir/nvme_swap``), in place;
    returns the swap folder in use, None without NVMe offload. Explicit paths in the JSON are kept; they must agree,
    since one folder is cleaned up."""
    sections = nvme_sections(ds_config)
    if not sections:
        if nvme_dir:
            raise ConfigError(f"--nvme_dir {nvme_dir} is set but the DeepSpeed JSON offloads nothing to NVMe (use "
                              f"ds_configs/zero3_nvme.json or zero3_nvme_bf16.json, or drop --nvme_dir)")
        return None
    default = Path(nvme_dir) if nvme_dir else Path(save_dir) / DEFAULT_SUBFOLDER
    paths = set()
    for section in sections:
        if section.get("nvme_path") in (None, AUTO):
            section["nvme_path"] = str(default)
        paths.add(str(section["nvme_path"]))
    if len(paths) > 1:
        raise ConfigError(f"offload_param and offload_optimizer name different nvme_path values "
                          f"({', '.join(sorted(paths))}): use one folder (or \"auto\" and --nvme_dir)")
    return Path(paths.pop())


def check_nvme_ready(swap_dir: Path, announce: bool = True) -> None:
    """Stop with one line when the async I/O op cannot work here or the folder cannot be written; load the op
    (``announce``: say so if it must be compiled first; one rank per node)."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    if builder is None or not builder.is_compatible(verbose=False):
        raise UserError("NVMe offload needs DeepSpeed's async I/O op, which needs the libaio library and headers: "
                        "install them (Debian/Ubuntu: `apt-get install libaio-dev`; RHEL/Fedora: `dnf install "
                        "libaio-devel`), or use a config without \"device\": \"nvme\" (e.g. ds_configs/"
                        "zero3_offload.json)")
    try:
        swap_dir.mkdir(parents=True, exist_ok=True)
        probe = swap_dir / f".ds_kronos_write_probe.{os.getpid()}"  # one per process: ranks probe at once
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--nvme_dir {swap_dir}: cannot write there ({exc.strerror or exc})") from None
    load_async_io(builder, announce)


# A compile of the async I/O op takes about 3 minutes on 2 cores; a build folder untouched for this long while its
# lock is held was left by an interrupted compile.
STALE_BUILD_LOCK_S = 15 * 60


def async_io_build_folder(builder) -> Path | None:
    """Where torch compiles the op (TORCH_EXTENSIONS_DIR or its default); None if torch no longer says."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # torch's own rule, private since 1.x
        return Path(_get_build_directory(builder.name, verbose=False))
    except (ImportError, TypeError, OSError):
        return None


def last_change(folder: Path) -> float:
    """The latest modification time of ``folder`` or a file in it (files may vanish meanwhile: a build runs)."""
    times = [folder.stat().st_mtime]
    for path in folder.iterdir():
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:
            pass
    return max(times)


def load_async_io(builder=None, announce: bool = True) -> None:
    """Load DeepSpeed's async I/O op now, as the engine would, compiling it on its first use on this machine
    (``make setup`` does that once). Two failure modes of torch's compile-on-load are made visible: the minutes of
    a first compile are announced, and a build lock left by an interrupted compile (torch would wait on it forever,
    silently) stops the run with one line. Ranks may call it at once: torch's lock lets one compile."""
    if builder is None:
        from deepspeed.accelerator import get_accelerator
        builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    folder = async_io_build_folder(builder)
    if folder is not None:
        lock = folder / "lock"
        if lock.exists():
            idle = time.time() - last_change(folder)
            if idle > STALE_BUILD_LOCK_S:
                raise UserError(f"{lock}: an interrupted compile of DeepSpeed's async I/O op left this lock, on "
                                f"which every load waits forever (nothing in its folder has changed for "
                                f"{idle / 60:.0f} minutes): remove the file and run again")
        if announce and not (folder / f"{builder.name}.so").exists():
            say(f"compiling DeepSpeed's async I/O op for NVMe offload in {folder} (its first use here; a few "
                f"minutes)")
    builder.load(verbose=False)


def remove_swap_files(swap_dir: Path, rank: int | None = None, remove_dir: bool = False) -> int:
    """Remove DeepSpeed's swap files under ``swap_dir``: those of ``rank`` (each rank removes its own at the end,
    with no collective, so a failing run cleans up too), or all of them (at start, before any rank writes); then
    the folders left empty (``swap_dir`` itself only with ``remove_dir``: the default folder or one this run
    created, not a user's).
    Returns the bytes freed."""
    root = swap_dir / SWAP_SUBFOLDER
    # Ranks on one node clean up at the same time: any entry may vanish under us, so every step tolerates that.
    if rank is None:
        targets = [root]
    else:
        targets = [Path(kind, f"rank{rank}") for kind, _, _ in _walk(root, max_depth=1)]
    freed = 0
    for target in targets:
        freed += folder_bytes(target)
        shutil.rmtree(target, ignore_errors=True)
    leftovers = [Path(folder) for folder, _, _ in os.walk(root, topdown=False)] + (
        [swap_dir] if remove_dir else [])
    for folder in leftovers:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (another rank's files, or the user's own files in --nvme_dir) or already gone
    return freed


def folder_bytes(folder: Path) -> int:
    """Bytes of the files below ``folder`` (0 if it is missing; files removed meanwhile are skipped)."""
    total = 0
    for root, _, files in _walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _walk(root: Path, max_depth: int | None = None):
    """``os.walk`` below ``root`` (errors, such as a folder removed meanwhile, are skipped), to ``max_depth``."""
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).parts) - base
        if max_depth is not None and depth >= max_depth:
            dirs.clear()
        if max_depth is None or depth == max_depth:
            yield folder, dirs, files


def removes_folder_at_end(swap_dir: Path, save_dir: str, existed_before: bool) -> bool:
    """Whether the run removes the swap folder itself once it is empty: the default one in ``save_dir``, or one this
    run created; never a folder that was there before (a user's, named by --nvme_dir or the JSON's nvme_path)."""
    return swap_dir == Path(save_dir) / DEFAULT_SUBFOLDER or not existed_before


def shared_swap_warning(swap_dir: Path, nvme_dir: str | None, save_dir: str, runtime: Runtime) -> str | None:
    """A warning when a multi-node run swaps into the default folder: it is inside ``save_dir``, which the nodes
    share (the checkpoints are loaded from it), so every node's swap traffic would go to one shared filesystem."""
    if nvme_dir or swap_dir != Path(save_dir) / DEFAULT_SUBFOLDER or runtime.world_size <= runtime.local_world_size:
        return None
    return (f"warning: this run spans {runtime.world_size // max(1, runtime.local_world_size)} nodes and swaps to "
            f"NVMe in {swap_dir}, inside --save_dir, which the nodes share: pass --nvme_dir with a node-local "
            f"folder (a local NVMe drive) so that each node swaps to its own disk")


def prepare_swap_folder(ds_config: dict[str, Any], nvme_dir: str | None, save_dir: str, runtime: Runtime
                        ) -> tuple[Path | None, bool]:
    """Collective: fill the JSON's "auto" ``nvme_path`` (:func:`fill_nvme_path`), check that the folder can be used
    and remove swap files a killed run left (one rank per node, before any rank writes new ones). Returns the swap
    folder (None without NVMe offload) and whether the run removes the folder itself at the end
    (:func:`removes_folder_at_end`)."""
    swap_dir = fill_nvme_path(ds_config, nvme_dir, save_dir)
    if swap_dir is None:
        return None, False
    existed = swap_dir.exists()
    barrier()  # every rank has looked before any creates it
    check_nvme_ready(swap_dir, announce=runtime.local_rank == 0)
    if runtime.local_rank == 0:
        freed = remove_swap_files(swap_dir)
        if freed and runtime.is_main:
            say(f"start-up clean-up: removed {freed / 2**30:.2f} GiB of stale NVMe swap files in {swap_dir}")
    warning = shared_swap_warning(swap_dir, nvme_dir, save_dir, runtime)
    if warning and runtime.is_main:
        say(warning)
    barrier()
    return swap_dir, removes_folder_at_end(swap_dir, save_dir, existed)


def offloads_optimizer_to_nvme(engine) -> bool:
    """Whether the engine's ZeRO-3 optimizer swaps its state to NVMe (DeepSpeed's own test for it)."""
    return bool(engine.zero_nvme_offload_optimizer())


def restore_swapped_optimizer(engine, load_dir: Path, tag: str) -> None:
    """Finish ``engine.load_checkpoint(load_dir, tag)`` under NVMe optimizer offload (see the module docstring).
    Collective (the ZeRO-3 load gathers and re-partitions parameters): call on every rank, right after the load."""
    optimizer = engine.optimizer
    optimizer.checkpoint_event_prologue()
    # DeepSpeed's ZeRO load, which load_checkpoint skips here: it restores the base optimizer's state dict (the step
    # counts and param groups: lr, betas, ...), the in-memory sub-groups' masters and moments, and purges the
    # swapper's state records, which then know the fp32 partitions only.
    if not engine._load_zero_checkpoint(str(load_dir), tag, load_optimizer_states=True):
        raise CheckpointError(f"{load_dir / tag}: no ZeRO optimizer files for this rank")
    swapper, inner = optimizer.optimizer_swapper, optimizer.optimizer
    for index, master in enumerate(optimizer.fp32_partitioned_groups_flat):
        state = inner.state.get(master)
        if not optimizer._swappable_optimizer_subgroup(index) or not state:
            continue  # kept in memory (restored above), or never stepped
        numel = optimizer.fp16_partitioned_groups_flat_numel[index]
        for name, value in state.items():
            if not torch.is_tensor(value) or value.dim() == 0:
                continue  # a step count or other scalar: restored with the state dict
            path = Path(swapper.swap_folder) / f"{name}-{master.ds_id}.tensor.swp"  # SwapTensorContext's naming
            if not path.is_file() or path.stat().st_size < numel * value.element_size():
                raise CheckpointError(f"{load_dir / tag}: the NVMe copy of the optimizer state {name} of sub-group "
                                      f"{index} is missing or short ({path.name})")
            # Saved swapped out (empty); a tensor of its full size makes the swapper register it (it registers
            # state tensors by size), and the swap-in then reads the checkpoint's values from the copied file.
            state[name] = torch.empty(numel, dtype=value.dtype)
        swapper.swap_in_optimizer_state(parameter=master)
        swapper.swap_out_optimizer_state(parameter=master)
    optimizer.checkpoint_event_epilogue()
