"""Errors a user can cause (bad paths, bad configs, bad data).

Library code raises :class:`UserError` with a message that names the file, symbol or option and the problem;
the launch scripts turn it into one line on stderr and a non-zero exit (see :func:`ds_kronos.cli.run_main`).
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: the message is shown as is, without a traceback."""


class ConfigError(UserError):
    """An invalid option or config file."""


class CheckpointError(UserError):
    """A checkpoint folder that cannot be loaded (missing files, unexpected or mis-shaped tensors, hub ids)."""


class DataError(UserError):
    """Input market data that cannot be used (missing folder, bad columns, no rows in range, ...)."""
