"""The oracle row of the evaluation (``--oracle``, ds_kronos/evaluation/oracle_row.py) on a store prepared from a
synthetic corpus: better than the random walk on the same origins, the same whatever the ranks, the gap-closed
arithmetic, and one line for a corpus the data was not made from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ds_kronos.data.prepared import PreparedDataset
from ds_kronos.data.synthetic.corpus import MakeMarketConfig, write_corpus
from ds_kronos.evaluation.baselines import random_walk_paths
from ds_kronos.evaluation.oracle_row import corpus_specs, forecast_oracle, gap_closed, oracle_section
from ds_kronos.evaluation.origins import build_origins
from ds_kronos.evaluation.probabilistic import crps_values
from helpers import exit_code_in_process, run_in_process

HORIZON, PATHS = 5, 64


def _corpus(root: Path, market: str) -> Path:
    out = root / f"corpus_{market}"
    write_corpus(MakeMarketConfig(out=str(out), markets=[market], frequencies=["1D"], symbols=8, days=500),
                 log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("oracle")
    corpus, store = _corpus(root, "BETA"), root / "store"
    assert exit_code_in_process("prepare_data.py", ["--parquet", str(corpus / "BETA" / "1D"), "--split", "0.5,0.1,0.4",
                                             "--lookback", "60", "--predict", str(HORIZON), "--out", str(store)]) == 0
    return corpus, store


def test_the_oracle_row_beats_the_random_walk_on_the_same_origins_whatever_the_ranks(synthetic_store):
    corpus, store = synthetic_store
    prepared = PreparedDataset.open(store)
    split = prepared.split("test")
    origins = build_origins(split.timestamps, split.offsets, 60, HORIZON, HORIZON)
    specs = corpus_specs(str(corpus), prepared.manifest, list(split.symbols), prepared.freq)
    args = (specs, split.values, split.timestamps, split.offsets)
    oracle = forecast_oracle(*args, origins, HORIZON, PATHS, seed=3)
    assert oracle.paths.shape == (len(origins), PATHS, HORIZON, 1) and len(origins) >= 150
    # Rank r draws the origins of symbols r, r + 2, ...: the same paths as one process.
    parts = [forecast_oracle(*args, origins.for_rank(r, 2), HORIZON, PATHS, seed=3) for r in range(2)]
    for part, rank in zip(parts, range(2)):
        assert np.array_equal(part.paths, oracle.paths[origins.symbols % 2 == rank])
    close = np.asarray(split.values[:, 3], dtype=np.float64)
    actual = np.log(np.stack([close[row:row + HORIZON] for row in origins.rows]))
    history = np.log(np.stack([close[row - 60:row] for row in origins.rows]))[:, :, None]
    walk = random_walk_paths(history, HORIZON, PATHS, 20, seed=3)[..., 0]
    loss_oracle = crps_values(np.log(oracle.paths[..., 0]), actual).mean(axis=1)
    loss_walk = crps_values(walk, actual).mean(axis=1)
    difference = loss_walk - loss_oracle
    assert difference.mean() > 2 * difference.std(ddof=1) / np.sqrt(difference.size)  # better, significantly
    # Its variance forecast is the process's: positive and growing with the horizon.
    assert (np.diff(oracle.variance[..., 0], axis=1) > 0).all()


def test_gap_closed_is_the_share_of_the_random_walks_distance_to_the_oracle():
    assert gap_closed(0.50, 0.45, 0.40) == pytest.approx(0.5)
    assert gap_closed(0.50, 0.40, 0.40) == pytest.approx(1.0)
    assert gap_closed(0.50, 0.60, 0.40) == pytest.approx(-1.0)  # worse than the random walk
    assert gap_closed(0.50, 0.45, 0.50) is None and gap_closed(0.50, None, 0.40) is None
    rows = {name: {"features": {"close": {"crps": {"normalised": {"mean": value}}}}}
            for name, value in (("random_walk", 0.4), ("model", 0.34), ("oracle", 0.3))}
    section = oracle_section(rows)
    assert section["gap_closed"] == pytest.approx(0.6)
    assert section["crps"] == {"random_walk": 0.4, "model": 0.34, "oracle": 0.3}


def test_a_corpus_the_data_was_not_made_from_is_one_line_and_exit_2(synthetic_store, tmp_path, capsys):
    corpus, store = synthetic_store
    other = _corpus(tmp_path, "ALPHA")
    base = ["--data", str(store), "--tokenizer", "tiny", "--predictor", "tiny", "--out", str(tmp_path / "e"),
            "--sample_count", "2", "--baselines", "none"]
    for oracle, words in ((tmp_path, "not a synthetic corpus (no corpus.json"),
                          (other, "the evaluated data was not prepared from this corpus")):
        code, err = run_in_process("evaluate.py", [*base, "--oracle", str(oracle)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    # A corpus the store names as its source but without the symbol's parameters.
    (corpus / "BETA" / "1D" / "symbols.json").rename(corpus / "BETA" / "1D" / "moved.json")
    try:
        code, err = run_in_process("evaluate.py", [*base, "--oracle", str(corpus)], capsys)
    finally:
        (corpus / "BETA" / "1D" / "moved.json").rename(corpus / "BETA" / "1D" / "symbols.json")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is not in the corpus" in err, err
    code, err = run_in_process("evaluate.py", [*base[:-4], "--oracle", str(corpus)], capsys)
    assert code == 2 and "--oracle" in err and "--sample_count 2" in err, err
