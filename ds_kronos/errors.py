"""Errors a user can cause (bad paths, bad configs, bad data).

Library code raises :class:`UserError` with a message that names the file, symbol or option and the problem;
the launch scripts turn it into one line on stderr and exit code 2 (see :func:`ds_kronos.cli.run_main`).
Anything else that escapes is a bug and keeps its traceback.

Under a launcher every rank usually meets the same bad input (the same data, the same config), so an error is
printed by rank 0 only. An error that belongs to one rank alone (its device ran out of memory, its node's copy
of a file differs) is raised with ``rank_specific=True``: every rank that hits it prints it, prefixed with its rank.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """A problem the user can fix: the message is shown as is, without a traceback."""

    def __init__(self, message: str = "", *, rank_specific: bool = False):
        super().__init__(message)
        self.rank_specific = rank_specific


class Terminated(Exception):
    """A collective failed on a rank that had been sent a termination signal while it waited (the launcher or the
    scheduler is ending the job, and whoever stopped it has said why): the rank leaves as the signal would have
    ended it, exit code 128 + the signal, with a note rather than an error line that would blame another rank."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class ConfigError(UserError):
    """An invalid option or config file."""


class ModelFolderError(UserError):
    """A model folder (upstream's published format: config.json + model.safetensors) or preset name that cannot be
    loaded: missing files, unexpected or mis-shaped tensors, a hub id not on this machine."""


class CheckpointError(UserError):
    """A training checkpoint (DeepSpeed's state under save_dir/checkpoints) that cannot be resumed from."""


class DataError(UserError):
    """Input market data that cannot be used (missing folder, bad columns, no rows in range, ...)."""


FULL_DISK_BYTES = 1 << 20
"""Free space below which a write that failed without an errno is taken for a full disk."""


def _disk_full(path: str | os.PathLike) -> bool:
    folder = os.path.abspath(os.fspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


@contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """Attach ``path`` to an OSError raised without a file name (a failed write or flush: a full disk reports only
    "No space left on device"), so that the one-line report names what could not be written. numpy's
    ``tofile`` (inside ``np.save``) even drops the errno; such an error on a disk with no space left is reported
    as the ENOSPC it was."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None and _disk_full(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path)) from exc
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise
