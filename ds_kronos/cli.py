"""Shared plumbing for the thin scripts in ``launch/``: one clear line and a non-zero exit on user errors."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from ds_kronos.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run ``main(argv)`` and exit: 0 on success, 2 with ``error: <message>`` on a :class:`UserError`."""
    try:
        main(argv)
    except UserError as exc:
        prog = sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "ds_kronos"
        print(f"{prog}: error: {str(exc).strip()}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)
