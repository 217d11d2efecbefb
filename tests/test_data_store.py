"""The store (format 2): the same windows as format 1 from the same bars, whatever the input format, the number of
workers and buckets, the split chosen at open time, or whether the bars came at once or by --append."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ds_kronos.data import PrepareConfig, PreparedDataset, WindowDataset, prepare_dataset
from ds_kronos.data.store.shards import INDEX_NAME
from ds_kronos.data.store.view import open_store
from ds_kronos.errors import ConfigError, DataError
from helpers import SEED, single_process_val_losses

LOOKBACK, PREDICT = 20, 4
RANGES = {"train_range": ["2024-01-01", "2024-01-20"], "val_range": ["2024-01-18", "2024-01-26"],
          "test_range": ["2024-01-24", "2024-02-05"]}


def market(symbols: int = 9, seed: int = 0, start: str = "2024-01-02", days: int = 30) -> dict[str, pd.DataFrame]:
    """Hourly bars of ``symbols`` random walks with staggered listings (one too short for a window)."""
    rng = np.random.default_rng(seed)
    frames = {}
    for k in range(symbols):
        times = pd.date_range(start, periods=days * 24, freq="1h")[k * 37:]
        if k == symbols - 1:
            times = times[:LOOKBACK]  # shorter than one window: dropped by both formats
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, len(times))))
        frames[f"S{k:02d}"] = pd.DataFrame({
            "timestamps": times, "open": close * (1 + rng.normal(0, 0.001, len(times))), "close": close,
            "high": close * 1.01, "low": close * 0.99, "volume": rng.uniform(100, 1000, len(times))})
    return frames


def write_csv(frames: dict[str, pd.DataFrame], folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return [str(folder / f"{name}.csv") for name in sorted(frames)]


def write_long_parquet(frames: dict[str, pd.DataFrame], folder, files: int = 3, seed: int = 1) -> str:
    """Every symbol in each file (one file per stretch of time), rows shuffled, symbol column named 'ticker'."""
    folder.mkdir(parents=True, exist_ok=True)
    long = pd.concat([f.assign(ticker=name) for name, f in frames.items()], ignore_index=True)
    long = long.sample(frac=1.0, random_state=seed)
    edges = np.quantile(long["timestamps"].astype("int64"), np.linspace(0, 1, files + 1))
    for i in range(files):
        stamps = long["timestamps"].astype("int64")
        part = long[(stamps >= edges[i]) & ((stamps < edges[i + 1]) | (i == files - 1))]
        part.to_parquet(folder / f"month-{i}.parquet", index=False)
    return str(folder)


def same_windows(a, b) -> None:
    for name in ("train", "val", "test"):
        x, y = a.split(name), b.split(name)
        assert x.symbols == y.symbols and x.symbols
        np.testing.assert_array_equal(x.offsets, y.offsets)
        for array in ("values", "timestamps", "time_features"):
            np.testing.assert_array_equal(np.asarray(getattr(x, array)), np.asarray(getattr(y, array)))
        wx, wy = WindowDataset(a, name, seed=SEED), WindowDataset(b, name, seed=SEED)
        ids = list(range(min(len(wx), 50)))
        for u, v in zip(wx.get_batch(ids), wy.get_batch(ids)):
            np.testing.assert_array_equal(u.numpy(), v.numpy())


@pytest.fixture(scope="module")
def frames():
    return market()


@pytest.fixture(scope="module")
def v1_and_inputs(frames, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    csv = write_csv(frames, root / "csv")
    parquet = write_long_parquet(frames, root / "parquet")
    v1 = root / "v1"
    prepare_dataset(PrepareConfig(csv=csv, out=str(v1), lookback=LOOKBACK, predict=PREDICT, **RANGES),
                    log=lambda line: None)
    return root, csv, parquet, v1


def _store(out, log=None, **options) -> dict:
    ranges = {} if "split" in options else RANGES
    config = PrepareConfig(out=str(out), lookback=LOOKBACK, predict=PREDICT, **ranges, **options)
    return prepare_dataset(config, log=log or (lambda line: None))


@pytest.mark.parametrize("workers,memory_gb", [(1, 2.0), (2, 0.3916)])
def test_parquet_store_has_format_1_windows(v1_and_inputs, tmp_path, workers, memory_gb):
    root, _, parquet, v1 = v1_and_inputs
    index = _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker", workers=workers, memory_gb=memory_gb)
    assert index["format_version"] == 2 and index["dropped"]["too_short"] == ["S08"]
    if workers == 2:  # a budget this small spreads the symbols over several buckets, hence shards
        assert len(index["shards"]) > 2
    same_windows(PreparedDataset.open(v1), PreparedDataset.open(tmp_path / "s"))
    assert not (tmp_path / "s" / ".work").exists()


def test_csv_store_has_format_1_windows_and_first_validation_loss(v1_and_inputs, tmp_path, tiny_checkpoints):
    _, csv, _, v1 = v1_and_inputs
    _store(tmp_path / "s", csv=csv, format=2)
    store = PreparedDataset.open(tmp_path / "s")
    same_windows(PreparedDataset.open(v1), store)
    # The validation the trainer runs first, scored on both: identical per-sample losses.
    a = single_process_val_losses(v1, tiny_checkpoints, 40)
    b = single_process_val_losses(tmp_path / "s", tiny_checkpoints, 40)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_split_is_chosen_at_open_time(v1_and_inputs, frames, tmp_path):
    root, csv, parquet, _ = v1_and_inputs
    _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker")
    v1_fractions = tmp_path / "v1f"
    prepare_dataset(PrepareConfig(csv=csv, out=str(v1_fractions), lookback=LOOKBACK, predict=PREDICT,
                                  split=[0.7, 0.15, 0.15]), log=lambda line: None)
    same_windows(PreparedDataset.open(v1_fractions), open_store(tmp_path / "s", fractions=(0.7, 0.15, 0.15)))
    other = {"train": "2024-01-05,2024-01-15", "val": "2024-01-10,2024-01-25", "test": "2024-01-20,2024-02-10"}
    v1_other = tmp_path / "v1o"
    prepare_dataset(PrepareConfig(csv=csv, out=str(v1_other), lookback=LOOKBACK, predict=PREDICT,
                                  **{f"{k}_range": v.split(",") for k, v in other.items()}), log=lambda line: None)
    same_windows(PreparedDataset.open(v1_other), open_store(tmp_path / "s", ranges=other))


def test_a_job_chooses_the_split_when_it_opens_a_store(v1_and_inputs, tmp_path):
    """The split given at preparation is a default: a job opening the store with other ranges (all, or one of
    them) or fractions gets the windows of a store prepared with those, and nothing is prepared or read again."""
    from ds_kronos.data.split_choice import SplitChoice
    from ds_kronos.data.verify import verify_prepared

    _, _, parquet, v1 = v1_and_inputs
    _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker")
    verify_prepared(tmp_path / "s", local_rank=0)
    verdict = (tmp_path / "s" / ".ds_kronos_verified.json").stat().st_mtime_ns
    other = {"train_range": "2024-01-05,2024-01-15", "val_range": "2024-01-10,2024-01-25",
             "test_range": "2024-01-20,2024-02-10"}
    only_val = {**RANGES, "val_range": other["val_range"].split(",")}
    for name, options, prepared_with in (("all", other, {k: v.split(",") for k, v in other.items()}),
                                         ("val", {"val_range": other["val_range"]}, only_val),
                                         ("fractions", {"split": "0.7,0.15,0.15"}, {"split": [0.7, 0.15, 0.15]})):
        prepare_dataset(PrepareConfig(parquet=[parquet], symbol_column="ticker", out=str(tmp_path / name),
                                      lookback=LOOKBACK, predict=PREDICT, **prepared_with), log=lambda line: None)
        chosen = verify_prepared(tmp_path / "s", local_rank=0, split=SplitChoice.from_options(**options))
        same_windows(PreparedDataset.open(tmp_path / name), chosen)
    assert (tmp_path / "s" / ".ds_kronos_verified.json").stat().st_mtime_ns == verdict  # no second verification
    with pytest.raises(ConfigError, match="a format-1 folder holds the split it was prepared with"):
        PreparedDataset.open(v1, SplitChoice.from_options(split=[0.7, 0.15, 0.15]))
    _store(tmp_path / "f", parquet=[parquet], symbol_column="ticker", split=[0.8, 0.1, 0.1])
    with pytest.raises(ConfigError, match="default split is by fractions.*--train_range, --test_range missing"):
        PreparedDataset.open(tmp_path / "f", SplitChoice.from_options(val_range=other["val_range"]))
    bad = {"both": ({"split": "0.7,0.2,0.1", "val_range": "2024-01-01,2024-01-05"}, "mutually exclusive"),
           "sum": ({"split": "0.7,0.2,0.2"}, "summing to at most 1"),
           "range": ({"test_range": "2024-02-01,2024-01-01"}, "--test_range: range .* ends before it starts")}
    for options, message in bad.values():
        with pytest.raises(ConfigError, match=message):
            SplitChoice.from_options(**options)
    assert SplitChoice.from_options() is None


def _each_rank(datasets: list, work) -> list:
    """Run ``work(dataset, gather)`` as one thread per rank, ``gather`` handing every rank's object in rank order
    (the collective of ds_kronos.runtime.all_gather_objects); returns each rank's exception or None."""
    import threading

    barrier, slots, outcome = threading.Barrier(len(datasets)), [None] * len(datasets), [None] * len(datasets)

    def rank(r: int) -> None:
        def gather(obj):
            slots[r] = obj
            barrier.wait()
            gathered = list(slots)
            barrier.wait()
            return gathered
        try:
            work(datasets[r], gather)
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            outcome[r] = exc
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(datasets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcome


def test_each_node_may_hold_its_own_copy_but_not_another_content(v1_and_inputs, frames, tmp_path):
    """Nodes without a shared file system: a copy of the store at another path is the same data; a store prepared
    from other bars is refused on every rank with one line naming that copy and the first shard that differs."""
    import shutil

    from ds_kronos.data.copies import check_same_copies
    from ds_kronos.data.verify import verify_prepared

    _, _, parquet, v1 = v1_and_inputs
    _store(tmp_path / "node0" / "s", parquet=[parquet], symbol_column="ticker", memory_gb=0.1958)
    shutil.copytree(tmp_path / "node0" / "s", tmp_path / "node1" / "elsewhere")
    changed = {**frames, "S03": frames["S03"].assign(close=frames["S03"]["close"] * 1.001)}
    _store(tmp_path / "node2" / "s", parquet=[write_long_parquet(changed, tmp_path / "changed")],
           symbol_column="ticker", memory_gb=0.1958)
    copies = [verify_prepared(tmp_path / f, local_rank=0) for f in ("node0/s", "node1/elsewhere", "node2/s")]
    assert len(copies[0].manifest["shards"]) > 1
    assert _each_rank(copies[:2], check_same_copies) == [None, None]
    outcome = _each_rank(copies, check_same_copies)
    assert all(isinstance(e, DataError) for e in outcome) and len({str(e) for e in outcome}) == 1
    shard = next(e["name"] for e in copies[2].manifest["shards"] if "S03" in e["symbols"])
    message = str(outcome[0])
    assert "\n" not in message and f"at {(tmp_path / 'node2' / 's').resolve()} (rank 2)" in message
    assert f"at {(tmp_path / 'node0' / 's').resolve()} (rank 0): shard {shard} differs" in message
    folder = PreparedDataset.open(v1)  # a format-1 folder is compared file by file
    assert _each_rank([folder, folder], check_same_copies) == [None, None]


def test_time_zones_become_the_wall_clock(frames, tmp_path):
    local = {name: f.assign(timestamps=f["timestamps"].dt.tz_localize("Asia/Shanghai")) for name, f in
             list(frames.items())[:3]}
    for name, frame in local.items():  # one symbol per file, no symbol column: the stem names it
        (tmp_path / "in").mkdir(exist_ok=True)
        frame.to_parquet(tmp_path / "in" / f"{name}.parquet", index=False)
    _store(tmp_path / "s", parquet=[str(tmp_path / "in" / "*.parquet")], split=[0.8, 0.1, 0.1])
    train = PreparedDataset.open(tmp_path / "s").split("train")
    rows = train.symbol_rows("S00")
    expected = frames["S00"]["timestamps"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    np.testing.assert_array_equal(np.asarray(train.timestamps[rows]), expected[:rows.stop - rows.start])
    assert int(train.time_features[rows][0][1]) == frames["S00"]["timestamps"].iloc[0].hour


def test_unknown_format_version_is_refused(v1_and_inputs, tmp_path):
    _, _, parquet, _ = v1_and_inputs
    _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker")
    index = json.loads((tmp_path / "s" / INDEX_NAME).read_text())
    (tmp_path / "s" / INDEX_NAME).write_text(json.dumps({**index, "format_version": 3}))
    with pytest.raises(DataError, match="version 3 is not 'ds_kronos.store' version 2"):
        PreparedDataset.open(tmp_path / "s")


def test_row_views_index_like_the_arrays_they_stand_for(v1_and_inputs, tmp_path):
    """Training, evaluation and verification index a split's arrays with ints, slices, row arrays of any shape and
    (rows, column) pairs; a store's views must answer each as the format-1 arrays do."""
    _, _, parquet, v1 = v1_and_inputs
    _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker", memory_gb=0.1958)
    a, b = PreparedDataset.open(v1).split("val"), PreparedDataset.open(tmp_path / "s").split("val")
    rows = np.array([[0, 5, 9], [len(a.values) - 1, 3, 40]])
    for key in (7, slice(3, 60), slice(None), rows, (rows, 3), (slice(10, 20), 3), (np.arange(5), slice(1, 3))):
        np.testing.assert_array_equal(np.asarray(b.values[key]), np.asarray(a.values[key]))
    np.testing.assert_array_equal(b.time_features[rows], a.time_features[rows])
    assert np.max(b.timestamps) == np.max(a.timestamps) and b.values.shape == a.values.shape
    with pytest.raises(IndexError):
        b.values[np.array([len(a.values)])]


def test_windows_across_shards_and_an_appended_boundary_read_right():
    """Row views over three arrays, one segment split in two (an appended symbol): windows inside a segment take the
    per-window path, a window across the boundary the per-row path; both equal plain indexing."""
    from ds_kronos.data.store.rows import ConcatRows, Segments

    arrays = [np.arange(100) * 10, np.arange(50) * 10 + 5000, np.arange(80) * 10 + 9000]
    segments = [(0, 10, 30), (2, 0, 20), (1, 5, 40), (0, 60, 25)]
    whole = np.concatenate([arrays[a][first:first + n] for a, first, n in segments])
    view = ConcatRows(arrays, Segments(segments, 3), (), np.int64)
    inside = np.array([0, 31, 55, 96])[:, None] + np.arange(4)
    across = np.array([27, 48])[:, None] + np.arange(5)  # rows 27..31 span segments 0 and 1
    for rows in (inside, across, np.concatenate([inside[:, :4], across[:, :4]])):
        np.testing.assert_array_equal(view[rows], whole[rows])


def test_a_split_view_gives_another_split_without_preparing_again(v1_and_inputs, tmp_path, capsys):
    from helpers import run_in_process

    _, csv, parquet, _ = v1_and_inputs
    _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker")
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*.npy"))
    code, _ = run_in_process("prepare_data.py", ["--view_of", str(tmp_path / "s"), "--out", str(tmp_path / "view"),
                                                 "--split", "0.7,0.15,0.15"], capsys)
    assert code == 0 and [p.name for p in (tmp_path / "view").iterdir()] == ["split_view.json"]
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "s").rglob("*.npy")) == before
    v1_fractions = tmp_path / "v1f"
    prepare_dataset(PrepareConfig(csv=csv, out=str(v1_fractions), lookback=LOOKBACK, predict=PREDICT,
                                  split=[0.7, 0.15, 0.15]), log=lambda line: None)
    from ds_kronos.data.verify import verify_prepared

    same_windows(PreparedDataset.open(v1_fractions), verify_prepared(tmp_path / "view", local_rank=0))
    code, err = run_in_process("prepare_data.py", ["--view_of", str(tmp_path / "nothing"), "--out",
                                                   str(tmp_path / "v2"), "--split", "0.7,0.15,0.15"], capsys)
    assert code == 2 and "not a store" in err


