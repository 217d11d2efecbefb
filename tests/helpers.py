"""Paths and small utilities shared by the tests (imported as ``helpers``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The read-only ``shared/`` folder beside the repository (CI lays it there); DS_KRONOS_SHARED overrides."""
    path = Path(os.environ.get("DS_KRONOS_SHARED", REPO.parent / "shared"))
    if not (path / "golden").is_dir():
        raise FileNotFoundError(f"shared test data not found at {path} (set DS_KRONOS_SHARED)")
    return path


def golden_dir() -> Path:
    return shared_dir() / "golden"
