"""Training on a --data mixture (issue 34, item 4): the options' errors in one line before any process group, the
split ranges a job gives its stores, and a 2-rank 0.7/0.3 mixture of an hourly and a half-hourly store that is
stopped and resumed exactly, with each source's validation loss in metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from test_data_store import LOOKBACK, PREDICT, RANGES, _store, market, write_csv

from ds_kronos.data import PrepareConfig, PreparedDataset, WindowDataset, prepare_dataset
from helpers import SEED, VAL_SAMPLES, run_in_process


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores of the same window shape: hourly bars, and half-hourly bars over the same dates."""
    root = tmp_path_factory.mktemp("mixture")
    hourly = market()
    half_hourly = {name: frame.assign(timestamps=pd.date_range(frame["timestamps"].iloc[0], periods=len(frame),
                                                               freq="30min"))
                   for name, frame in market(days=60, seed=3).items()}
    _store(root / "hourly", csv=write_csv(hourly, root / "csv_h"), format=2)
    _store(root / "half", csv=write_csv(half_hourly, root / "csv_m"), format=2)
    return root / "hourly", root / "half"


def _train_in_process(args: list[str], capsys) -> tuple[int, str]:
    return run_in_process("train.py", ["--tokenizer", "tiny", "--predictor", "tiny", *args], capsys)


def test_a_bad_mixture_ends_in_one_line_before_any_process_group(stores, tmp_path, capsys):
    hourly, half = stores
    other = tmp_path / "other_lookback"
    prepare_dataset(PrepareConfig(csv=write_csv(market(symbols=3), tmp_path / "csv"), out=str(other),
                                  lookback=LOOKBACK - 4, predict=PREDICT, **RANGES), log=lambda line: None)
    cases = {
        f"{hourly}:0.7,{half}:0": "the weight of .*half is 0; weights must be positive",
        f"{hourly}:0.7,{half}:-1": "weights must be positive",
        f"{hourly}:0.7,{tmp_path / 'absent'}:0.3": "absent: no such folder",
        f"{hourly}:1,{other}:1": "other_lookback has lookback 16 but .*hourly has 20",
        f"{hourly}:0.7,{half}": "has no weight",
    }
    for spec, message in cases.items():
        code, err = _train_in_process(["--data", spec, "--save_dir", str(tmp_path / "run")], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines[0][-300:]
    code, err = _train_in_process(["--data", f"{hourly}:0.7,{half}:0.3", "--val_range", "2024-02-01,2024-01-01",
                                   "--save_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "--val_range: range" in err and len(err.strip().splitlines()) == 1
    code, err = _train_in_process(["--data", f"{hourly},{half}", "--select_by", "crps",
                                   "--save_dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "forecast validation scores origins of one source" in err
    code, err = run_in_process("evaluate.py", ["--data", f"{hourly}:0.7,{half}:0.3", "--tokenizer", "tiny",
                                               "--predictor", "tiny", "--out", str(tmp_path / "eval")], capsys)
    assert code == 2 and "evaluation scores one prepared dataset, not a mixture" in err
    assert not (tmp_path / "run").exists()


def test_a_jobs_val_range_changes_the_val_windows_without_preparing_again(stores, tmp_path):
    """``--val_range`` (a job option) opens the store's view of those dates: the val windows of a store prepared
    with that range, and no file of the store is written."""
    from ds_kronos.config import parse_config
    from ds_kronos.data.sources import open_sources
    from ds_kronos.train.config import TrainConfig
    from ds_kronos.train.inputs import open_splits

    hourly, half = stores
    before = sorted((p.name, p.stat().st_mtime_ns) for p in hourly.rglob("*") if p.is_file())
    val_range = "2024-01-10,2024-01-25"
    config = parse_config(TrainConfig, ["--data", f"{hourly}:0.7,{half}:0.3", "--val_range", val_range,
                                        "--n_val_iter", "40", "--save_dir", str(tmp_path / "run")])
    _, val_set, _ = open_splits(open_sources(config.data, split=config.split_choice(), local_rank=0), config)
    _, default_val, _ = open_splits(open_sources(config.data, local_rank=0), config)
    reference = tmp_path / "prepared_with_range"
    prepare_dataset(PrepareConfig(csv=[str(p) for p in sorted((hourly.parent / "csv_h").glob("*.csv"))],
                                  out=str(reference), format=2, lookback=LOOKBACK, predict=PREDICT,
                                  **{**RANGES, "val_range": val_range.split(",")}), log=lambda line: None)
    expected = WindowDataset(PreparedDataset.open(reference), "val", max_samples=40, seed=SEED, shuffle=False)
    got = val_set.get_batch(list(val_set.ranges[0]))
    for a, b in zip(got, expected.get_batch(list(range(len(expected))))):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert val_set.parts[0].num_windows != default_val.parts[0].num_windows  # the range did change the windows
    assert sorted((p.name, p.stat().st_mtime_ns) for p in hourly.rglob("*") if p.is_file()) == before


@pytest.mark.processes
def test_a_mixture_on_two_ranks_resumes_exactly_and_reports_each_source(stores, tiny_checkpoints, tmp_path):
    from helpers import assert_same_weights, deepspeed_train, summary, train_args, two_at_a_time

    hourly, half = stores
    spec = f"{hourly}:0.7,{half}:0.3"

    def run(name: str, *extra: str):
        return deepspeed_train(train_args(spec, tiny_checkpoints, tmp_path / name, epochs=1, max_steps=4,
                                          save_every=2) + list(extra), timeout=300)

    two_at_a_time(lambda job: run(*job), [("straight",), ("resumed", "--exit_after_steps", "2")])
    assert "resumed from step 2" in run("resumed", "--resume").stdout
    straight, resumed = summary(tmp_path / "straight"), summary(tmp_path / "resumed")
    assert_same_weights(tmp_path / "straight" / "final_model", tmp_path / "resumed" / "final_model")
    assert resumed["final_val_loss"] == pytest.approx(straight["final_val_loss"], abs=1e-6)
    sources = resumed["sources"]
    assert [s["path"] for s in sources] == [str(hourly), str(half)]
    assert [s["weight"] for s in sources] == pytest.approx([0.7, 0.3])
    train_samples = [s["train_samples"] for s in sources]
    assert sum(train_samples) == 128 and abs(train_samples[0] - 0.7 * 128) <= 1  # exact shares
    assert all(s["val_samples"] == VAL_SAMPLES and s["windows"] > 0 for s in sources)
    lines = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 4]
    for line in lines:  # the total is the samples' mean: each source holds VAL_SAMPLES of them
        assert len(line["source_val_losses"]) == 2
        assert np.mean(line["source_val_losses"]) == pytest.approx(line["val_loss"], abs=1e-6)
    assert [s["val_loss"] for s in sources] == pytest.approx(lines[-1]["source_val_losses"], abs=1e-9)
    assert lines[0]["source_val_losses"][0] != pytest.approx(lines[0]["source_val_losses"][1], abs=1e-6)
