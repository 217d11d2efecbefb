"""Preparing a store: resuming an interrupted preparation, --append, the memory budget, and bad input (one line,
exit 2, nothing half-written that looks complete)."""

from __future__ import annotations

import errno
import json

import numpy as np
import pandas as pd
import pytest
from test_data_store import LOOKBACK, PREDICT, RANGES, market, same_windows, write_long_parquet

import ds_kronos.data.store.build as build
import ds_kronos.data.store.shards as shards
from ds_kronos.data import PreparedDataset, prepare_dataset
from ds_kronos.data.store.shards import INDEX_NAME
from ds_kronos.data.verify import verify_prepared
from ds_kronos.errors import DataError
from helpers import run_in_process

ONE_WORKER = ("--workers", "1", "--memory_gb", "0.1958")  # a budget that spreads the symbols over 5 buckets
SPLIT_AT = np.datetime64("2024-01-21T00:00")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """All bars; the same bars in two parts (before and from SPLIT_AT, S09 listed only in the later part)."""
    root = tmp_path_factory.mktemp("build")
    frames = market(symbols=10)
    frames["S09"] = market(symbols=10, seed=3, start="2024-01-21", days=12)["S00"]
    early = {n: f[f["timestamps"] < SPLIT_AT] for n, f in frames.items() if n != "S09"}
    late = {n: f[f["timestamps"] >= SPLIT_AT] for n, f in frames.items()}
    return (write_long_parquet(frames, root / "all"), write_long_parquet(early, root / "early", files=2),
            write_long_parquet(late, root / "late", files=2))


def argv(out, parquet, *extra) -> list[str]:
    ranges = [x for k, (a, b) in RANGES.items() for x in (f"--{k}", f"{a},{b}")]
    return ["--parquet", parquet, "--symbol_column", "ticker", "--out", str(out), "--lookback", str(LOOKBACK),
            "--predict", str(PREDICT), "--memory_gb", "0.3916", "--workers", "2", *ranges, *extra]


def file_stamps(folder) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*.npy"))}


def test_interrupted_preparation_resumes_to_the_same_store(inputs, tmp_path, capsys, monkeypatch):
    everything = inputs[0]
    assert run_in_process("prepare_data.py", argv(tmp_path / "whole", everything, *ONE_WORKER), capsys)[0] == 0
    out = tmp_path / "s"
    calls = []

    def dies_at_the_third(job):
        calls.append(job.shard)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would: nothing after this point runs
        return real(job)

    real = build.run_bucket
    monkeypatch.setattr(build, "run_bucket", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(build.PrepareConfig(**_config(out, everything, workers=1, memory_gb=0.1958)),
                        log=lambda line: None)
    assert not (out / INDEX_NAME).exists()
    with pytest.raises(DataError, match="did not finish; run the same"):
        PreparedDataset.open(out)
    finished = file_stamps(out / "shards")
    assert len({k.split("/")[0] for k in finished}) == 2
    monkeypatch.setattr(build, "run_bucket", real)
    lines: list[str] = []
    prepare_dataset(build.PrepareConfig(**_config(out, everything, workers=1, memory_gb=0.1958)), log=lines.append)
    assert any("resuming the interrupted preparation" in line for line in lines)
    after = file_stamps(out / "shards")
    assert {k: after[k] for k in finished} == finished  # finished shards kept, not rewritten
    whole = json.loads((tmp_path / "whole" / INDEX_NAME).read_text())
    assert json.loads((out / INDEX_NAME).read_text())["sha256"] == whole["sha256"]


def _config(out, parquet, **options) -> dict:
    return {"parquet": [parquet], "symbol_column": "ticker", "out": str(out), "lookback": LOOKBACK,
            "predict": PREDICT, "memory_gb": 0.3916, **RANGES, **options}


def test_append_gives_the_windows_of_one_preparation(inputs, tmp_path, capsys):
    everything, early, late = inputs
    assert run_in_process("prepare_data.py", argv(tmp_path / "whole", everything), capsys)[0] == 0
    out = tmp_path / "s"
    assert run_in_process("prepare_data.py", argv(out, early), capsys)[0] == 0
    before = file_stamps(out)
    assert run_in_process("prepare_data.py", argv(out, late, "--append"), capsys)[0] == 0
    after = file_stamps(out)
    assert {k: after[k] for k in before} == before and len(after) > len(before)  # new shards only
    same_windows(PreparedDataset.open(tmp_path / "whole"), PreparedDataset.open(out))
    assert verify_prepared(out, local_rank=0).split("train").symbols
    # The same bars again overlap the stored range: refused, the store unchanged.
    index = (out / INDEX_NAME).read_text()
    code, err = run_in_process("prepare_data.py", argv(out, late, "--append"), capsys)
    assert code == 2 and "not after its last stored bar" in err and len(err.strip().splitlines()) == 1
    assert (out / INDEX_NAME).read_text() == index and {k: file_stamps(out)[k] for k in after} == after


def test_append_with_other_columns_is_refused(inputs, tmp_path, capsys):
    import pandas as pd

    everything, early, late = inputs
    out = tmp_path / "s"
    assert run_in_process("prepare_data.py", argv(out, early), capsys)[0] == 0
    frame = pd.read_parquet(next(iter(sorted((tmp_path.parent).glob("build*/late/*.parquet")))))
    frame.assign(amount=frame["close"] * frame["volume"]).to_parquet(tmp_path / "more.parquet")
    code, err = run_in_process("prepare_data.py", argv(out, str(tmp_path / "more.parquet"), "--append"), capsys)
    assert code == 2 and "append data with the same columns" in err and len(err.strip().splitlines()) == 1


def test_changed_or_truncated_shard_is_named(inputs, tmp_path, capsys):
    out = tmp_path / "s"
    assert run_in_process("prepare_data.py", argv(out, inputs[0]), capsys)[0] == 0
    values = sorted(out.glob("shards/*/values.npy"))[1]
    data = bytearray(values.read_bytes())
    data[-1] ^= 0xFF
    values.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"shard {values.parent.name} changed after preparation"):
        verify_prepared(out, local_rank=0)
    values.write_bytes(bytes(data[:-8]))
    with pytest.raises(DataError, match="truncated or padded"):
        PreparedDataset.open(out)


