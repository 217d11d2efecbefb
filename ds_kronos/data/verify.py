"""Refusing a prepared folder whose files do not match its manifest, before any work, once per node and change.

Every rank runs :meth:`PreparedDataset.open`'s checks, which read no array data (manifest keys and types, file
headers, sizes and shapes, offsets against the manifest). The content check reads every byte: each file's
SHA-256 against the manifest (the overall one for manifests written before per-file hashes), every value finite,
time increasing within each symbol. Its verdict is recorded in
a small JSON file keyed by the manifest's hash and every file's size, modification and change time (see
:mod:`ds_kronos.data.file_stamp`), so it runs once
after preparation (or after any change to a file), on local rank 0 of each node only; the other local ranks wait
for the verdict and later runs reuse it. A verdict whose key no longer matches the files is never trusted.

Where the verdict is kept: ``<folder>/.ds_kronos_verified.json`` when the folder is writable, else under
``$DS_KRONOS_CACHE`` (default ``$XDG_CACHE_HOME/ds_kronos`` or ``~/.cache/ds_kronos``), else under the
system's temporary folder. Delete it to force a new check.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ds_kronos.atomic import write_text_atomic
from ds_kronos.data.file_stamp import file_stamp
from ds_kronos.data.manifest import FILES, SPLITS
from ds_kronos.data.prepared import PreparedDataset, content_hashes
from ds_kronos.data.series import VALUE_COLUMNS
from ds_kronos.data.split_choice import SplitChoice
from ds_kronos.errors import DataError

VERDICT_NAME = ".ds_kronos_verified.json"
VERDICT_FORMAT = "ds_kronos.verified"
VERDICT_VERSION = 1
POLL_S = 0.2
WAIT_LIMIT_S = 600.0
"""A rank that waited this long for its node's verdict checks the content itself (no local rank 0 is checking:
a LOCAL_RANK left over in the environment, a launcher that numbers ranks differently)."""
_CHUNK_ROWS = 1 << 20  # rows per pass of the value checks: bounded memory on any size of split


def _again(what: str) -> str:
    return f"{what}; prepare the data again with launch/prepare_data.py"


def _first_non_finite(prepared: PreparedDataset) -> str | None:
    for name in SPLITS:
        split = prepared.split(name)
        for start in range(0, len(split.values), _CHUNK_ROWS):
            chunk = np.asarray(split.values[start:start + _CHUNK_ROWS])
            bad = ~np.isfinite(chunk)
            if bad.any():
                row, column = (int(i) for i in np.argwhere(bad)[0])
                row += start
                symbol = int(np.searchsorted(split.offsets, row, side="right") - 1)
                day = np.datetime64(int(split.timestamps[row]), "ns").astype("datetime64[s]")
                return _again(f"{prepared.path / name / 'values.npy'}: symbol {split.symbols[symbol]}, row "
                              f"{row - int(split.offsets[symbol])} ({day}), column {VALUE_COLUMNS[column]!r} is "
                              f"{chunk[row - start, column]}: every value must be finite")
    return None


def _first_unordered(prepared: PreparedDataset) -> str | None:
    for name in SPLITS:
        split = prepared.split(name)
        offsets = np.asarray(split.offsets)
        for start in range(1, len(split.timestamps), _CHUNK_ROWS):
            stop = min(len(split.timestamps), start + _CHUNK_ROWS)
            steps = np.asarray(split.timestamps[start:stop]) - np.asarray(split.timestamps[start - 1:stop - 1])
            rows = np.arange(start, stop)
            first_of_symbol = offsets[np.searchsorted(offsets, rows)] == rows  # time may go back between symbols
            bad = np.flatnonzero(~first_of_symbol & (steps <= 0))
            if len(bad):
                row = start + int(bad[0])
                symbol = int(np.searchsorted(offsets, row, side="right") - 1)
                return _again(f"{prepared.path / name / 'timestamps.npy'}: symbol {split.symbols[symbol]}, row "
                              f"{row - int(offsets[symbol])}: time does not increase")
    return None


def content_problem(prepared: PreparedDataset) -> str | None:
    """Read every byte: hashes against the manifest, finite values, increasing time. None when all is well."""
    expected = prepared.manifest["file_sha256"]
    # Each file's own digest (it names the file that changed); the overall one is not needed for that.
    _, per_file = content_hashes(prepared.path, FILES, overall=False)
    for rel in FILES:
        if per_file[rel] != expected[rel]:
            return _again(f"{prepared.path / rel}: sha256 {per_file[rel][:12]}... differs from the manifest's "
                          f"{expected[rel][:12]}... (the file changed after preparation)")
    # Hashes match, so these come from the preparation itself (one made before it refused such values).
    return _first_non_finite(prepared) or _first_unordered(prepared)


def verdict_key(prepared: PreparedDataset) -> dict[str, Any]:
    """What a verdict is valid for: the manifest's hash and the stamp (size, mtime, ctime) of the manifest and every
    file."""
    return {"sha256": prepared.manifest["sha256"],
            "files": {rel: file_stamp(prepared.path / rel) for rel in ("manifest.json", *FILES)}}


def _cache_dir() -> Path:
    if os.environ.get("DS_KRONOS_CACHE"):
        return Path(os.environ["DS_KRONOS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ds_kronos"


def verdict_locations(folder: Path) -> list[Path]:
    """Where a verdict about ``folder`` may be kept, in order of preference."""
    name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32] + ".json"
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [folder / VERDICT_NAME, _cache_dir() / "verified" / name,
            Path(tempfile.gettempdir()) / f"ds_kronos-{uid}" / "verified" / name]


def read_verdict(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The recorded verdict for exactly these files, or None."""
    for location in verdict_locations(folder):
        try:
            verdict = json.loads(location.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(verdict, dict) and verdict.get("format") == VERDICT_FORMAT
                and verdict.get("version") == VERDICT_VERSION and verdict.get("key") == key):
            return verdict
    return None


