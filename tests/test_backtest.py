"""Optional Qlib TopkDropout backtest of the evaluation (launch/evaluate.py --backtest): the demo market's
benchmark index, the signal construction, an end-to-end run and the one-line errors."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ds_kronos.data import PrepareConfig, prepare_dataset, write_demo_market
from ds_kronos.evaluation.backtest import build_signal, effective_topk
from helpers import run_in_process, run_job

BENCH = "SH000300"
RANGES = dict(train_range=["2022-01-01", "2023-06-30"], val_range=["2023-07-01", "2023-12-31"],
              test_range=["2024-01-01", "2024-06-30"])


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return run_job("evaluate.py", ["--tokenizer", "tiny", "--predictor", "tiny", "--top_k", "1", "--threads", "1",
                                   *args], timeout=120, OMP_NUM_THREADS="1")


def make_market(root: Path, benchmark: str | None) -> tuple[Path, Path]:
    qlib_dir = write_demo_market(root / "qlib", symbols=8, seed=0, start="2022-01-01", end="2024-06-30",
                                 benchmark=benchmark)
    prepared = root / "prepared"
    prepare_dataset(PrepareConfig(qlib_dir=str(qlib_dir), instrument="all", out=str(prepared), lookback=30,
                                  predict=5, **RANGES), log=lambda _: None)
    return qlib_dir, prepared


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> tuple[Path, Path]:
    return make_market(tmp_path_factory.mktemp("bt"), BENCH)


def test_benchmark_index_is_not_a_training_symbol(market):
    qlib_dir, prepared = market
    listed = {line.split("\t")[0] for name in ("all.txt", "csi300.txt")
              for line in (qlib_dir / "instruments" / name).read_text().splitlines()}
    assert BENCH not in listed
    assert (qlib_dir / "instruments" / "benchmark.txt").read_text().startswith(BENCH + "\t")
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert BENCH not in manifest["splits"]["train"]["symbols"]
    close = np.fromfile(qlib_dir / "features" / BENCH.lower() / "close.day.bin", dtype="<f4")
    assert close[0] == 0 and np.isfinite(close[1:]).all() and close[1] == pytest.approx(1000.0)
    for field in ("factor", "change"):
        assert (qlib_dir / "features" / "sh600000" / f"{field}.day.bin").is_file()


def test_signal_is_held_until_the_next_origin():
    calendar = pd.bdate_range("2024-01-01", periods=8)
    dates = np.array([calendar[0].value, calendar[0].value, calendar[3].value], dtype=np.int64)
    signal = build_signal(dates, np.array(["A", "B", "A"]), np.array([0.1, 0.2, 0.3]), calendar, hold=2)
    assert signal.index.names == ["datetime", "instrument"]
    wide = signal.unstack()
    assert wide["A"].tolist()[:6] == [0.1, 0.1, 0.1, 0.3, 0.3, 0.3]
    assert wide["B"].dropna().index.tolist() == list(calendar[:3])  # held 2 more days, then dropped
    assert effective_topk(8, 50, 5) == (4, 4)
    assert effective_topk(300, 50, 5) == (50, 5)


@pytest.mark.processes
def test_end_to_end_backtest(market, tmp_path):
    _, prepared = market
    out = tmp_path / "eval"
    result = run_eval("--data", str(prepared), "--out", str(out), "--max_origins_per_symbol", "8", "--backtest")
    assert result.returncode == 0, result.stderr[-3000:]
    # qlib's import of gym prints a notice, and its executor and calendar warn of what a plain backtest does not use
    assert "Gym" not in result.stderr and "WARNING" not in result.stderr, result.stderr[-3000:]
    section = json.loads((out / "report.json").read_text())["backtest"]
    for name in ("benchmark", "excess_return_without_cost", "excess_return_with_cost"):
        values = [section[name][key] for key in ("annualized_return", "information_ratio", "max_drawdown")]
        assert all(isinstance(v, float) and math.isfinite(v) for v in values), (name, values)
        assert section[name]["max_drawdown"] <= 0
    settings = section["settings"]
    assert settings["benchmark"] == BENCH and (settings["topk"], settings["n_drop"]) == (4, 4)
    assert settings["trading_days"] > 20 and settings["start"] >= "2024-01-01"
    assert (out / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "excess with cost" in result.stdout and "backtest.png" in result.stdout


def eval_in_process(capfd, *args: str) -> tuple[int, str]:
    return run_in_process("evaluate.py", ["--tokenizer", "tiny", "--predictor", "tiny", "--top_k", "1", "--threads",
                                          "1", *args], capfd)


def test_missing_benchmark_and_csv_source_fail_with_one_line(tmp_path, capfd):
    _, prepared = make_market(tmp_path / "nobench", None)
    code, err = eval_in_process(capfd, "--data", str(prepared), "--out", str(tmp_path / "e1"), "--backtest")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert BENCH in lines[0] and str((tmp_path / "nobench" / "qlib").resolve()) in lines[0]

    days = pd.bdate_range("2020-01-01", periods=120)
    close = 10 + np.cumsum(np.random.default_rng(0).normal(size=120)) * 0.1
    csv = tmp_path / "AAA.csv"
    pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": close, "high": close + 1, "low": close - 1,
                  "close": close, "volume": 1000.0}).to_csv(csv, index=False)
    prepare_dataset(PrepareConfig(csv=[str(csv)], out=str(tmp_path / "csvp"), split=[0.6, 0.2, 0.2], lookback=10,
                                  predict=3), log=lambda _: None)
    code, err = eval_in_process(capfd, "--data", str(tmp_path / "csvp"), "--out", str(tmp_path / "e2"), "--backtest")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert "Qlib provider folder" in lines[0] and "'csv'" in lines[0]
