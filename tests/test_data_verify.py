"""A prepared set whose files do not match its manifest is refused before any work, and the check that reads every
byte runs once per node and change: on local rank 0, with a verdict the other ranks and later runs reuse."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from ds_kronos.data import PreparedDataset, WindowDataset, verify_prepared
from ds_kronos.data import verify as verify_module
from ds_kronos.data.manifest import FILES
from ds_kronos.data.prepared import content_hashes
from ds_kronos.errors import DataError


@pytest.fixture
def copy(demo_prepared_dir, tmp_path, monkeypatch):
    """A private copy of the demo set, with no verdict yet, and a private cache folder."""
    monkeypatch.setenv("DS_KRONOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    target = tmp_path / "prepared"
    shutil.copytree(demo_prepared_dir, target)
    for stale in target.glob(".ds_kronos_verified*"):
        stale.unlink()
    return target


def _count_content_checks(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = verify_module.content_problem

    def counted(prepared):
        calls.append(1)
        return real(prepared)
    monkeypatch.setattr(verify_module, "content_problem", counted)
    return calls


def _poke(path, rows, column, value) -> None:
    values = np.load(path, mmap_mode="r+")
    values[rows, column] = value
    values.flush()


def test_verified_once_then_trusted_until_a_file_changes(copy, monkeypatch):
    calls = _count_content_checks(monkeypatch)
    assert verify_prepared(copy).train.values.shape[0] > 0
    assert len(calls) == 1 and (copy / ".ds_kronos_verified.json").is_file()
    for _ in range(3):
        verify_prepared(copy)  # a later run, another rank: no re-read
    assert len(calls) == 1
    # Same bytes, newer mtime: the verdict's key no longer matches, so it is checked again (and passes).
    stamp = (copy / "test" / "offsets.npy").stat().st_mtime_ns + 10**9
    os.utime(copy / "test" / "offsets.npy", ns=(stamp, stamp))
    verify_prepared(copy)
    assert len(calls) == 2


def test_nan_rows_written_after_preparation_are_refused(copy, monkeypatch):
    verify_prepared(copy)  # a verdict for the good files exists
    _poke(copy / "train" / "values.npy", slice(100, 200), 3, np.nan)
    with pytest.raises(DataError, match=r"train/values\.npy: sha256 \w+\.\.\. differs from the manifest"):
        verify_prepared(copy)
    calls = _count_content_checks(monkeypatch)
    with pytest.raises(DataError, match="values.npy: sha256"):  # the failure is a verdict too
        verify_prepared(copy)
    assert calls == []


def test_non_finite_values_with_matching_hashes_are_refused(copy):
    """A set prepared before preparation refused such values: its hashes match, its values do not pass."""
    split = PreparedDataset.open(copy).train
    symbol, row = split.symbols[1], int(split.offsets[1]) + 7
    _poke(copy / "train" / "values.npy", row, 4, np.inf)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"], manifest["file_sha256"] = content_hashes(copy, FILES)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=rf"train/values\.npy: symbol {symbol}, row 7 \(.*\), column 'vol' is inf"):
        verify_prepared(copy)


def test_a_manifest_without_per_file_hashes_is_refused(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["file_sha256"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="file_sha256 is missing .*: prepare it again"):
        verify_prepared(copy)


def test_time_must_increase_within_each_symbol(copy):
    stamps = np.load(copy / "val" / "timestamps.npy", mmap_mode="r+")
    offsets = PreparedDataset.open(copy).val.offsets
    stamps[int(offsets[1]) + 3] = stamps[int(offsets[1]) + 2]
    stamps.flush()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"], manifest["file_sha256"] = content_hashes(copy, FILES)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"val/timestamps\.npy: symbol \w+, row 3: time does not increase"):
        verify_prepared(copy)


def test_cheap_checks_need_no_content_read(copy, demo_prepared_dir, monkeypatch):
    calls = _count_content_checks(monkeypatch)
    offsets = np.load(copy / "val" / "offsets.npy", mmap_mode="r+")
    offsets[2] = offsets[1] - 1
    offsets.flush()
    with pytest.raises(DataError, match=r"val/offsets\.npy: symbol \w+ spans rows"):
        verify_prepared(copy)
    np.save(copy / "val" / "offsets.npy", np.zeros(len(offsets) + 5, dtype=np.int64))
    with pytest.raises(DataError, match=r"val/offsets\.npy: shape"):
        verify_prepared(copy)
    shutil.copy(demo_prepared_dir / "val" / "offsets.npy", copy / "val" / "offsets.npy")
    with open(copy / "test" / "values.npy", "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 24)
    with pytest.raises(DataError, match=r"test/values\.npy: \d+ bytes, expected \d+ for float32"):
        PreparedDataset.open(copy)
    assert calls == []


@pytest.mark.parametrize("change, expected", [
    (lambda m: m["splits"].pop("val"), "split 'val' missing"),
    (lambda m: m.update(lookback=-1), "lookback must be a positive integer, got -1"),
    (lambda m: m.update(files=["../../etc/passwd"] + m["files"][1:]), "files must be ["),
    (lambda m: m["splits"]["test"].update(rows_per_symbol="x"), "splits.test.rows_per_symbol must be a list"),
    (lambda m: m.update(splits=[]), "splits must be an object"),
    (lambda m: m.update(sha256=None), "sha256 must be 64 hexadecimal digits"),
])
def test_manifest_of_the_wrong_shape_or_type(copy, change, expected):
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError) as err:
        PreparedDataset.open(copy)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_verdict_goes_to_the_cache_when_the_folder_refuses_it(copy, tmp_path, monkeypatch):
    (copy / ".ds_kronos_verified.json").mkdir()  # the folder cannot take the file (as if read-only)
    verify_prepared(copy)
    cached = list((tmp_path / "cache" / "verified").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["problem"] is None
    calls = _count_content_checks(monkeypatch)
    verify_prepared(copy)
    assert calls == []


def test_a_verdict_for_other_files_is_not_trusted(copy, monkeypatch):
    verify_prepared(copy)
    verdict = json.loads((copy / ".ds_kronos_verified.json").read_text())
    verdict["key"]["files"]["train/values.npy"][0] += 1
    (copy / ".ds_kronos_verified.json").write_text(json.dumps(verdict))
    calls = _count_content_checks(monkeypatch)
    verify_prepared(copy)
    assert calls == [1]


def test_a_verdict_copied_with_the_data_is_not_trusted_on_the_copy(copy, tmp_path):
    """A node's own copy (rsync -a, cp -a: sizes and mtimes kept, the verdict file too) is checked again on that
    node: a byte changed on the way, with the size and mtime restored, is found."""
    verify_prepared(copy)
    staged = tmp_path / "node1" / "prepared"
    shutil.copytree(copy, staged)  # copy2: mtimes kept, .ds_kronos_verified.json copied along
    stamp = (staged / "train" / "values.npy").stat().st_mtime_ns
    _poke(staged / "train" / "values.npy", 5, 1, 123.0)
    os.utime(staged / "train" / "values.npy", ns=(stamp, stamp))
    with pytest.raises(DataError, match=r"node1/prepared/train/values\.npy: sha256 \w+\.\.\. differs"):
        verify_prepared(staged)


def test_other_local_ranks_wait_for_local_rank_0(copy, monkeypatch):
    monkeypatch.setattr(verify_module, "POLL_S", 0.01)
    calls = _count_content_checks(monkeypatch)
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(verify_prepared(copy, local_rank=1)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and calls == []  # rank 1 reads nothing and waits
    verify_prepared(copy, local_rank=0)
    waiter.join(timeout=10)
    assert not waiter.is_alive() and isinstance(results[0], PreparedDataset) and calls == [1]
    # A refusal reaches the waiting ranks as the same error.
    _poke(copy / "train" / "values.npy", 0, 0, 2.0)
    errors: list[str] = []

    def wait_for_error():
        try:
            verify_prepared(copy, local_rank=3)
        except DataError as exc:
            errors.append(str(exc))
    waiter = threading.Thread(target=wait_for_error)
    waiter.start()
    with pytest.raises(DataError) as err:
        verify_prepared(copy, local_rank=0)
    waiter.join(timeout=10)
    assert errors == [str(err.value)]


def test_nan_never_reaches_a_token_in_silence(copy):
    """Unverified data with NaN: the window that holds it is refused, not normalised into some token."""
    split = PreparedDataset.open(copy).train
    _poke(copy / "train" / "values.npy", int(split.offsets[0]) + 5, 2, np.nan)
    dataset = WindowDataset(PreparedDataset.open(copy), "train", shuffle=False)
    x, _ = dataset.windows(np.array([int(split.offsets[0]) + 10]))  # a window that does not contain it
    assert np.isfinite(x.numpy()).all()
    with pytest.raises(DataError, match=f"split 'train', symbol {split.symbols[0]}, row 5: non-finite"):
        dataset.windows(np.array([int(split.offsets[0])]))
