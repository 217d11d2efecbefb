"""Future bar timestamps (a series' own calendar, or a file) and the DataFrame forecasting API's bands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ds_kronos.data.csv_source import read_csv_file
from ds_kronos.errors import DataError
from ds_kronos.forecast import KronosForecaster, calendar_features, sample_paths, widen_bars, widen_paths
from ds_kronos.forecast.calendar import continue_timestamps, read_timestamps, timestamps_after
from ds_kronos.forecast.sampler_file import SamplerSettings
from ds_kronos.model import Kronos, KronosTokenizer
from helpers import fixtures_dir

KLINE = fixtures_dir() / "kline_5min_2500.csv"


def ns(stamps) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(stamps)).to_numpy(dtype="datetime64[ns]").astype(np.int64)


def when(values: np.ndarray) -> list[str]:
    return [str(t) for t in pd.DatetimeIndex(values.astype("datetime64[ns]"))]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def kline_ns() -> np.ndarray:
    series, _, _ = read_csv_file(KLINE)
    return series.timestamps


# --- Calendar ------------------------------------------------------------------------------------------------------

def test_five_minute_bars_keep_lunch_breaks_nights_and_weekends(kline_ns):
    # The file ends on Thursday 2024-08-29 at 11:30, the end of the morning session.
    future = continue_timestamps(kline_ns, 60)
    assert when(future[:2]) == ["2024-08-29 13:05:00", "2024-08-29 13:10:00"]
    assert when(future[23:26]) == ["2024-08-29 15:00:00", "2024-08-30 09:35:00", "2024-08-30 09:40:00"]
    # Exactly the session of the file: 48 bars a day, 09:35-11:30 and 13:05-15:00.
    session = sorted({str(t.time()) for t in pd.DatetimeIndex(kline_ns.astype("datetime64[ns]"))})
    assert len(session) == 48
    assert [t[-8:] for t in when(future[24:60])] == session[:36]
    # From a Friday close the next bar is Monday's first (four days of history, Tuesday to Friday, do not show
    # that Monday is closed).
    friday_close = int(np.flatnonzero(pd.DatetimeIndex(kline_ns.astype("datetime64[ns]")) ==
                                      pd.Timestamp("2024-06-21 15:00"))[0])
    assert when(continue_timestamps(kline_ns[:friday_close + 1], 2)) == ["2024-06-24 09:35:00",
                                                                          "2024-06-24 09:40:00"]


def test_a_stray_time_of_day_is_not_a_session_slot(kline_ns):
    stray = np.sort(np.r_[kline_ns[:-1], ns(["2024-08-28 12:00"]), kline_ns[-1:]])
    assert "12:00" not in " ".join(when(continue_timestamps(stray, 100)))


def test_daily_weekly_monthly_and_irregular_bars():
    daily = ns(pd.bdate_range("2024-01-01", "2024-02-09"))  # ends on a Friday
    assert when(continue_timestamps(daily, 3)) == ["2024-02-12 00:00:00", "2024-02-13 00:00:00",
                                                   "2024-02-14 00:00:00"]
    # Six trading days a week are kept as six; in a month of Monday-to-Wednesday bars Thursday is closed.
    six = ns([d for d in pd.date_range("2024-01-01", "2024-02-10") if d.day_of_week != 6])
    assert when(continue_timestamps(six, 2)) == ["2024-02-12 00:00:00", "2024-02-13 00:00:00"]
    three = ns([d for d in pd.date_range("2024-01-01", "2024-01-31") if d.day_of_week < 3])  # ends Wednesday
    assert when(continue_timestamps(three, 2)) == ["2024-02-05 00:00:00", "2024-02-06 00:00:00"]
    weekly = ns(pd.date_range("2024-01-05", periods=20, freq="W-FRI"))
    assert when(continue_timestamps(weekly, 2)) == ["2024-05-24 00:00:00", "2024-05-31 00:00:00"]
    monthly = ns(pd.date_range("2024-01-31", periods=12, freq="ME"))
    assert when(continue_timestamps(monthly, 3)) == ["2025-01-31 00:00:00", "2025-02-28 00:00:00",
                                                     "2025-03-31 00:00:00"]
    irregular = ns(["2024-01-01", "2024-01-04", "2024-01-11", "2024-01-14", "2024-01-21"])
    # No pandas frequency: the median spacing (5 days) from the last bar.
    assert when(continue_timestamps(irregular, 2)) == ["2024-01-26 00:00:00", "2024-01-31 00:00:00"]
    with pytest.raises(DataError, match="fewer than 2 bars"):
        continue_timestamps(daily[:1], 3)


def test_future_timestamps_file(tmp_path):
    named = tmp_path / "named.csv"
    named.write_text("Date,other\n2024-03-05 10:00+08:00,1\n2024-03-04 10:00+08:00,2\n2024-03-06 10:00+08:00,3\n")
    values = read_timestamps(named)  # sorted, time zone dropped (wall clock)
    assert when(values) == ["2024-03-04 10:00:00", "2024-03-05 10:00:00", "2024-03-06 10:00:00"]
    single = tmp_path / "single.csv"
    single.write_text("when\n2024-03-04\n2024-03-05\n")
    assert when(read_timestamps(single)) == ["2024-03-04 00:00:00", "2024-03-05 00:00:00"]
    assert when(timestamps_after(values, int(values[0]), 2, "f", "X")) == ["2024-03-05 10:00:00",
                                                                           "2024-03-06 10:00:00"]
    with pytest.raises(DataError, match=r"f: 1 timestamp\(s\) after the last bar of X .* --pred_len needs 2"):
        timestamps_after(values, int(values[1]), 2, "f", "X")
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamps\n2024-03-04\nnot a time\n")
    with pytest.raises(DataError, match="cannot parse time 'not a time'"):
        read_timestamps(bad)
    two = tmp_path / "two.csv"
    two.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no time column"):
        read_timestamps(two)


# --- DataFrame API ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def forecaster() -> KronosForecaster:
    torch.manual_seed(0)
    return KronosForecaster(Kronos.from_preset("tiny"), KronosTokenizer.from_preset("tiny"), max_context=512)


def kline_frames(kline_ns, count: int, lookback: int, pred_len: int):
    frame = pd.read_csv(KLINE, parse_dates=["timestamps"])
    frames, x_ts, y_ts = [], [], []
    for i in range(count):
        part = frame.iloc[200 * i: 200 * i + lookback]
        frames.append(part[["open", "high", "low", "close", "volume", "amount"]].reset_index(drop=True))
        x_ts.append(part["timestamps"].reset_index(drop=True))
        y_ts.append(pd.Series(pd.to_datetime(continue_timestamps(ns(part["timestamps"]), pred_len))))
    return frames, x_ts, y_ts


def test_forecast_batch_bands_are_the_quantiles_of_the_sampled_paths(forecaster, kline_ns):
    assert forecaster.use_cache  # incremental decoding is the default
    frames, x_ts, y_ts = kline_frames(kline_ns, 2, 64, 12)
    result = forecaster.forecast_batch(frames, x_ts, y_ts, 12, quantiles=(0.9, 0.1, 0.5), sample_count=6,
                                       generator=torch.Generator().manual_seed(4))
    assert list(result[0].columns[:4]) == ["open", "open_q0.1", "open_q0.5", "open_q0.9"]
    assert len(result[0].columns) == 24 and list(result[1].index) == list(y_ts[1])
    for frame in result:
        for field in ("open", "high", "low", "close", "volume", "amount"):
            assert (frame[f"{field}_q0.1"] <= frame[f"{field}_q0.5"]).all()
            assert (frame[f"{field}_q0.5"] <= frame[f"{field}_q0.9"]).all()
    # Independently: the same paths from the sampler, quantiles in normalised units, then the series' scale.
    values = np.stack([f.to_numpy(dtype=np.float32) for f in frames])
    mean, std = values.mean(axis=1, keepdims=True), values.std(axis=1, keepdims=True)
    x = torch.from_numpy(np.clip((values - mean) / (std + 1e-5), -5, 5))
    paths = sample_paths(forecaster.tokenizer, forecaster.predictor, x,
                         torch.from_numpy(np.stack([calendar_features(t) for t in x_ts])),
                         torch.from_numpy(np.stack([calendar_features(t) for t in y_ts])), 512, 12, top_p=0.9,
                         sample_count=6, generator=torch.Generator().manual_seed(4))[:, :, -12:].numpy()
    q90 = np.quantile(paths, 0.9, axis=1) * (std + 1e-5) + mean
    average = paths.mean(axis=1) * (std + 1e-5) + mean
    for i in range(2):
        np.testing.assert_allclose(result[i]["close_q0.9"].to_numpy(), q90[i, :, 3], rtol=1e-5)
        np.testing.assert_allclose(result[i]["volume"].to_numpy(), average[i, :, 4], rtol=1e-5)
    # Bands that are not degenerate: the paths differ.
    assert (result[0]["close_q0.9"] > result[0]["close_q0.1"]).any()


def test_a_spread_factor_widens_the_bands_around_an_unchanged_mean(forecaster, kline_ns):
    frames, x_ts, y_ts = kline_frames(kline_ns, 2, 48, 6)
    kwargs = dict(quantiles=(0.1, 0.9), sample_count=5, top_p=0.9)
    plain = forecaster.forecast_batch(frames, x_ts, y_ts, 6, generator=torch.Generator().manual_seed(3), **kwargs)
    wide = KronosForecaster(forecaster.predictor, forecaster.tokenizer, sampler=SamplerSettings(spread=2.5))
    widened = wide.forecast_batch(frames, x_ts, y_ts, 6, generator=torch.Generator().manual_seed(3), **kwargs)
    for a, b in zip(plain, widened):
        for field in ("close", "volume"):
            np.testing.assert_allclose(b[field], a[field], rtol=1e-5)
            for q in ("0.1", "0.9"):  # the same draws: each band is 2.5 times as far from the mean
                np.testing.assert_allclose(b[f"{field}_q{q}"] - b[field], 2.5 * (a[f"{field}_q{q}"] - a[field]),
                                           rtol=1e-4, atol=1e-3 * a[field].abs().max())
    # The call's value wins over the forecaster's; the sampler's decoded history steps are left as they are.
    again = wide.forecast_batch(frames, x_ts, y_ts, 6, generator=torch.Generator().manual_seed(3), spread=1.0,
                                **kwargs)
    pd.testing.assert_frame_equal(again[0], plain[0])
    values = np.stack([f.to_numpy(dtype=np.float32) for f in frames])
    x = torch.from_numpy((values - values.mean(axis=1, keepdims=True)) / (values.std(axis=1, keepdims=True) + 1e-5))
    stamps = [torch.from_numpy(np.stack([calendar_features(t) for t in ts])) for ts in (x_ts, y_ts)]
    paths = [sample_paths(forecaster.tokenizer, forecaster.predictor, x, *stamps, 512, 6, sample_count=5,
                          generator=torch.Generator().manual_seed(3), spread=spread) for spread in (1.0, 2.5)]
    assert torch.equal(paths[0][:, :, :-6], paths[1][:, :, :-6])
    with pytest.raises(ValueError, match="spread must be a positive number"):
        widen_paths(paths[0], 0.0)
    # The forecaster widens whole bars in each series' units (widen_bars), the bands are their quantiles.
    mean, std = values.mean(axis=1), values.std(axis=1)
    drawn = sample_paths(forecaster.tokenizer, forecaster.predictor, x, *stamps, 512, 6, sample_count=5, top_p=0.9,
                         generator=torch.Generator().manual_seed(3))[:, :, -6:]
    bars = widen_bars(drawn, 2.5, torch.from_numpy(mean), torch.from_numpy(std)).numpy()
    bands = np.quantile(bars, 0.9, axis=1) * (std[:, None] + 1e-5) + mean[:, None]
    for i, frame in enumerate(widened):
        for f, field in enumerate(("open", "high", "low", "close", "volume", "amount")):
            np.testing.assert_allclose(frame[f"{field}_q0.9"], bands[i, :, f], rtol=1e-5, atol=1e-6, err_msg=field)


def synthetic_bars(series: int = 3, paths: int = 40, steps: int = 8, seed: int = 0) -> np.ndarray:
    """Consistent OHLCV bars [series, paths, steps, 6] in a price's units: high above and low below open and close,
    volume and amount positive (as a forecast's paths should be; a series' volume varies by 60%, 3% or 30%)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(5, 50, size=(series, 1, 1))
    close = level * np.exp(np.cumsum(rng.normal(0, 0.02, size=(series, paths, steps)), axis=-1))
    open_ = close * np.exp(rng.normal(0, 0.01, size=close.shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.01, size=close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.01, size=close.shape)))
    volume = np.exp(10 + rng.normal(size=close.shape) * np.array([0.6, 0.03, 0.3])[:series, None, None])
    return np.stack([open_, high, low, close, volume, volume * close], axis=-1)


