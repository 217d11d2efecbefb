"""Shared plumbing for the thin scripts in ``launch/``: one clear line and exit code 2 on user errors.

Who prints: rank 0 always; another rank only for an error raised with ``rank_specific=True`` (see
:mod:`ds_kronos.errors`), prefixed with its rank. Every rank meets a bad config or bad data in the same way, so a
non-zero rank stays quiet and lingers a moment before exiting: the deepspeed launcher kills the remaining ranks as
soon as one exits with an error, and rank 0 must get to print first.

Operating-system errors about the user's files and folders (permission denied, read-only file system, no space
left, a file where a folder should be) are user errors too: they are turned into one line naming the path here,
in one place, rather than at every open and mkdir. Set ``DS_KRONOS_TRACEBACK=1`` to see their traceback instead.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import sys
import time
from typing import Callable, Sequence

from ds_kronos.errors import Terminated, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 75
"""The job saved a checkpoint on a preemption signal and stopped: run it again with ``--resume`` (requeue it).
75 is ``EX_TEMPFAIL`` of sysexits.h, "a temporary failure, try again". Not 143 (128 + SIGTERM): that is what a
process killed by SIGTERM before it could save reports. Not 0 (the run is not finished), 1 (a crash) or 2."""
QUIET_RANK_GRACE_S = 3.0
"""How long a rank that does not print waits before exiting, so that rank 0's line is not cut off by the launcher."""
TRACEBACK_ENV = "DS_KRONOS_TRACEBACK"

# errno -> how the one line describes it. Other OSErrors (and these with DS_KRONOS_TRACEBACK=1) keep their traceback:
# they may be bugs, and a bug must not be disguised as the user's mistake.
_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "not a folder (a file is in the way)",
    errno.EISDIR: "is a folder, expected a file",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
}


def describe_os_error(exc: OSError) -> str | None:
    """One line for an OSError about the user's files, or None when it is not one of those."""
    reason = _ENVIRONMENT_ERRNOS.get(exc.errno)
    if reason is None:
        return None
    path = exc.filename
    if exc.errno == errno.ENOSPC:
        return f"no space left on {path}" if path is not None else "no space left on device"
    if path is None:
        return reason
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{path}{target}: {reason}"


def _group_ready() -> bool:
    distributed = sys.modules.get("torch.distributed")
    return bool(distributed and distributed.is_available() and distributed.is_initialized())


def _should_report(rank: int, exc: UserError) -> bool:
    """Rank 0 always reports; other ranks only what is theirs alone (see the module docstring)."""
    return rank == 0 or bool(getattr(exc, "rank_specific", False))


def _message(exc: UserError) -> str:
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        # Re-raised by a DataLoader in the main process: torch puts the worker's whole traceback in the message,
        # whose last line is "module.Class: <the original message>".
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


class Preempted(Exception):
    """Raised once a job has saved its state on a preemption signal; :func:`run_main` exits with EXIT_PREEMPTED."""


def _report(exc: UserError) -> None:
    rank = int(os.environ.get("RANK", "0") or 0)
    if _should_report(rank, exc):
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ds_kronos"
        where = f"[rank {rank}] " if rank else ""
        print(f"{where}{prog}: error: {_message(exc)}", file=sys.stderr, flush=True)
    elif _group_ready() or os.environ.get("WORLD_SIZE", "1") != "1":
        time.sleep(QUIET_RANK_GRACE_S)


def _say_terminated(signum: int) -> None:
    rank = int(os.environ.get("RANK", "0") or 0)
    prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ds_kronos"
    where = f"[rank {rank}] " if rank else ""
    print(f"{where}{prog}: {signal.Signals(signum).name} arrived while this rank waited on the others: the job is "
          f"being ended elsewhere, so this rank leaves without saving", file=sys.stderr, flush=True)


def _exit(code: int) -> None:
    """Exit without the interpreter's final garbage collection: it walks every object torch, DeepSpeed and pandas
    created, which costs seconds per process each time a job ends (figure in docs/performance.md). Outputs are closed
    and written atomically before this point, and atexit handlers and ordinary finalisers still run."""
    gc.freeze()
    sys.exit(code)


def _end_process(code: int) -> None:
    """End a job's own process once its outputs are written (0, or 75 after a preemption save): Python's exit
    handlers run (atexit: logging, multiprocessing's clean-up of DataLoader workers, weakref finalisers), then the
    process ends without the C++ runtime's static destructors, in which a library thread still joinable at exit
    intermittently aborted a rank that had finished ("terminate called without an active exception", exit 134,
    seen under srun), turning a complete run into a failed job."""
    import atexit

    gc.freeze()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit: 0 on success, 2 with ``prog: error: <message>`` on a :class:`UserError`, 75
    after a save on a preemption signal (:class:`Preempted`)."""
    try:
        main(argv)
    except UserError as exc:
        _report(exc)
        _exit(EXIT_USER_ERROR)
    except OSError as exc:
        message = None if os.environ.get(TRACEBACK_ENV) else describe_os_error(exc)
        if message is None:
            raise
        _report(UserError(message))
        _exit(EXIT_USER_ERROR)
    except Preempted:
        (_end_process if argv is None else _exit)(EXIT_PREEMPTED)  # argv None: the real command line, our process
    except Terminated as exc:
        _say_terminated(exc.signum)
        _exit(128 + exc.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        _exit(EXIT_INTERRUPTED)
    (_end_process if argv is None else _exit)(0)