@pytest.mark.processes
def test_two_ranks_train_on_a_store_as_on_format_1(v1_and_inputs, tmp_path, tiny_checkpoints):
    """The trainer on 2 ranks opens a store through --data (verification on local rank 0, every rank's views) and
    trains exactly as on the format-1 folder prepared from the same bars: the same losses, validation included."""
    from helpers import deepspeed_train, summary, train_args

    _, _, parquet, v1 = v1_and_inputs
    _store(tmp_path / "s", parquet=[parquet], symbol_column="ticker", memory_gb=0.1958)
    for data, run in ((tmp_path / "s", "store"), (v1, "v1")):
        deepspeed_train(train_args(data, tiny_checkpoints, tmp_path / run, epochs=1, max_steps=2), timeout=300)
    store, folder = summary(tmp_path / "store")["history"], summary(tmp_path / "v1")["history"]
    assert store["val"] and store["val"] == folder["val"] and store["train"] == folder["train"]


@pytest.mark.parametrize("instrument", ["all", "csi300"])
def test_qlib_folder_into_a_store_has_format_1_windows(demo_qlib_dir, demo_prepared_dir, tmp_path, monkeypatch,
                                                       instrument):
    """Qlib is read a group of symbols at a time (a bucket sized by --memory_gb), market members within their
    membership spans, and gives the windows of format 1's whole read."""
    from conftest import DEMO_LOOKBACK, DEMO_PREDICT
    from ds_kronos.data import qlib_source

    groups = []
    real = qlib_source.read_qlib_group
    monkeypatch.setattr(qlib_source, "read_qlib_group", lambda u, symbols, *a: groups.append(symbols) or real(
        u, symbols, *a))
    options = dict(qlib_dir=str(demo_qlib_dir), instrument=instrument, lookback=DEMO_LOOKBACK, predict=DEMO_PREDICT)
    prepare_dataset(PrepareConfig(out=str(tmp_path / "s"), format=2, memory_gb=0.1958, **options),
                    log=lambda line: None)
    assert len(groups) > 2 and sorted(sum(groups, [])) == sorted(set(sum(groups, [])))
    assert len(json.loads((tmp_path / "s" / INDEX_NAME).read_text())["shards"]) > 2
    folder = demo_prepared_dir
    if instrument != "all":
        folder = tmp_path / "v1"
        prepare_dataset(PrepareConfig(out=str(folder), **options), log=lambda line: None)
    same_windows(PreparedDataset.open(folder), PreparedDataset.open(tmp_path / "s"))