def test_a_large_spread_factor_keeps_every_path_a_bar():
    """Widened by 6, each path's open and close stay between its low and high, and volume and amount stay >= 0;
    the close is widened exactly as the calibrated factor says and every mean over the paths is unchanged. (Each
    feature widened on its own, as before, breaks all of that on these bars.)"""
    prices = synthetic_bars()
    mean, std = prices.reshape(3, -1, 6).mean(axis=1), prices.reshape(3, -1, 6).std(axis=1)
    norm = torch.from_numpy((prices - mean[:, None, None]) / (std[:, None, None] + 1e-5))
    wide = widen_bars(norm, 6.0, torch.from_numpy(mean), torch.from_numpy(std))
    torch.testing.assert_close(wide.mean(dim=1), norm.mean(dim=1))
    torch.testing.assert_close(wide[..., 3], widen_paths(norm, 6.0)[..., 3], rtol=0, atol=0)

    def broken(bars: np.ndarray) -> dict[str, int]:
        o, h, lo, c, v, a = np.moveaxis(bars, -1, 0)
        tol = 1e-9 * np.abs(bars).max()
        return {"high below open or close": int((h < np.maximum(o, c) - tol).sum()),
                "low above open or close": int((lo > np.minimum(o, c) + tol).sum()),
                "negative volume or amount": int((np.minimum(v, a) < -tol).sum())}

    def in_prices(bars: torch.Tensor) -> np.ndarray:
        return bars.numpy() * (std[:, None, None] + 1e-5) + mean[:, None, None]

    assert broken(prices) == dict.fromkeys(broken(prices), 0)
    assert broken(in_prices(wide)) == dict.fromkeys(broken(prices), 0)
    assert all(count > 0 for count in broken(in_prices(widen_paths(norm, 6.0))).values())
    # Only the steps where the full factor would go below zero get less: elsewhere volume is widened by 6.
    deviation = (wide - wide.mean(dim=1, keepdim=True))[..., 4] / (norm - norm.mean(dim=1, keepdim=True))[..., 4]
    assert deviation.min() >= 1 - 1e-9 and (deviation > 6 - 1e-6).any() and (deviation < 6 - 1e-3).any()
    # Narrowing (a factor below 1) keeps every bar as it is and needs no limit.
    narrow = widen_bars(norm, 0.5, torch.from_numpy(mean), torch.from_numpy(std))
    assert broken(in_prices(narrow)) == dict.fromkeys(broken(prices), 0)
    torch.testing.assert_close(narrow[..., 4], widen_paths(norm, 0.5)[..., 4])


def test_predict_batch_is_the_band_mean_and_cache_free_path_agrees(forecaster, kline_ns):
    frames, x_ts, y_ts = kline_frames(kline_ns, 3, 48, 8)
    kwargs = dict(top_p=0.9, sample_count=3)
    means = forecaster.predict_batch(frames, x_ts, y_ts, 8, generator=torch.Generator().manual_seed(1), **kwargs)
    bands = forecaster.forecast_batch(frames, x_ts, y_ts, 8, generator=torch.Generator().manual_seed(1), **kwargs)
    recompute = KronosForecaster(forecaster.predictor, forecaster.tokenizer, use_cache=False)
    slow = recompute.predict_batch(frames, x_ts, y_ts, 8, generator=torch.Generator().manual_seed(1), **kwargs)
    for mean, band, other in zip(means, bands, slow):
        assert list(mean.columns) == ["open", "high", "low", "close", "volume", "amount"]
        pd.testing.assert_frame_equal(mean, band[list(mean.columns)])
        pd.testing.assert_frame_equal(mean, other)
