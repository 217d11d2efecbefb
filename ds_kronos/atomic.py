"""Writing files and folders atomically: a reader sees the old version or the new one, never half of either.

A file is written to a temporary sibling ``.NAME.tmp-PID<suffix>`` (the suffix kept so that matplotlib and pandas
infer the format) and renamed over ``NAME``. A folder is built in a staging sibling and swapped into place by
:func:`replace_folder`, which retires an existing one to ``.NAME.old-PID`` first; :func:`recover_folders` cleans
up after a swap that was killed half-way.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def temporary_sibling(path: str | os.PathLike, *, keep_suffix: bool = True) -> Path:
    """``.NAME.tmp-PID<suffix>`` next to ``path`` (hidden; the suffix keeps a file's format recognisable, a
    folder's staging copy is ``.NAME.tmp-PID``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix if keep_suffix else ''}")


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; on a normal exit it replaces ``path``, on an error it is removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is not usable: nothing was written there
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike,
                   retired: str | os.PathLike | None = None) -> Path:
    """Move the finished folder ``staging`` to ``target``. An existing ``target`` is first renamed to ``retired``
    (default ``.NAME.old-PID``) and removed after the swap, so a kill in between leaves it recoverable."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        old = Path(retired) if retired is not None else target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    return target


def recover_folders(parent: str | os.PathLike, is_complete: Callable[[Path], bool]) -> list[str]:
    """Clean up after folder writes through :func:`replace_folder` that were killed in ``parent``; returns what was
    done.

    A kill between the two renames of :func:`replace_folder` leaves the previous folder as ``.NAME.old-PID`` and no
    ``NAME``: it is moved back when ``is_complete`` (the writer's own test, e.g.
    :func:`ds_kronos.model.published.is_model_folder`) accepts it. Every other ``.NAME.tmp-PID`` / ``.NAME.old-PID``
    is an unfinished or retired copy and is removed.
    """
    parent, done = Path(parent), []
    if not parent.is_dir():
        return done
    for path in sorted(parent.iterdir()):
        if not path.is_dir() or not path.name.startswith("."):
            continue
        name, sep, _ = path.name[1:].rpartition(".old-")
        if sep and not (parent / name).exists() and is_complete(path):
            os.replace(path, parent / name)
            done.append(f"restored {name}/ from an interrupted replacement")
        elif ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path.name}/ (left by an interrupted write)")
    return done
