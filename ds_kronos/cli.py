"""Shared plumbing for the thin scripts in ``launch/``: one clear line and a non-zero exit on user errors."""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from ds_kronos.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _should_report(rank: int) -> bool:
    """Rank 0 always reports. Before the process group exists every rank validates the same inputs and fails with
    the same message, so the other ranks stay quiet (one line, not one per process); after it exists an error
    may be rank-specific, so every rank reports (prefixed with its rank)."""
    distributed = sys.modules.get("torch.distributed")
    group_ready = bool(distributed and distributed.is_available() and distributed.is_initialized())
    return rank == 0 or group_ready


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit: 0 on success, 2 with ``prog: error: <message>`` on a :class:`UserError`."""
    try:
        main(argv)
    except UserError as exc:
        rank = int(os.environ.get("RANK", "0") or 0)
        if _should_report(rank):
            prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ds_kronos"
            where = f"[rank {rank}] " if rank else ""
            print(f"{where}{prog}: error: {str(exc).strip()}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)
