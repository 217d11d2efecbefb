"""Demo Qlib folder -> prepared dataset: values equal what pyqlib returns, manifest and format are consistent."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO_LOOKBACK, DEMO_PREDICT
from ds_kronos.data import PrepareConfig, PreparedDataset, prepare_dataset, write_demo_market
from ds_kronos.data.prepare_config import DEFAULT_RANGES
from ds_kronos.data.verify import content_problem
from ds_kronos.errors import DataError


def _qlib_frame(qlib_dir, instruments, fields, start, end) -> pd.DataFrame:
    import qlib
    from qlib.data import D

    qlib.init(provider_uri=str(qlib_dir), region="cn", kernels=1, expression_cache=None, dataset_cache=None,
              logging_level="WARNING")
    universe = D.instruments(instruments) if isinstance(instruments, str) else instruments
    return D.features(universe, fields, start_time=start, end_time=end, freq="day").sort_index()


def test_round_trip_values_equal_pyqlib(demo_qlib_dir, demo_prepared_dir):
    fields = ["$open", "$high", "$low", "$close", "$volume"]
    frame = _qlib_frame(demo_qlib_dir, "all", fields, "2011-01-01", "2025-06-30").dropna()
    prepared = PreparedDataset.open(demo_prepared_dir)
    checked = 0
    for split in ("train", "val", "test"):
        arrays = prepared.split(split)
        start, end = DEFAULT_RANGES[split].split(",")
        assert len(arrays.symbols) > 0
        for symbol in arrays.symbols:
            rows = arrays.symbol_rows(symbol)
            expected = frame.xs(symbol, level="instrument").loc[start:end]
            stamps = arrays.timestamps[rows].astype("datetime64[ns]")
            np.testing.assert_array_equal(stamps, expected.index.to_numpy().astype("datetime64[ns]"))
            ohlcv = expected[fields].to_numpy(np.float64)
            values = np.asarray(arrays.values[rows])
            np.testing.assert_array_equal(values[:, :5], ohlcv.astype(np.float32))
            amt = ohlcv[:, :4].mean(axis=1) * ohlcv[:, 4]
            np.testing.assert_allclose(values[:, 5], amt, rtol=1e-6)
            weekday = pd.DatetimeIndex(stamps).day_of_week.to_numpy()
            np.testing.assert_array_equal(arrays.time_features[rows][:, 2], weekday)
            checked += 1
    assert checked >= 3 * 5


def test_manifest_describes_the_arrays(demo_prepared_dir):
    manifest = json.loads((demo_prepared_dir / "manifest.json").read_text())
    window = DEMO_LOOKBACK + DEMO_PREDICT + 1
    assert manifest["window"] == window and manifest["freq"] == "1D"
    assert manifest["source"]["kind"] == "qlib"
    assert manifest["ranges"]["val"] == DEFAULT_RANGES["val"].split(",")
    prepared = PreparedDataset.open(demo_prepared_dir)
    assert content_problem(prepared) is None
    for split in ("train", "val", "test"):
        info, arrays = manifest["splits"][split], prepared.split(split)
        assert info["rows"] == arrays.values.shape[0] == sum(info["rows_per_symbol"])
        assert info["windows"] == sum(n - window + 1 for n in info["rows_per_symbol"])
        assert all(n >= window for n in info["rows_per_symbol"])
        assert isinstance(arrays.values, np.memmap)
        # Within each symbol, time strictly increases.
        for i in range(len(arrays.symbols)):
            ts = arrays.timestamps[arrays.offsets[i]:arrays.offsets[i + 1]]
            assert np.all(np.diff(ts) > 0)
    # Val starts before train ends (lookback overlap) as in upstream's defaults.
    assert manifest["splits"]["val"]["first"] < manifest["splits"]["train"]["last"]
    assert not list(demo_prepared_dir.parent.glob("*.tmp-*"))


def test_open_rejects_damaged_folders(demo_prepared_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demo_prepared_dir, broken)
    (broken / "val" / "offsets.npy").unlink()
    with pytest.raises(DataError, match="offsets.npy: missing"):
        PreparedDataset.open(broken)
    shutil.copy(demo_prepared_dir / "val" / "offsets.npy", broken / "val" / "offsets.npy")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="version 99"):
        PreparedDataset.open(broken)
    with pytest.raises(DataError, match="no manifest.json"):
        PreparedDataset.open(tmp_path)
    good = PreparedDataset.open(demo_prepared_dir)
    assert good.lookback == DEMO_LOOKBACK and good.predict == DEMO_PREDICT


def test_amount_field_and_symbol_list(tmp_path):
    qlib_dir = write_demo_market(tmp_path / "q", symbols=3, seed=5, start="2020-01-01", end="2021-12-31",
                                 amount=True)
    out = tmp_path / "p"
    lines: list[str] = []
    manifest = prepare_dataset(PrepareConfig(qlib_dir=str(qlib_dir), instrument="sh600000,SZ000001", out=str(out),
                                             split=[0.6, 0.2, 0.2], lookback=20, predict=4), log=lines.append)
    assert "$amount" in manifest["source"]["fields"]
    train = PreparedDataset.open(out).train
    assert set(train.symbols) == {"SH600000", "SZ000001"}
    frame = _qlib_frame(qlib_dir, ["SH600000"], ["$amount"], "2020-01-01", "2021-12-31").dropna()
    rows = train.symbol_rows("SH600000")
    n = rows.stop - rows.start
    np.testing.assert_array_equal(train.values[rows][:, 5], frame["$amount"].to_numpy(np.float32)[:n])
    # Fraction split: val begins `lookback` bars before its first target, and the cut is at a common time.
    val = PreparedDataset.open(out).val
    vrows = val.symbol_rows("SH600000")
    val_first = val.timestamps[vrows.start]
    train_ts = train.timestamps[rows]
    assert val_first in train_ts and int(np.sum(train_ts >= val_first)) == 20


def test_overwrite_replaces_only_prepared_folders(demo_qlib_dir, tmp_path):
    out = tmp_path / "p"
    config = PrepareConfig(qlib_dir=str(demo_qlib_dir), instrument="csi300", out=str(out), lookback=30, predict=5)
    first = prepare_dataset(config, log=lambda _: None)
    with pytest.raises(DataError, match="exists"):
        prepare_dataset(config, log=lambda _: None)
    config.overwrite = True
    second = prepare_dataset(config, log=lambda _: None)
    assert second["sha256"] == first["sha256"]  # deterministic
    other = tmp_path / "not_ours"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    config.out = str(other)
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare_dataset(config, log=lambda _: None)
    assert (other / "keep.txt").exists()


def test_csi300_is_the_listed_subset(demo_qlib_dir, tmp_path):
    def listed(name: str) -> set[str]:
        text = (demo_qlib_dir / "instruments" / name).read_text()
        return {line.split("\t")[0] for line in text.splitlines() if line}

    index_symbols, all_symbols = listed("csi300.txt"), listed("all.txt")
    assert index_symbols < all_symbols
    manifest = prepare_dataset(PrepareConfig(qlib_dir=str(demo_qlib_dir), instrument="csi300", out=str(tmp_path / "c"),
                                             lookback=30, predict=5), log=lambda _: None)
    used = set().union(*(manifest["splits"][s]["symbols"] for s in ("train", "val", "test")))
    assert used <= index_symbols and used


@pytest.mark.processes
def test_importing_the_package_is_cheap():
    code = ("import sys, ds_kronos.data, ds_kronos.data.prepare; "
            "print(sorted(m for m in ('qlib', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