def write_verdict(folder: Path, key: dict[str, Any], problem: str | None) -> Path:
    """Record a verdict in the first writable location (atomically: a reader sees all of it or nothing)."""
    verdict = {"format": VERDICT_FORMAT, "version": VERDICT_VERSION, "key": key, "problem": problem,
               "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tried = []
    for location in verdict_locations(folder):
        try:
            location.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(location, json.dumps(verdict, indent=1) + "\n")  # removes its temporary on failure
            return location
        except OSError as exc:
            tried.append(f"{location.parent} ({exc.strerror or exc})")
    raise DataError(f"{folder}: cannot record its verification anywhere: {'; '.join(tried)}")


def _local_rank() -> int:
    """This process's rank on its node, from the launcher's environment (deepspeed/torchrun, Open MPI, Slurm)."""
    for name in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


def verify_prepared(path: str | os.PathLike, *, local_rank: int | None = None,
                    log: Callable[[str], None] | None = None, split: SplitChoice | None = None) -> PreparedDataset:
    """Open a prepared folder and make sure its files are the ones its manifest describes; raise DataError (one
    line naming the file and what is wrong) otherwise. Call it on every rank: only local rank 0 (default: from
    the launcher's environment, else 0) reads the content, once per node and change of the files. ``split``:
    another split than the prepared one (a store's; see :class:`ds_kronos.data.split_choice.SplitChoice`)."""
    prepared = PreparedDataset.open(path, split)
    # A store (format 2) keys and checks its own files (per shard, naming a changed one).
    v1 = isinstance(prepared, PreparedDataset)
    key = verdict_key(prepared) if v1 else prepared.verdict_key()
    verdict = read_verdict(prepared.path, key)
    if verdict is None:
        if (_local_rank() if local_rank is None else local_rank) != 0:
            # Local rank 0 is reading; if it dies, the launcher ends this process too.
            deadline = time.monotonic() + WAIT_LIMIT_S
            while verdict is None and time.monotonic() < deadline:
                time.sleep(POLL_S)
                verdict = read_verdict(prepared.path, key)
        if verdict is None:
            if log is not None:
                log(f"verifying {prepared.path} against its manifest (sha256 and values; once per change)")
            problem = content_problem(prepared) if v1 else prepared.content_problem()
            write_verdict(prepared.path, key, problem)
            verdict = {"problem": problem}
    if verdict["problem"]:
        raise DataError(verdict["problem"])
    return prepared


def prepared_data_problems(data: str | None) -> list[str]:
    """The ``--data`` check shared by every job that reads a prepared dataset: the folder must match its manifest
    (see :func:`verify_prepared`: cheap checks on every rank, the content once per node and
    change of the files), so a bad set is refused before any process group or model exists."""
    if not data:
        return ["--data is required: a prepared dataset folder (see launch/prepare_data.py)"]
    if not os.path.isdir(data):
        return [f"--data {data}: no such folder"]
    try:
        verify_prepared(data)
    except DataError as exc:
        return [str(exc)]
    return []
