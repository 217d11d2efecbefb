"""Writing an output folder all at once: into a temporary sibling, renamed into place only when complete.

The temporary folder (and any missing parent) is created before the work starts, so an unwritable or full
destination fails at once rather than after a long read; a failure at any point removes what this run created, so
it leaves neither a half-written folder nor empty parents behind. An existing output is replaced only with
``overwrite`` and only when it is one of ours (``is_ours``), or empty.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ds_kronos.atomic import replace_folder
from ds_kronos.errors import DataError, naming_path


def check_output_path(out: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse an existing output unless ``overwrite``, never overwrite something that is not ours (``what`` names
    what ours would be), and refuse an output below a file."""
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DataError(f"{out}: {ancestor} is a file, not a folder")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DataError(f"{out}: output path exists; pass --overwrite to replace it")
    if out.is_dir() and (is_ours(out) or not any(out.iterdir())):
        return
    raise DataError(f"{out}: exists and is not {what}; refusing to overwrite it")


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


@contextmanager
def staged_output(out: str | os.PathLike, overwrite: bool, is_ours: Callable[[Path], bool],
                  what: str) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``out``; on a normal exit it becomes ``out``."""
    out = Path(out)
    check_output_path(out, overwrite, is_ours, what)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    created = _missing_folders(tmp.parent)
    try:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)  # left by an earlier run with our pid (a reused pid after a crash)
            tmp.mkdir(parents=True)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            folder = created[0].parent if created else tmp.parent  # the existing folder that refused a new one
            raise DataError(f"{out}: cannot write into {folder} ({reason})") from None
        with naming_path(out):  # a full disk while writing: "no space left on OUT"
            yield tmp
        # The output may have appeared while we were working (another run); check again right before the swap.
        check_output_path(out, overwrite, is_ours, what)
        replace_folder(tmp, out)  # the old one (already checked to be ours) is removed after
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(created):  # the parents this run created, innermost first; stop at one not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
