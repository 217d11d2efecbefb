"""The jobs' progress lines: ``say`` prints one line to stdout and flushes it (logs of several ranks interleave)."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(message, flush=True, file=sys.stdout)
