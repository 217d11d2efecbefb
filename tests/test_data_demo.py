"""The demo market is a real Qlib folder with the stylised facts of real prices, and is reproducible."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from ds_kronos.data import write_demo_market


@pytest.fixture(scope="module")
def bars(demo_qlib_dir) -> pd.DataFrame:
    import qlib
    from qlib.data import D

    qlib.init(provider_uri=str(demo_qlib_dir), region="cn", kernels=1, expression_cache=None, dataset_cache=None,
              logging_level="WARNING")
    fields = ["$open", "$high", "$low", "$close", "$volume"]
    frame = D.features(D.instruments("all"), fields, start_time="2011-01-01", end_time="2025-06-30", freq="day")
    frame.columns = ["open", "high", "low", "close", "volume"]
    return frame.dropna().sort_index()


def _per_symbol(bars):
    for symbol, frame in bars.groupby(level="instrument"):
        ret = np.diff(np.log(frame["close"].to_numpy(np.float64)))
        yield symbol, frame.iloc[1:], ret


def test_layout_is_what_pyqlib_reads(demo_qlib_dir, bars):
    calendar = (demo_qlib_dir / "calendars" / "day.txt").read_text().split()
    assert calendar[0] == "2011-01-03" and pd.Timestamp(calendar[-1]) <= pd.Timestamp("2025-06-30")
    assert all(pd.Timestamp(day).weekday() < 5 for day in calendar[:30])
    listing = [line.split("\t") for line in (demo_qlib_dir / "instruments" / "all.txt").read_text().splitlines()]
    assert len(listing) == 8 and all(len(f) == 3 and f[0] == f[0].upper() for f in listing)
    starts = {f[1] for f in listing}
    ends = {f[2] for f in listing}
    assert len(starts) > 1 and len(ends) > 1  # some list late, some delist early
    assert set(bars.index.get_level_values("instrument")) == {f[0] for f in listing}
    # The .bin header is the calendar index of the first bar; pyqlib's first date per symbol must agree.
    for symbol, first, last in listing:
        raw = np.fromfile(demo_qlib_dir / "features" / symbol.lower() / "close.day.bin", dtype="<f4")
        assert calendar[int(raw[0])] == first
        assert len(raw) - 1 == calendar.index(last) - int(raw[0]) + 1
        got = bars.xs(symbol, level="instrument").index
        assert got[0] >= pd.Timestamp(first) and got[-1] <= pd.Timestamp(last)


def test_ohlc_ordering(bars):
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars[["open", "close"]].max(axis=1) <= bars["high"]).all()
    assert (bars["volume"] > 0).all()


def test_stylised_facts(bars):
    kurt, acf, corr = [], [], []
    for _, frame, ret in _per_symbol(bars):
        z = (ret - ret.mean()) / ret.std()
        kurt.append(np.mean(z ** 4))
        a = np.abs(ret) - np.abs(ret).mean()
        acf.append(np.mean(a[1:] * a[:-1]) / np.mean(a * a))
        corr.append(np.corrcoef(frame["volume"].to_numpy(np.float64), np.abs(ret))[0, 1])
    assert min(kurt) > 3.0  # fat tails (normal: 3)
    assert min(acf) > 0.02 and np.median(acf) > 0.05  # volatility clustering
    assert min(corr) > 0.1  # volume rises with |return|


def test_seeded_and_atomic(tmp_path):
    a = write_demo_market(tmp_path / "a", symbols=2, seed=7, start="2020-01-01", end="2020-12-31")
    b = write_demo_market(tmp_path / "b", symbols=2, seed=7, start="2020-01-01", end="2020-12-31")
    c = write_demo_market(tmp_path / "c", symbols=2, seed=8, start="2020-01-01", end="2020-12-31")
    rel = "features/sh600000/close.day.bin"
    assert (a / rel).read_bytes() == (b / rel).read_bytes() != (c / rel).read_bytes()
    assert not (a / "features/sh600000/amount.day.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp folders left


def _close_returns(root, symbol: str = "sh600000") -> np.ndarray:
    raw = np.fromfile(root / "features" / symbol / "close.day.bin", dtype="<f4")[1:].astype(np.float64)
    ret = np.diff(np.log(raw))
    return ret[np.isfinite(ret)]


def test_ar_gives_predictable_returns_at_the_same_volatility(tmp_path):
    kwargs = dict(symbols=4, seed=3, start="2015-01-01", end="2020-12-31", benchmark=None)
    plain = write_demo_market(tmp_path / "plain", **kwargs)
    reverting = write_demo_market(tmp_path / "reverting", ar=-0.4, **kwargs)
    trending = write_demo_market(tmp_path / "trending", ar=0.4, **kwargs)
    for symbol in ("sh600000", "sh600001", "sz000001"):
        base, down, up = (_close_returns(root, symbol) for root in (plain, reverting, trending))
        lag1 = [np.corrcoef(r[1:], r[:-1])[0, 1] for r in (base, down, up)]
        assert abs(lag1[0]) < 0.07 and lag1[1] < -0.15 and lag1[2] > 0.15, (symbol, lag1)
        # The same shocks, rescaled to the same long-run variance: the volatility level stays.
        assert 0.8 < down.std() / base.std() < 1.25 and 0.8 < up.std() / base.std() < 1.25, symbol
    # ar 0 is the martingale market of earlier versions (no extra random draws): a seed keeps its bars. The digest
    # is that of the same call before the option existed.
    digest = hashlib.sha256((plain / "features/sh600000/close.day.bin").read_bytes()).hexdigest()
    assert digest == "55130246d5e13bb6a9b78f3dac0844c9db2290f02406166f249937a9092d6019"
