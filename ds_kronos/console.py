"""The jobs' progress lines: ``say`` prints one line to stdout and flushes it (logs of several ranks interleave)."""

from __future__ import annotations

import os
import sys


def say(message: str) -> None:
    try:
        print(message, flush=True, file=sys.stdout)
    except BrokenPipeError:
        # Nobody reads this process's output any more (a launcher that went away: pdsh after a SIGTERM); the job
        # goes on, e.g. with the checkpoint a preemption asked for. Later lines go nowhere, and so does the flush at
        # exit (which would otherwise fail again and turn the exit code into 120).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
