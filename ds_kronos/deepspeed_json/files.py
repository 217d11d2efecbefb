"""The DeepSpeed JSON files shipped inside the package, and how a ``--deepspeed_config`` value finds one.

The files live in ``ds_kronos/ds_configs/`` (package data, so ``pip install .`` carries them); the repository's
top-level ``ds_configs/`` is a link to that folder, for the commands in the README. A value is used as typed when
that file exists (a user's own JSON, or ``ds_configs/zero2.json`` run from the repository root). Otherwise a bare
name (``zero2``, ``zero2.json``) or ``ds_configs/<name>.json`` means the shipped file, so the defaults and the
README's commands work from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from ds_kronos.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "ds_configs"
FOLDER_NAME = "ds_configs"
"""The folder name users write in front of a shipped file (``ds_configs/zero2.json``)."""


def shipped_names() -> list[str]:
    """Names of the shipped JSON files without ``.json``, sorted (``tokenizer_zero2``, ``zero0``, ...)."""
    return sorted(path.stem for path in SHIPPED_DIR.glob("*.json"))


def _shipped_name(value: str) -> str | None:
    """The file name ``value`` gives a shipped file, or None when it does not have the form of one."""
    path = Path(value)
    if path.is_absolute() or path.parts[:-1] not in ((), (FOLDER_NAME,)):
        return None
    return path.name if path.suffix == ".json" else f"{path.name}.json"


def config_path(name: str) -> Path:
    """The shipped file ``name`` names: ``zero2``, ``zero2.json`` or ``ds_configs/zero2.json``."""
    file_name = _shipped_name(name) if name else None
    if file_name is None or not (SHIPPED_DIR / file_name).is_file():
        raise ConfigError(f"no shipped DeepSpeed config {name!r}; shipped: {', '.join(shipped_names())}")
    return SHIPPED_DIR / file_name


def locate_ds_config(value: str) -> str:
    """The file to open for ``--deepspeed_config value``.

    ``value`` itself when it is a file; else the shipped file it names; else ``value`` unchanged, so that the
    caller's "file not found" names what the user typed rather than a path inside the package.
    """
    if not value or os.path.isfile(value):
        return value
    file_name = _shipped_name(value)
    if file_name is not None and (SHIPPED_DIR / file_name).is_file():
        return str(SHIPPED_DIR / file_name)
    return value
