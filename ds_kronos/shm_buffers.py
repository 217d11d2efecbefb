"""Clean-up of DeepSpeed's shared-memory all-reduce buffers on the CPU accelerator.

When every rank of a job is on one machine, DeepSpeed's CPU communication op (``deepspeed/ops/csrc/cpu/comm/shm.cpp``,
``shm_initialize``) creates one POSIX shared-memory segment per rank, named
``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`` (about 69 MB each), maps the segments of all
ranks, and never unlinks them: they outlive the job in ``/dev/shm``, which is memory (DeepSpeed PR #4115 notes the
named SHM stays after exit; sglang PR #38638 traced SIGBUS crashes to such orphans filling ``/dev/shm``). DeepSpeed
0.19.x still does this, so until a release that cleans up is pinned:

* :func:`release_own_buffer`: once every rank has mapped every segment (``deepspeed.init_distributed`` returns only
  after that, and the caller passes a barrier), each rank unlinks the *name* of its own segment. The mappings stay
  valid; the kernel frees the memory when the last rank exits, however it exits (kill -9 included).
* :func:`sweep_stale_buffers`: at start, segments left by jobs that died before they released their names are
  removed, but only those no live process holds open or mapped, owned by this user, and not written in the last
  ``grace_s`` seconds (a starting job may be re-opening a stale segment of the same name at this very moment).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
BUFFER_PREFIX = "deepspeed_allreduce_buffer_"
STALE_GRACE_S = 30.0


def buffer_name(rank: int, addr: str, port: str, uid: int | None = None) -> str:
    """The segment name DeepSpeed's ``shm_initialize`` gives to ``rank`` of the job at ``addr:port``."""
    return f"{BUFFER_PREFIX}{os.getuid() if uid is None else uid}_{addr}_{port}_{rank}"


def held_shm_names() -> set[str]:
    """Names in /dev/shm that some live process has open (file descriptor) or mapped (memory map)."""
    held: set[str] = set()
    prefix = str(SHM_DIR) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(prefix):
                    held.add(target[len(prefix):].removesuffix(" (deleted)"))
            with open(proc / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:
                        held.add(line[at + len(prefix):].rstrip("\n").removesuffix(" (deleted)"))
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue  # the process ended while we looked, or is not ours to inspect
    return held


def sweep_stale_buffers(grace_s: float = STALE_GRACE_S, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove DeepSpeed buffers of dead jobs; returns the removed names. Never touches a buffer in use."""
    try:
        candidates = [p for p in shm_dir.iterdir() if p.name.startswith(BUFFER_PREFIX)]
    except OSError:
        return []
    if not candidates:
        return []
    held = held_shm_names()
    uid, now, removed = os.getuid(), time.time(), []
    for path in candidates:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if path.name in held or info.st_uid != uid or now - info.st_mtime < grace_s:
            continue
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            continue
    return removed


def release_own_buffer(rank: int, addr: str | None = None, port: str | None = None,
                       shm_dir: Path = SHM_DIR) -> bool:
    """Unlink this rank's segment name. Call only after a barrier that follows ``deepspeed.init_distributed``, so
    that every rank has already mapped it. True when there was a name to remove (single-node CPU jobs)."""
    addr = os.environ.get("MASTER_ADDR", "") if addr is None else addr
    port = os.environ.get("MASTER_PORT", "") if port is None else port
    try:
        (shm_dir / buffer_name(rank, addr, port)).unlink()
        return True
    except FileNotFoundError:
        return False
