"""launch/forecast.py: real 5-minute bars from CSV files, the demo market through Qlib, 2 ranks through the
deepspeed launcher (the same files as 1 process), and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ds_kronos.config import parse_config
from ds_kronos.data.csv_source import read_csv_file
from ds_kronos.forecast import KronosForecaster
from ds_kronos.forecast.calendar import continue_timestamps
from ds_kronos.forecast.config import ForecastConfig
from ds_kronos.forecast.job import series_seed
from ds_kronos.forecast.sources import load_inputs
from ds_kronos.model import Kronos, KronosTokenizer
from helpers import fixtures_dir, run_in_process, run_job

KLINE = fixtures_dir() / "kline_5min_2500.csv"
FIELDS = ("open", "high", "low", "close", "volume", "amount")
LOOKBACK, PRED_LEN, PATHS = 96, 26, 4


@pytest.fixture(scope="module")
def csv_files(tmp_path_factory) -> list[Path]:
    """Three symbols cut from the real 5-minute file; CCC is too short for the lookback."""
    folder = tmp_path_factory.mktemp("csv")
    frame = pd.read_csv(KLINE)
    parts = {"AAA": frame.iloc[:1500], "BBB": frame.iloc[500:], "CCC": frame.iloc[:50]}
    paths = []
    for name, part in parts.items():
        part.to_csv(folder / f"{name}.csv", index=False)
        paths.append(folder / f"{name}.csv")
    return paths


def forecast_args(models: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    return ["--tokenizer", str(models[0]), "--predictor", str(models[1]), "--out", str(out), "--lookback",
            str(LOOKBACK), "--pred_len", str(PRED_LEN), "--sample_count", str(PATHS), "--threads", "1", *extra]


def run_script(args: list[str], processes: int | None = None) -> subprocess.CompletedProcess:
    return run_job("forecast.py", args, processes, timeout=240, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def single_run(csv_files, tiny_checkpoints, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("forecast") / "one"
    result = run_script(forecast_args(tiny_checkpoints, out, "--csv", *map(str, csv_files)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result


@pytest.mark.processes
def test_csv_forecasts_files_calendar_and_values(single_run, csv_files, tiny_checkpoints):
    out, result = single_run
    summary = json.loads((out / "summary.json").read_text())
    assert [s["symbol"] for s in summary["series"]] == ["AAA", "BBB"]
    assert summary["skipped"] == [{"symbol": "CCC", "reason": f"50 bars, --lookback needs {LOOKBACK}"}]
    assert "skipped CCC" in result.stdout
    for name in ("AAA", "BBB"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bbb = pd.read_csv(out / "BBB.csv", parse_dates=["timestamps"])
    expected_columns = ["timestamps"] + [c for f in FIELDS for c in (f, f"{f}_q0.1", f"{f}_q0.5", f"{f}_q0.9")]
    assert list(bbb.columns) == expected_columns and len(bbb) == PRED_LEN
    # BBB ends on Thursday 11:30: the afternoon session follows the lunch break, then Friday morning.
    assert str(bbb["timestamps"].iloc[0]) == "2024-08-29 13:05:00"
    assert [str(t) for t in bbb["timestamps"].iloc[-3:]] == ["2024-08-29 15:00:00", "2024-08-30 09:35:00",
                                                         "2024-08-30 09:40:00"]
    series, _, _ = read_csv_file(csv_files[1])
    np.testing.assert_array_equal(bbb["timestamps"].to_numpy(dtype="datetime64[ns]").astype(np.int64),
                                  continue_timestamps(series.timestamps, PRED_LEN))
    for field in FIELDS:
        assert (bbb[f"{field}_q0.1"] <= bbb[f"{field}_q0.5"]).all() and (bbb[f"{field}_q0.5"]
                                                                          <= bbb[f"{field}_q0.9"]).all()

    # The numbers are the model's forecast of BBB's last LOOKBACK bars with series 1's own generator.
    torch.manual_seed(0)  # --seed 0: the weights come from the model folders anyway
    forecaster = KronosForecaster(Kronos.from_pretrained(tiny_checkpoints[1]),
                                  KronosTokenizer.from_pretrained(tiny_checkpoints[0]))
    from ds_kronos.data.series import time_features

    history = series.rows(len(series) - LOOKBACK, len(series))
    future = continue_timestamps(series.timestamps, PRED_LEN)
    expected = forecaster.forecast_values([history.values], [time_features(history.timestamps).astype(np.float32)],
                                          [time_features(future).astype(np.float32)], PRED_LEN, (0.1, 0.5, 0.9),
                                          top_p=0.9, sample_count=PATHS,
                                          generator=[torch.Generator().manual_seed(series_seed(0, 1))])
    np.testing.assert_allclose(bbb[list(FIELDS)].to_numpy(), expected.mean[0], rtol=2e-5)
    np.testing.assert_allclose(bbb["close_q0.9"].to_numpy(), expected.bands[0, :, 2, 3], rtol=2e-5)


@pytest.mark.processes
def test_two_ranks_write_the_same_files_as_one(single_run, csv_files, tiny_checkpoints, tmp_path):
    result = run_script(forecast_args(tiny_checkpoints, tmp_path / "two", "--csv", *map(str, csv_files)), processes=2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    one = single_run[0]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2
    for name in ("AAA.csv", "BBB.csv"):
        # Sampled forecasts (4 paths), each series with its own generator: independent of the rank split.
        assert (tmp_path / "two" / name).read_text() == (one / name).read_text()


@pytest.mark.processes
def test_qlib_symbols_of_the_demo_market(demo_qlib_dir, tiny_checkpoints, tmp_path):
    out = tmp_path / "qlib"
    result = run_script(["--tokenizer", str(tiny_checkpoints[0]), "--predictor", str(tiny_checkpoints[1]), "--out",
                         str(out), "--qlib_dir", str(demo_qlib_dir), "--instrument", "all", "--end", "2025-03-31",
                         "--lookback", "40", "--pred_len", "5", "--sample_count", "1", "--threads", "1"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["series"] and all(s["history"][1][:10] <= "2025-03-31" for s in summary["series"])
    first = summary["series"][0]
    frame = pd.read_csv(out / first["csv"], parse_dates=["timestamps"])
    assert list(frame.columns) == ["timestamps", *FIELDS]  # one path: no bands
    days = pd.DatetimeIndex(frame["timestamps"])
    assert len(days) == 5 and (days.day_of_week < 5).all() and days[0] > pd.Timestamp(first["history"][1])
    assert (np.diff(days.asi8) > 0).all()


def test_future_timestamps_file_and_series_selection(csv_files, tiny_checkpoints, tmp_path):
    stamps = tmp_path / "future.csv"
    days = pd.date_range("2024-09-02 10:00", periods=30, freq="h")
    pd.DataFrame({"Datetime": days}).to_csv(stamps, index=False)
    config = parse_config(ForecastConfig, forecast_args(tiny_checkpoints, tmp_path / "o", "--csv", str(csv_files[1]),
                                                        "--future_timestamps", str(stamps)))
    inputs = load_inputs(config)
    assert len(inputs.series[0]) == LOOKBACK
    assert str(pd.Timestamp(inputs.series[0].timestamps[-1])) == "2024-08-29 11:30:00"
    np.testing.assert_array_equal(inputs.future[0], days[:PRED_LEN].to_numpy(dtype="datetime64[ns]")
                                  .astype(np.int64))


@pytest.mark.processes
def test_bad_input_gives_one_line_and_exit_2(csv_files, tiny_checkpoints, demo_qlib_dir, tmp_path, capsys):
    from ds_kronos.model import TOKENIZER_PRESETS

    mismatched = tmp_path / "tokenizer_8bit"
    torch.manual_seed(0)
    KronosTokenizer(TOKENIZER_PRESETS["tiny"].replace(s1_bits=8, s2_bits=8)).save_pretrained(mismatched)
    few = tmp_path / "few.csv"
    few.write_text("timestamps\n2024-08-29 13:05\n2024-08-29 13:10\n")
    no_close = tmp_path / "no_close.csv"
    pd.read_csv(KLINE).drop(columns=["close"]).to_csv(no_close, index=False)
    out = tmp_path / "o"
    bbb = str(csv_files[1])
    cases = {
        "missing required column 'close'": forecast_args(tiny_checkpoints, out, "--csv", str(no_close)),
        "file not found": forecast_args(tiny_checkpoints, out, "--csv", str(tmp_path / "nope.csv")),
        "either --csv": forecast_args(tiny_checkpoints, out),
        "nothing to forecast: AAA: 1500 bars, --lookback needs 2000": forecast_args(
            tiny_checkpoints, out, "--csv", str(csv_files[0]), "--lookback", "2000"),
        "--quantiles must be in (0, 1), got 0": forecast_args(tiny_checkpoints, out, "--csv", bbb, "--quantiles",
                                                               "0,0.5"),
        "--pred_len 600 exceeds --max_context 512": forecast_args(tiny_checkpoints, out, "--csv", bbb, "--pred_len",
                                                                  "600"),
        f"{few}: 2 timestamp(s) after the last bar of BBB": forecast_args(
            tiny_checkpoints, out, "--csv", bbb, "--future_timestamps", str(few)),
        "--instrument is required with --qlib_dir": forecast_args(tiny_checkpoints, out, "--qlib_dir",
                                                                  str(demo_qlib_dir)),
        "--end 'someday': not a date": forecast_args(tiny_checkpoints, out, "--qlib_dir", str(demo_qlib_dir),
                                                     "--instrument", "all", "--end", "someday"),
        "unknown instrument 'NOPE'": forecast_args(tiny_checkpoints, out, "--qlib_dir", str(demo_qlib_dir),
                                                   "--instrument", "NOPE"),
        "tokenizer and predictor do not match": forecast_args((mismatched, tiny_checkpoints[1]), out, "--csv", bbb),
        "does not exist": forecast_args((tmp_path / "missing", tiny_checkpoints[1]), out, "--csv", bbb),
    }
    for expected, argv in cases.items():
        code, err = run_in_process("forecast.py", argv, capsys)
        assert code == 2, (expected, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (expected, err)
    assert not out.exists()

    # The real script: one stderr line, exit status 2.
    result = run_script(forecast_args((mismatched, tiny_checkpoints[1]), out, "--csv", bbb))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if "tokenizer and predictor do not match" in line]