def test_full_disk_mid_preparation_is_one_line_and_resumable(inputs, tmp_path, capsys, monkeypatch):
    saved = []
    real_save = np.save

    def fills_the_disk(file, array, **kwargs):
        saved.append(file)
        if len(saved) == 7:  # in the second shard
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, array, **kwargs)

    monkeypatch.setattr(shards.np, "save", fills_the_disk)
    out = tmp_path / "s"
    code, err = run_in_process("prepare_data.py", argv(out, inputs[0], *ONE_WORKER), capsys)
    assert code == 2 and "no space left on" in err and len(err.strip().splitlines()) == 1
    assert not (out / INDEX_NAME).exists() and not list(out.glob("shards/.*"))  # no half-written shard
    monkeypatch.setattr(shards.np, "save", real_save)
    assert run_in_process("prepare_data.py", argv(out, inputs[0], *ONE_WORKER), capsys)[0] == 0


def test_memory_budget_sets_the_buckets(inputs, tmp_path, capsys):
    small = build._plan(build.PrepareConfig(**_config(tmp_path / "a", inputs[0], workers=2)), 0, 25)
    share = 0.3916 * build.GIB / 2 - build.BASE_BYTES
    jobs = max(2, int(np.ceil(small_bars(inputs[0]) * build.BUCKET_BYTES_PER_BAR / share)))
    assert small["buckets"] == jobs * build.FINE_BUCKETS and jobs > 2
    assert small["buffer_bytes"] <= share and small["job_bytes"] == int(share)
    large = build._plan(build.PrepareConfig(**_config(tmp_path / "a", inputs[0], workers=2, memory_gb=8.0)), 0, 25)
    assert large["buckets"] == 2 * build.FINE_BUCKETS
    code, err = run_in_process("prepare_data.py", argv(tmp_path / "b", inputs[0], "--memory_gb", "0.2",
                                                       "--workers", "4"), capsys)
    assert code == 2 and "too small for 4 worker(s)" in err


def small_bars(folder) -> int:
    from pathlib import Path

    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in Path(folder).glob("*.parquet"))


def test_bad_input_paths_are_one_line(tmp_path, capsys):
    code, err = run_in_process("prepare_data.py", ["--parquet", str(tmp_path / "none*.parquet"), "--out",
                                                   str(tmp_path / "s")], capsys)
    assert code == 2 and "no file matches" in err
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    code, err = run_in_process("prepare_data.py", ["--parquet", str(tmp_path / "x.parquet"), "--out",
                                                   str(tmp_path / "s")], capsys)
    assert code == 2 and "cannot read as Parquet" in err and len(err.strip().splitlines()) == 1


