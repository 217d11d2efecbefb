"""One live job per ``save_dir``: a lock that a training job holds from its start to its end.

Two jobs on one save_dir (a requeued job racing an orphan of the previous allocation, a ``--resume`` typed while
the run still trains) would write the same checkpoints and exports. The second is refused before it changes
anything there, in one line naming the holder (host, pid, since when), exit code 2; the first goes on unaffected.

The lock is a POSIX record lock (``fcntl.lockf``) on ``save_dir/.ds_kronos.lock``, taken by the job's global rank 0
alone; every rank learns the verdict from it (:func:`hold_save_dir`). The kernel (or, on a shared file system, its
lock manager) drops the lock when the holder's process ends in any way, kill -9 included, so a job that died never
blocks its ``--resume``; the file stays, and names the last holder for the message. A POSIX lock belongs to the
process, not to one descriptor: a forked DataLoader worker does not inherit it, and closing *any* descriptor of the
file in the holder's process drops it, so nothing else in a job opens this file.

Shared file systems (docs/reliability.md): NFSv3 through its lock manager (lockd/statd), NFSv4 natively (a lock of a
client that is lost expires with its lease, 90 s by default); Lustre only when mounted with ``-o flock`` (``localflock``
locks per node only; without either, locking fails with ENOSYS: then the job stops with a line saying so, and
``DS_KRONOS_SAVE_DIR_LOCK=off`` runs without the check); GPFS/Spectrum Scale and BeeGFS (``tuneUseGlobalFileLocks``)
support them cluster-wide.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ds_kronos.errors import ConfigError, UserError

LOCK_NAME = ".ds_kronos.lock"
MARK = "ds_kronos_save_dir_lock"
"""The key that makes the file ours (a file of that name without it is someone else's, and is left alone)."""
SWITCH_ENV = "DS_KRONOS_SAVE_DIR_LOCK"
"""``off``: run without the lock (a file system without POSIX locks)."""
_HELD_ERRNOS = (errno.EAGAIN, errno.EACCES)
_UNSUPPORTED_ERRNOS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class SaveDirInUse(UserError):
    """The save_dir is held by a live job."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    since: str

    def describe(self) -> str:
        return f"{self.host} pid {self.pid} since {self.since}"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _read(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace")


def _holder(text: str) -> Holder | None:
    """The holder a lock file of ours names; None for an empty file (a holder between its open and its write)."""
    record = json.loads(text)
    return Holder(str(record["host"]), int(record["pid"]), str(record["since"]))


def _is_ours(text: str) -> bool:
    if not text.strip():
        return True
    try:
        record = json.loads(text)
        return isinstance(record, dict) and record.get(MARK) == 1
    except ValueError:
        return False


class SaveDirLock:
    """The lock of one save_dir, held by this process until :meth:`release` or its end."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, save_dir: Path) -> SaveDirLock:
        """Take the lock, or raise :class:`SaveDirInUse` (a live holder) / :class:`ConfigError` (a foreign file of
        that name, a file system without locks) having changed nothing in ``save_dir``."""
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        path = save_dir / LOCK_NAME
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a file; ds_kronos keeps the lock of {save_dir} there: move it away")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            text = _read(fd)
            os.close(fd)
            if exc.errno in _HELD_ERRNOS:
                raise SaveDirInUse(in_use_message(save_dir, text)) from None
            if exc.errno in _UNSUPPORTED_ERRNOS:
                raise ConfigError(f"{save_dir}: its file system does not support file locks ({os.strerror(exc.errno)}),"
                                  f" which keep two jobs off one save_dir (Lustre: mount with -o flock; NFSv3: run "
                                  f"lockd): or set {SWITCH_ENV}=off to run without that check") from None
            raise
        text = _read(fd)
        if not _is_ours(text):
            os.close(fd)  # releases the lock; the file is left as it was
            raise ConfigError(f"{path}: not a ds_kronos lock file (it holds other content); ds_kronos keeps the lock "
                              f"of {save_dir} at that name: move the file away")
        record = {MARK: 1, "host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        os.fsync(fd)  # another node reads it (NFS writes back on close or fsync; the holder never closes it early)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def in_use_message(save_dir: Path, text: str) -> str:
    try:
        holder = _holder(text).describe() if text.strip() else "a job that is just starting"
    except (ValueError, KeyError, TypeError):
        holder = "a holder that is not a ds_kronos job"
    return (f"{save_dir} is in use by another job ({holder}): two jobs would write the same checkpoints and "
            f"outputs; wait for it to end or stop it (a job that died holds nothing: --resume then goes on)")


def probe(save_dir: Path) -> str | None:
    """Whether a live job holds ``save_dir``: its :func:`in_use_message`, else None. Takes the lock for a moment
    (never call it in the process of a job that holds it: closing the probe's descriptor would drop that lock)."""
    path = Path(save_dir) / LOCK_NAME
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # A shared (read) lock, so that the probe needs no write access; it conflicts with the holder's.
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD_ERRNOS:
            return in_use_message(Path(save_dir), _read(fd))
        raise
    finally:
        os.close(fd)
    return None


_HELD: dict[Path, SaveDirLock] = {}
"""The save_dirs this process holds: a second job in one process (tests) takes its own lock again."""


def hold_save_dir(save_dir: Path, runtime) -> SaveDirLock | None:
    """Collective: global rank 0 takes the lock of ``save_dir``; on every rank, the refusal as the same
    :class:`UserError` (printed by rank 0 alone). Returns rank 0's lock (None on the other ranks, and with
    ``DS_KRONOS_SAVE_DIR_LOCK=off``)."""
    from ds_kronos.runtime import outcome_on_main

    if os.environ.get(SWITCH_ENV, "").lower() == "off":
        return None
    key = Path(save_dir).resolve()
    taken: list[SaveDirLock] = []

    def take() -> str | None:
        try:
            taken.append(_HELD[key] if key in _HELD else SaveDirLock.acquire(key))
        except UserError as exc:
            return str(exc)
        return None

    problem = outcome_on_main("save_dir_lock", take, runtime, wait_s=60.0, what="locking the save_dir")
    if problem:
        raise SaveDirInUse(problem)
    if taken:
        _HELD[key] = taken[0]
        return taken[0]
    return None


def release_save_dir(lock: SaveDirLock | None) -> None:
    if lock is not None:
        _HELD.pop(lock.path.parent.resolve(), None)
        lock.release()
