"""Finite, plausible bars or a clear refusal: what preparation does with values no model should see."""

from __future__ import annotations

import numpy as np
import pytest

from ds_kronos.data import PrepareConfig, PreparedDataset, prepare_dataset, write_demo_market
from ds_kronos.data.quality import MAX_ABS_VALUE, screen_bars
from ds_kronos.errors import DataError


def _bars(n: int = 6) -> np.ndarray:
    """open 10, high 11, low 9, close 10.5, vol 100, amt 1000 (float64 [n, 6])."""
    return np.tile([10.0, 11.0, 9.0, 10.5, 100.0, 1000.0], (n, 1))


@pytest.mark.parametrize("row, column, value, reason, text", [
    (2, 1, np.inf, "not finite", "column 'high': value inf is not a finite number"),
    (3, 5, np.nan, "not finite", "column 'amt': value nan is not a finite number"),
    (1, 4, 1e308, "too large", "column 'vol': value 1e+308 is beyond"),
    (4, 0, 0.0, "non-positive price", "column 'open': price 0 is not positive"),
    (5, 1, 8.0, "high below low", "column 'high': high 8 is below low"),
    (2, 4, -1.0, "negative volume or amount", "column 'vol': value -1 is negative"),
])
def test_each_kind_of_bad_value(row, column, value, reason, text):
    values = _bars()
    values[row, column] = value
    with pytest.raises(DataError) as err:
        screen_bars("SYM", values, lambda i: f"line {i + 2} of SYM.csv")
    assert str(err.value).startswith(f"SYM: line {row + 2} of SYM.csv, {text}"), str(err.value)
    screened = screen_bars("SYM", values, lambda i: "", policy="drop")
    assert screened.dropped == {reason: 1} and list(np.flatnonzero(~screened.keep)) == [row]


def test_the_source_column_is_blamed_before_what_it_derives():
    values = _bars()
    values[0, 4] = 1e308  # the volume; the amount derived from it is inf
    values[0, 5] = np.inf
    with pytest.raises(DataError, match=r"column 'vol' \(derived|column 'vol': value 1e\+308 is beyond"):
        screen_bars("SYM", values, str, derived_amount=True)
    values[0, 4] = MAX_ABS_VALUE / 1e3  # a plausible volume whose derived amount overflows float32 arithmetic
    values[0, 5] = values[0, :4].mean() * values[0, 4] * 1e3
    with pytest.raises(DataError, match=r"column 'amt' \(derived as mean\(open, high, low, close\) x volume\)"):
        screen_bars("SYM", values, str, derived_amount=True)


def test_good_bars_pass_untouched():
    screened = screen_bars("SYM", _bars(), str)
    assert screened.keep.all() and screened.dropped == {}


@pytest.fixture(scope="module")
def qlib_with_a_bad_bar(tmp_path_factory):
    """A small demo market in which one bar of SH600000 has its high below its low."""
    root = write_demo_market(tmp_path_factory.mktemp("quality") / "q", symbols=3, seed=5, start="2020-01-01",
                             end="2021-12-31")
    path = root / "features" / "sh600000" / "high.day.bin"
    stored = np.fromfile(path, dtype="<f4")
    low = np.fromfile(root / "features" / "sh600000" / "low.day.bin", dtype="<f4")
    k = next(i for i in range(40, len(stored)) if np.isfinite(stored[i]) and np.isfinite(low[i]))
    stored[k] = low[k] - 1.0
    stored.tofile(path)
    day = (root / "calendars" / "day.txt").read_text().split()[int(stored[0]) + k - 1]
    return root, day


def test_qlib_bar_is_named_by_symbol_date_and_field(qlib_with_a_bad_bar, tmp_path):
    root, day = qlib_with_a_bad_bar
    config = PrepareConfig(qlib_dir=str(root), instrument="all", out=str(tmp_path / "new" / "p"),
                           split=[0.6, 0.2, 0.2], lookback=20, predict=4)
    with pytest.raises(DataError, match=rf"^SH600000: bar of {day}, column 'high': high [\d.]+ is below low"):
        prepare_dataset(config, log=lambda _: None)
    assert not (tmp_path / "new").exists()  # the parent this run created is gone with it
    config.bad_rows = "drop"
    lines: list[str] = []
    manifest = prepare_dataset(config, log=lines.append)
    assert manifest["bad_rows"] == "drop"
    assert manifest["dropped"]["bad_rows"] == {"SH600000": {"high below low": 1}}
    assert any("dropped 1 bars with bad values in 1 symbol(s)" in line for line in lines)
    prepared = PreparedDataset.open(tmp_path / "new" / "p")
    stamps = np.concatenate([prepared.split(s).timestamps[prepared.split(s).symbol_rows("SH600000")]
                             for s in ("train", "val", "test")])
    assert np.datetime64(day, "ns").astype(np.int64) not in stamps


def test_csv_rows_dropped_under_the_option_are_counted(tmp_path):
    times = [f"2024-01-02 {9 + i // 60:02d}:{i % 60:02d}:00" for i in range(80)]
    lines = ["time,open,high,low,close,volume"] + [f"{t},10,11,9,10.5,100" for t in times]
    lines[5] = f"{times[4]},10,11,9,-10.5,100"
    lines[9] = f"{times[8]},10,11,9,10.5,inf"
    (tmp_path / "AAA.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "EMPTY.csv").write_text("time,open,high,low,close,volume\n" + "".join(f"{t},,,,,\n" for t in times))
    files = [str(tmp_path / "AAA.csv"), str(tmp_path / "EMPTY.csv")]
    config = PrepareConfig(csv=files, out=str(tmp_path / "p"), split=[0.6, 0.2, 0.2], lookback=8, predict=2)
    with pytest.raises(DataError, match=r"^AAA: line 6 of .*AAA\.csv, column 'close': price -10\.5 is not positive"):
        prepare_dataset(config, log=lambda _: None)
    config.bad_rows = "drop"
    manifest = prepare_dataset(config, log=lambda _: None)
    assert manifest["dropped"]["bad_rows"] == {"AAA": {"not finite": 1, "non-positive price": 1}}
    assert manifest["dropped"]["skipped"] == [[files[1], f"{files[1]}: column 'open' is empty (NaN) on every line; "
                                                         f"no complete row to use"]]
    train = PreparedDataset.open(tmp_path / "p").train
    assert train.values.shape[0] == round(0.6 * 78) and np.isfinite(train.values).all()  # 80 bars, 2 dropped
    dropped = np.array([times[4], times[8]], dtype="datetime64[ns]").astype(np.int64)
    assert not np.isin(dropped, train.timestamps).any()
