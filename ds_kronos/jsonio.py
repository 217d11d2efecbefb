"""Strict JSON output shared by the jobs' reports (summary.json, report.json): written atomically, no NaN."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ds_kronos.atomic import write_text_atomic


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays to Python, paths to str, NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary sibling, then rename: a reader never sees a half-written file."""
    write_text_atomic(path, json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")
