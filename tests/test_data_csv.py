"""CSV import: the real 5-minute file in tests/fixtures/, crafted files with duplicates, gaps and odd column names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ds_kronos.data import PrepareConfig, PreparedDataset, prepare_dataset
from helpers import fixtures_dir

KLINE = fixtures_dir() / "kline_5min_2500.csv"


@pytest.fixture(scope="module")
def kline_prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("kline") / "p"
    lines: list[str] = []
    manifest = prepare_dataset(PrepareConfig(csv=[str(KLINE)], out=str(out), split=[0.8, 0.1, 0.1]),
                               log=lines.append)
    return out, manifest, lines


def test_real_5min_file_keeps_real_timestamps(kline_prepared):
    out, manifest, lines = kline_prepared
    source = pd.read_csv(KLINE)
    stamps = pd.to_datetime(source["timestamps"])
    assert manifest["freq"] == "5min" and manifest["source"]["fields"][-1] == "amount"
    prepared = PreparedDataset.open(out)
    train, val, test = prepared.train, prepared.val, prepared.test
    # Fractions are of bars in time order; val/test reach `lookback` (90) bars back for their first windows.
    assert train.values.shape[0] == 2000 and val.values.shape[0] == 250 + 90 and test.values.shape[0] == 250 + 90
    expected = np.stack([stamps.dt.minute, stamps.dt.hour, stamps.dt.day_of_week, stamps.dt.day, stamps.dt.month],
                        axis=1)
    np.testing.assert_array_equal(train.time_features, expected[:2000])
    np.testing.assert_array_equal(test.time_features, expected[-340:])
    np.testing.assert_array_equal(test.timestamps.astype("datetime64[ns]"), stamps.to_numpy()[-340:])
    columns = source[["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float32)
    np.testing.assert_array_equal(val.values, columns[2000 - 90:2250])
    # Intraday data really has lunch breaks and overnight gaps, and they show in the features.
    gaps = np.diff(train.timestamps) // 60_000_000_000
    assert gaps.min() == 5 and (gaps > 60).sum() > 10
    assert set(np.unique(train.time_features[:, 1])) <= {9, 10, 11, 13, 14, 15}
    assert any("dropped 0 duplicate timestamps and 0 rows with missing values" in line for line in lines)


def test_duplicates_and_missing_rows_are_dropped_and_counted(tmp_path):
    times = pd.date_range("2024-01-02 09:30", periods=60, freq="5min")
    frame = pd.DataFrame({"Datetime": times.strftime("%Y-%m-%d %H:%M:%S"),
                          "OPEN": np.arange(60) + 10.0, "High": np.arange(60) + 11.0, "low": np.arange(60) + 9.0,
                          "Close": np.arange(60) + 10.5, "Vol": np.full(60, 100.0)})
    frame.loc[7, "Close"] = np.nan
    frame.loc[20, "Vol"] = np.nan
    frame = pd.concat([frame, frame.iloc[[3, 4, 5]]]).iloc[::-1]  # 3 duplicates, reverse order
    path = tmp_path / "ABC.csv"
    frame.to_csv(path, index=False)
    lines: list[str] = []
    out = tmp_path / "p"
    manifest = prepare_dataset(PrepareConfig(csv=[str(path)], out=str(out), split=[0.5, 0.25, 0.25], lookback=5,
                                             predict=2), log=lines.append)
    assert any("dropped 3 duplicate timestamps and 2 rows with missing values" in line for line in lines)
    assert manifest["freq"] == "5min" and manifest["source"]["fields"] == ["open", "high", "low", "close", "volume"]
    prepared = PreparedDataset.open(out)
    assert prepared.train.symbols == ("ABC",)
    ts = prepared.train.timestamps
    assert np.all(np.diff(ts) > 0)
    kept = np.delete(np.arange(60), [7, 20])
    np.testing.assert_array_equal(prepared.train.values[:, 0], (kept[: len(ts)] + 10.0).astype(np.float32))
    # No amount column: amt = mean(OHLC) x volume.
    v = prepared.train.values
    np.testing.assert_allclose(v[:, 5], v[:, :4].astype(np.float64).mean(axis=1) * v[:, 4], rtol=1e-6)


def test_daily_csv_frequency_and_several_files(tmp_path):
    days = pd.bdate_range("2020-01-01", periods=300)
    paths = []
    for k, name in enumerate(("AAA", "BBB")):
        close = 10 + np.cumsum(np.random.default_rng(k).normal(size=300)) * 0.1
        frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": close, "high": close + 1, "low": close - 1,
                              "close": close, "volume": 1000.0, "amt": 5.0})
        paths.append(tmp_path / f"{name}.csv")
        frame.to_csv(paths[-1], index=False)
    manifest = prepare_dataset(PrepareConfig(csv=[str(p) for p in paths], out=str(tmp_path / "p"),
                                             split=[0.7, 0.15, 0.15], lookback=10, predict=3), log=lambda _: None)
    assert manifest["freq"] == "1D"
    assert manifest["splits"]["train"]["symbols"] == ["AAA", "BBB"]
    prepared = PreparedDataset.open(tmp_path / "p")
    assert np.all(prepared.test.values[:, 5] == 5.0)  # the file's amt column is used as is
    # A common cut: both symbols' test splits start at the same bar.
    test = prepared.test
    assert test.timestamps[test.offsets[0]] == test.timestamps[test.offsets[1]]


def test_config_parsing_of_file_lists_and_ranges(tmp_path):
    from ds_kronos.config import parse_config
    from ds_kronos.errors import ConfigError

    config = parse_config(PrepareConfig, ["--csv", "a.csv", "b.csv,c.csv", "--out", "x", "--split", "0.8,0.1,0.1"])
    assert config.csv == ["a.csv", "b.csv", "c.csv"] and config.split == [0.8, 0.1, 0.1]
    yaml_file = tmp_path / "prep.yaml"
    yaml_file.write_text("qlib_dir: q\nout: o\ntrain_range: [2012-01-01, 2019-12-31]\nlookback: 60\n")
    config = parse_config(PrepareConfig, ["--config", str(yaml_file), "--lookback", "30"])
    assert config.lookback == 30 and str(config.ranges()["train"]) == "2012-01-01..2019-12-31"
    with pytest.raises(ConfigError) as err:
        parse_config(PrepareConfig, ["--qlib_dir", "q", "--out", "o", "--split", "0.8,0.1,0.1", "--val_range",
                                     "2020-01-01,2020-06-30", "--lookback", "0"])
    assert "--val_range and --split are mutually exclusive" in str(err.value)
    assert "--lookback must be >= 1" in str(err.value)