def test_nodes_without_a_shared_folder_join_into_one_store(inputs, tmp_path, capsys):
    import shutil

    everything = inputs[0]
    assert run_in_process("prepare_data.py", argv(tmp_path / "whole", everything), capsys)[0] == 0
    for rank in (0, 1):  # each node writes into its own folder
        code, _ = run_in_process("prepare_data.py", argv(tmp_path / f"node{rank}", everything, "--num_nodes", "2",
                                                         "--node_rank", str(rank)), capsys)
        assert code == 0 and not (tmp_path / f"node{rank}" / INDEX_NAME).exists()
    joined = tmp_path / "joined"
    shutil.copytree(tmp_path / "node0", joined)
    code, err = run_in_process("prepare_data.py", ["--join", "--out", str(joined)], capsys)
    assert code == 2 and "no shard list from node(s) 1 of 2" in err and len(err.strip().splitlines()) == 1
    shutil.copytree(tmp_path / "node1", joined, dirs_exist_ok=True)  # what rsync of the second node's folder does
    assert run_in_process("prepare_data.py", ["--join", "--out", str(joined)], capsys)[0] == 0
    same_windows(PreparedDataset.open(tmp_path / "whole"), PreparedDataset.open(joined))
    assert verify_prepared(joined, local_rank=0).split("val").symbols


def test_jobs_are_packed_up_to_a_workers_share(inputs, tmp_path):
    """Small buckets packed by their real sizes into jobs (shards): each within a worker's share of the budget
    unless it is one bucket alone, and no more jobs than twice the fewest that could hold the bars."""
    for name, source in (("early", inputs[1]), ("all", inputs[0])):
        config = build.PrepareConfig(**_config(tmp_path / name, source, workers=1, memory_gb=0.1958))
        plan = build._plan(config, 0, config.window)
        work = tmp_path / name / ".work"
        build._resume_or_reset(work, tmp_path / name / "shards", plan, log=lambda line: None)
        build._partition(plan, work, 1, log=lambda line: None)
        groups = build._groups(plan, work, {})
        sizes = [[build._bucket_bytes(plan, work, {}, b)[1] for b in buckets] for buckets, _ in groups]
        assert all(sum(s) <= plan["job_bytes"] or len(s) == 1 for s in sizes)
        assert 3 <= len(groups) <= 2 * np.ceil(sum(map(sum, sizes)) / plan["job_bytes"])
        assert sum(len(parts) for _, parts in groups) == len(list(work.glob("parts/*/f*.parquet")))


def test_bad_rows_duplicates_and_gaps_as_format_1(tmp_path, capsys):
    """An inf high refuses with the symbol, bar and column, or under --bad_rows drop is left out and counted; a
    duplicate bar keeps its first row in input order; a missing value drops and counts its row."""
    frame = market(symbols=2)["S00"]
    frame.loc[30, "high"] = np.inf
    frame.loc[40, "volume"] = np.nan
    frame = pd.concat([frame, frame.iloc[[50]].assign(close=1.0)])  # a later duplicate of bar 50
    frame.to_parquet(tmp_path / "S00.parquet", index=False)
    args = ["--parquet", str(tmp_path / "S00.parquet"), "--split", "0.8,0.1,0.1", "--lookback", str(LOOKBACK),
            "--predict", str(PREDICT)]
    code, err = run_in_process("prepare_data.py", args + ["--out", str(tmp_path / "a")], capsys)
    stamp = str(frame["timestamps"].iloc[30]).replace(" ", "T")
    assert code == 2 and f"S00: bar {stamp}, column 'high': value inf is not a finite number" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a" / INDEX_NAME).exists()
    code, _ = run_in_process("prepare_data.py", args + ["--out", str(tmp_path / "b"), "--bad_rows", "drop"], capsys)
    index = json.loads((tmp_path / "b" / INDEX_NAME).read_text())
    assert code == 0 and index["dropped"]["bad_rows"] == {"S00": {"not finite": 1}}
    assert index["dropped"]["dropped_rows"] == {"S00": {"nan": 1, "duplicates": 1}}
    train = PreparedDataset.open(tmp_path / "b").split("train")
    kept = np.asarray(train.values)[train.timestamps[:] == frame["timestamps"].iloc[50].value]
    assert kept[0, 3] == np.float32(frame["close"].iloc[50])  # the first of the duplicates
