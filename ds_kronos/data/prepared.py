"""The prepared-dataset folder: writing it atomically and opening it memory-mapped.

``OUT/manifest.json`` plus, per split, ``values.npy`` (float32 OHLCV + amount), ``timestamps.npy``,
``time_features.npy`` and ``offsets.npy`` (symbol i owns rows offsets[i]:offsets[i+1]); plain ``.npy`` opened with
``mmap_mode='r'`` (no pickle), so every rank on a node shares one copy in the page cache. The format, every manifest
field and the write protocol are in ``docs/data_format.md``. :meth:`PreparedDataset.open` checks the manifest and
every file's header, size and shape without reading the arrays; :func:`ds_kronos.data.verify.verify_prepared` adds
the content (hashes, finite values) once per node and change.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ds_kronos.data.manifest import ARRAYS, FILES, FORMAT_NAME, FORMAT_VERSION, SPLITS, ManifestWindow, check_manifest
from ds_kronos.data.npy import open_npy
from ds_kronos.data.output import staged_output
from ds_kronos.data.series import TIME_FEATURE_COLUMNS, VALUE_COLUMNS, SymbolSeries, time_features
from ds_kronos.data.split_arrays import SplitArrays
from ds_kronos.data.split_choice import SplitChoice
from ds_kronos.data.store.shards import INDEX_NAME, SPLIT_VIEW_NAME
from ds_kronos.errors import ConfigError, DataError

__all__ = ["ARRAYS", "FILES", "FORMAT_NAME", "FORMAT_VERSION", "SPLITS", "PreparedDataset", "SplitArrays",
           "content_hashes", "count_windows", "write_prepared"]
_DTYPES = MappingProxyType({"values": np.float32, "timestamps": np.int64, "time_features": np.int8,
                           "offsets": np.int64})


class PreparedDataset(ManifestWindow):
    """A prepared dataset folder, validated on open; arrays are memory-mapped read-only."""

    def __init__(self, path: Path, manifest: dict, splits: dict[str, SplitArrays]):
        self.path = path
        self.manifest = manifest
        self._splits = splits

    @classmethod
    def open(cls, path: str | os.PathLike, split: SplitChoice | None = None) -> "PreparedDataset":
        """Open a prepared folder after the checks that read no array data: the manifest's keys and types, every
        file's header, size and shape, and the offsets against the manifest's rows per symbol. ``split``: another
        split than the one prepared (stores only: their splits are views)."""
        root = Path(path)
        if (root / INDEX_NAME).is_file():  # a store (format 2): the same interface over its shards
            from ds_kronos.data.store.view import open_store

            return open_store(root, ranges=None if split is None else split.ranges,
                              fractions=None if split is None else split.fractions)
        if (root / SPLIT_VIEW_NAME).is_file():  # another split of a store, named by a small file
            from ds_kronos.data.store.split_view import open_split_view

            return open_split_view(root, split)
        if split is not None and root.is_dir():
            raise ConfigError(f"{root}: a format-1 folder holds the split it was prepared with; to choose the split "
                              f"when a job opens the data, prepare a store (launch/prepare_data.py --format 2)")
        manifest_path = root / "manifest.json"
        if (root / ".work").is_dir():
            raise DataError(f"{root}: its preparation did not finish; run the same launch/prepare_data.py command "
                            f"again to resume it")
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (a prepared dataset is a folder; see launch/prepare_data.py)")
        if not manifest_path.is_file():
            raise DataError(f"{root}: not a prepared dataset (no manifest.json); create it with launch/prepare_data.py")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{manifest_path}: unreadable manifest ({exc})") from None
        check_manifest(manifest, manifest_path)
        splits = {name: _open_split(root, name, manifest["splits"][name]) for name in SPLITS}
        return cls(root, manifest, splits)

    def split(self, name: str) -> SplitArrays:
        if name not in self._splits:
            raise DataError(f"{self.path}: unknown split {name!r} (known: {', '.join(SPLITS)})")
        return self._splits[name]

    @property
    def train(self) -> SplitArrays:
        return self._splits["train"]

    @property
    def val(self) -> SplitArrays:
        return self._splits["val"]

    @property
    def test(self) -> SplitArrays:
        return self._splits["test"]


def _open_array(file: Path, array: str, shape: tuple[int, ...]) -> np.ndarray:
    return open_npy(file, _DTYPES[array], shape)


def _open_split(root: Path, name: str, info: dict) -> SplitArrays:
    rows, lengths = int(info["rows"]), np.asarray(info["rows_per_symbol"], dtype=np.int64)
    expected = {"values": (rows, len(VALUE_COLUMNS)), "timestamps": (rows,),
                "time_features": (rows, len(TIME_FEATURE_COLUMNS)), "offsets": (len(lengths) + 1,)}
    arrays = {array: _open_array(root / name / f"{array}.npy", array, expected[array]) for array in ARRAYS}
    offsets = np.asarray(arrays["offsets"])
    if len(offsets) and (offsets[0] != 0 or not np.array_equal(np.diff(offsets), lengths)):
        # Symbol boundaries decide every window: wrong ones would read across symbols or past the end mid-training.
        bad = 0 if offsets[0] != 0 else int(np.flatnonzero(np.diff(offsets) != lengths)[0])
        symbol = info["symbols"][bad] if bad < len(info["symbols"]) else "?"
        raise DataError(f"{root / name / 'offsets.npy'}: symbol {symbol} spans rows [{offsets[bad]}, "
                        f"{offsets[bad + 1]}), but the manifest gives it {lengths[bad]} rows from row "
                        f"{int(lengths[:bad].sum())} (offsets start at 0 and grow by each symbol's rows)")
    return SplitArrays(name=name, symbols=tuple(info["symbols"]), **arrays)


def content_hashes(root: Path, files: list[str] | tuple[str, ...], overall: bool = True,
                   each: bool = True) -> tuple[str | None, dict[str, str]]:
    """(sha256 over the files' names and bytes in order, as the manifest's ``sha256``; each file's own sha256),
    in one read; ``overall``/``each`` False skips a digest that is not needed (None / {})."""
    digest, per_file = hashlib.sha256(), {}
    for rel in files:
        digest.update(rel.encode())
        own = hashlib.sha256()
        with open(root / rel, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                if overall:
                    digest.update(chunk)
                if each:
                    own.update(chunk)
        if each:
            per_file[rel] = own.hexdigest()
    return (digest.hexdigest() if overall else None), per_file


def count_windows(lengths: np.ndarray, window: int) -> int:
    return int(np.maximum(np.asarray(lengths, dtype=np.int64) - window + 1, 0).sum())


def _is_prepared(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def prepared_output(out: str | os.PathLike, overwrite: bool):
    """The staging folder of a prepared dataset (see :func:`ds_kronos.data.output.staged_output`)."""
    return staged_output(out, overwrite, _is_prepared, "a prepared dataset folder")


def write_prepared(out: str | os.PathLike, splits: dict[str, list[SymbolSeries]], meta: dict,
                   overwrite: bool = False) -> dict:
    """Write the three splits and the manifest into ``out`` atomically; returns the manifest.

    ``meta`` supplies the source description, ``freq``, ``lookback``, ``predict`` and the split settings.
    """
    with prepared_output(out, overwrite) as tmp:
        return write_arrays(tmp, splits, meta)


def write_arrays(folder: Path, splits: dict[str, list[SymbolSeries]], meta: dict) -> dict:
    """Write the arrays and the manifest into ``folder`` (an empty staging folder); returns the manifest."""
    window = int(meta["lookback"]) + int(meta["predict"]) + 1
    split_info = {}
    for name in SPLITS:
        series = splits.get(name, [])
        (folder / name).mkdir()
        lengths = np.array([len(s) for s in series], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        timestamps = (np.concatenate([s.timestamps for s in series]) if series
                      else np.zeros(0, np.int64)).astype(np.int64)
        values = (np.concatenate([s.values for s in series]) if series
                  else np.zeros((0, len(VALUE_COLUMNS)), np.float32)).astype(np.float32)
        if not np.isfinite(values).all():  # the sources screen every value; this is the last line of defence
            raise AssertionError(f"non-finite values reached the writer in split {name}")
        arrays = {"values": values, "timestamps": timestamps, "time_features": time_features(timestamps),
                  "offsets": offsets}
        for array in ARRAYS:
            np.save(folder / name / f"{array}.npy", arrays[array], allow_pickle=False)
        split_info[name] = {
            "symbols": [s.symbol for s in series],
            "rows_per_symbol": lengths.tolist(),
            "rows": int(offsets[-1]),
            "windows": count_windows(lengths, window),
            "first": _iso(timestamps.min()) if len(timestamps) else None,
            "last": _iso(timestamps.max()) if len(timestamps) else None,
        }
    sha256, per_file = content_hashes(folder, FILES)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **meta,
        "window": window,
        "value_columns": list(VALUE_COLUMNS),
        "time_feature_columns": list(TIME_FEATURE_COLUMNS),
        "splits": split_info,
        "files": list(FILES),
        "sha256": sha256,
        "file_sha256": per_file,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _iso(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[s]"))
