"""What a prepared folder's ``manifest.json`` must hold, checked before any array is opened.

A manifest of the wrong shape or type (edited by hand, written by another tool, truncated) is refused with one
line naming the key, instead of a KeyError or TypeError somewhere in training. The array files a manifest lists
must be exactly the format's twelve, in its order: nothing outside the folder is ever opened or hashed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ds_kronos.data.series import TIME_FEATURE_COLUMNS, VALUE_COLUMNS
from ds_kronos.errors import DataError

FORMAT_NAME = "ds_kronos.prepared"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
ARRAYS: tuple[str, ...] = ("values", "timestamps", "time_features", "offsets")
FILES: tuple[str, ...] = tuple(f"{split}/{array}.npy" for split in SPLITS for array in ARRAYS)
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _split_problems(name: str, info: Any) -> list[str]:
    where = f"splits.{name}"
    if not isinstance(info, dict):
        return [f"{where} must be an object, got {type(info).__name__}"]
    problems = []
    symbols, lengths = info.get("symbols"), info.get("rows_per_symbol")
    if not (isinstance(symbols, list) and all(isinstance(s, str) and s for s in symbols)):
        problems.append(f"{where}.symbols must be a list of symbol names, got {symbols!r:.80}")
    elif len(set(symbols)) != len(symbols):
        problems.append(f"{where}.symbols lists a symbol twice")
    if not (isinstance(lengths, list) and all(_is_int(n, 1) for n in lengths)):
        problems.append(f"{where}.rows_per_symbol must be a list of positive integers, got {lengths!r:.80}")
    elif isinstance(symbols, list) and len(lengths) != len(symbols):
        problems.append(f"{where}: {len(symbols)} symbols but {len(lengths)} rows_per_symbol")
    rows = info.get("rows")
    if not _is_int(rows, 0):
        problems.append(f"{where}.rows must be an integer >= 0, got {rows!r}")
    elif isinstance(lengths, list) and all(_is_int(n, 1) for n in lengths) and sum(lengths) != rows:
        problems.append(f"{where}.rows is {rows} but rows_per_symbol sums to {sum(lengths)}")
    return problems


def manifest_problems(manifest: Any) -> list[str]:
    """Every problem of a parsed manifest, each naming its key; [] for a usable one."""
    if not isinstance(manifest, dict):
        return [f"expected a JSON object, got {type(manifest).__name__}"]
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        return [f"format {manifest.get('format')!r} version {manifest.get('format_version')!r} is not "
                f"{FORMAT_NAME!r} version {FORMAT_VERSION}"]
    problems = []
    for key in ("lookback", "predict", "window"):
        if not _is_int(manifest.get(key), 1):
            problems.append(f"{key} must be a positive integer, got {manifest.get(key)!r}")
    if not problems and manifest["window"] != manifest["lookback"] + manifest["predict"] + 1:
        problems.append(f"window {manifest['window']} is not lookback + predict + 1 = "
                        f"{manifest['lookback'] + manifest['predict'] + 1}")
    if not isinstance(manifest.get("freq"), str):
        problems.append(f"freq must be a string such as '1D', got {manifest.get('freq')!r}")
    for key, expected in (("value_columns", VALUE_COLUMNS), ("time_feature_columns", TIME_FEATURE_COLUMNS),
                          ("files", FILES)):
        if manifest.get(key) != list(expected):
            problems.append(f"{key} must be {list(expected)}, got {manifest.get(key)!r:.120}")
    if not (isinstance(manifest.get("sha256"), str) and _SHA256.fullmatch(manifest["sha256"])):
        problems.append(f"sha256 must be 64 hexadecimal digits, got {manifest.get('sha256')!r}")
    per_file = manifest.get("file_sha256")
    if per_file is None:
        problems.append("file_sha256 is missing (a folder prepared by an early ds_kronos): prepare it again")
    elif not (isinstance(per_file, dict) and set(per_file) == set(FILES)
              and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in per_file.values())):
        problems.append("file_sha256 must map each of the twelve array files to 64 hexadecimal digits")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        problems.append(f"splits must be an object with {', '.join(SPLITS)}, got {type(splits).__name__}")
    else:
        for name in SPLITS:
            problems += _split_problems(name, splits.get(name)) if name in splits else [f"split {name!r} missing"]
    if not isinstance(manifest.get("source", {}), dict):
        problems.append(f"source must be an object, got {manifest.get('source')!r:.80}")
    return problems


def check_manifest(manifest: Any, path: Path) -> None:
    """Raise one DataError (one line) naming the first problems of the manifest read from ``path``."""
    problems = manifest_problems(manifest)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataError(f"{path}: {'; '.join(problems[:3])}{more}; prepare the data again with "
                        f"launch/prepare_data.py")


class ManifestWindow:
    """The window settings every opened dataset (a format-1 folder, a store) reads from its ``manifest``."""

    manifest: dict

    @property
    def lookback(self) -> int:
        return int(self.manifest["lookback"])

    @property
    def predict(self) -> int:
        return int(self.manifest["predict"])

    @property
    def freq(self) -> str:
        return str(self.manifest.get("freq", ""))
