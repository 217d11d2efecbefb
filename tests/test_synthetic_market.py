"""The synthetic pretraining corpus (ds_kronos/data/synthetic, launch/make_market.py): its stylised facts, its
determinism, its oracle against the generator, its one-line errors, and the corpus through the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ds_kronos.data.synthetic import load_symbol_spec, oracle_paths, oracle_variance
from ds_kronos.data.synthetic.calendar import day_template, first_day, grid_stamps
from ds_kronos.data.synthetic.corpus import MakeMarketConfig, block_bars, write_corpus
from ds_kronos.data.synthetic.process import Params, State, bars
from ds_kronos.data.synthetic.spec import MarketSpec, default_markets, draw_symbol_specs
from ds_kronos.evaluation.baselines import random_walk_paths
from ds_kronos.evaluation.probabilistic import crps_values
from helpers import error_lines, run_in_process, run_job


def _corpus(root: Path, **options) -> Path:
    out = root / "corpus"
    write_corpus(MakeMarketConfig(out=str(out), **options), log=lambda _: None)
    return out


def _panel(folder: Path, field: str) -> pd.DataFrame:
    """[time, symbol] of one field of a market's frequency folder."""
    frame = pd.concat(pq.read_table(p).to_pandas() for p in sorted(folder.glob("*.parquet")))
    frame["symbol"] = frame["symbol"].astype(str)
    return frame.pivot(index="timestamps", columns="symbol", values=field)


@pytest.fixture(scope="module")
def daily(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("daily"), markets=["ALPHA", "BETA"], frequencies=["1D"], symbols=120,
                   days=1200, symbols_per_file=50, chunk_bars=30_000)


@pytest.fixture(scope="module")
def intraday(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("intraday"), markets=["ALPHA"], frequencies=["5min"], symbols=40, days=25)


def _returns(folder: Path) -> pd.DataFrame:
    return np.log(_panel(folder, "close")).diff()


def _mean_over_symbols(frame: pd.DataFrame, statistic) -> float:
    return float(np.nanmean([statistic(frame[c].dropna().to_numpy()) for c in frame.columns]))


def _acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


def test_daily_bars_show_clustering_by_persistence_fat_tails_leverage_and_volume(daily):
    more, less = _returns(daily / "ALPHA" / "1D"), _returns(daily / "BETA" / "1D")  # persistence 0.995 vs 0.88
    clustering = {name: _mean_over_symbols(r ** 2, lambda x: np.mean([_acf(x, k) for k in range(5, 21)]))
                  for name, r in (("more", more), ("less", less))}
    assert clustering["more"] > 0.05 and clustering["less"] > 0
    assert clustering["more"] > 2 * clustering["less"]
    for r in (more, less):
        assert _mean_over_symbols(r, lambda x: pd.Series(x).kurt() + 3.0) > 3.5
    # Leverage: a fall raises the next bar's variance more than a rise (about -0.02 here; 0 +- 0.005 with gamma 0).
    both = pd.concat([more, less], axis=1)
    assert _mean_over_symbols(both, lambda x: np.corrcoef(x[:-1], np.abs(x[1:]))[0, 1]) < -0.01
    volume = np.log(_panel(daily / "BETA" / "1D", "volume"))
    pairs = [pd.concat([volume[c], less[c].abs()], axis=1).dropna().to_numpy() for c in less.columns]
    assert np.mean([np.corrcoef(p[:, 0], p[:, 1])[0, 1] for p in pairs if len(p) > 10]) > 0.2


def test_bars_are_consistent_and_symbols_list_and_delist(daily, intraday):
    for folder in (daily / "ALPHA" / "1D", daily / "BETA" / "1D", intraday / "ALPHA" / "5min"):
        frame = pd.concat(pq.read_table(p).to_pandas() for p in folder.glob("*.parquet"))
        o, h, low, c = (frame[k].to_numpy() for k in ("open", "high", "low", "close"))
        assert np.isfinite(frame[["open", "high", "low", "close", "volume", "amount"]].to_numpy()).all()
        assert (low > 0).all() and (h >= np.maximum(o, c)).all() and (low <= np.minimum(o, c)).all()
        assert (frame["volume"] >= 0).all() and (frame["amount"] >= 0).all()
        assert (h > low).mean() > 0.99
        spans = frame.groupby(frame["symbol"].astype(str))["timestamps"].agg(["min", "max"])
        specs = json.loads((folder / "symbols.json").read_text())["symbols"]
        assert (spans["min"] > spans["min"].min()).any() and (spans["max"] < spans["max"].max()).any()
        for name, own in specs.items():  # the specs say when each symbol trades
            assert spans.loc[name, "min"] == pd.Timestamp(own["listed"])
            assert own["delisted"] is None or spans.loc[name, "max"] == pd.Timestamp(own["delisted"])


def test_intraday_bars_keep_sessions_gaps_and_a_u_shape(intraday):
    folder = intraday / "ALPHA" / "5min"
    close, open_ = _panel(folder, "close"), _panel(folder, "open")
    minutes = close.index.hour * 60 + close.index.minute
    assert minutes.min() == 9 * 60 + 35 and minutes.max() == 15 * 60
    assert not ((minutes > 11 * 60 + 30) & (minutes <= 13 * 60)).any()  # the lunch break has no bar
    assert len(np.unique(minutes)) == 48
    previous = close.shift(1)
    opening = (minutes == 9 * 60 + 35) | (minutes == 13 * 60 + 5)
    same = np.isclose(open_, previous, rtol=1e-12)
    both = (open_.notna() & previous.notna()).to_numpy()
    opening = np.asarray(opening)[:, None]
    assert same[both & ~opening].all()  # a bar opens at the last close, except after the night or the lunch break
    assert same[both & opening].mean() < 0.01
    squared = (np.log(close).diff() ** 2).mean(axis=1).groupby(minutes).mean()
    middle = squared.loc[[m for m in squared.index if 10 * 60 + 30 <= m <= 14 * 60 and m != 13 * 60 + 5]].mean()
    assert squared.loc[9 * 60 + 40] > 1.5 * middle and squared.loc[15 * 60] > 1.5 * middle


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path):
    options = {"markets": ["DELTA"], "frequencies": ["1h"], "symbols": 5, "days": 20}
    a, b = _corpus(tmp_path / "a", **options), _corpus(tmp_path / "b", **options)
    c = _corpus(tmp_path / "c", seed=1, **options)
    table = pq.read_table(a / "DELTA" / "1h" / "part-00000.parquet")
    assert table.equals(pq.read_table(b / "DELTA" / "1h" / "part-00000.parquet"))
    assert not table.equals(pq.read_table(c / "DELTA" / "1h" / "part-00000.parquet"))
    assert (a / "DELTA" / "1h" / "symbols.json").read_bytes() == (b / "DELTA" / "1h" / "symbols.json").read_bytes()
    index = json.loads((a / "corpus.json").read_text())
    assert index["splits"] == {"pretrain": [], "heldout": ["DELTA"]} and index["bars"] == table.num_rows


def _one_symbol(market: MarketSpec, freq: str, bars_count: int, seed: int):
    """One symbol simulated from its listing with the generator's code: its spec, (timestamps, values) and the true
    conditional variance of each bar's return."""
    template = day_template(market.sessions, freq, market.overnight, market.lunch, market.u_shape)
    day0 = first_day("2021-01-04")
    stamps, k = grid_stamps(template, day0, np.arange(bars_count))
    first = str(stamps[0].astype("datetime64[ns]"))
    spec = draw_symbol_specs(market, freq, template.bars_per_day, 1, [first], [None], np.random.default_rng(seed))[0]
    params = Params.of([spec])
    drawn = bars(params, State.at_listing(params, np.array([spec.price0])), template.scale[k], template.gap[k],
                 np.random.default_rng(seed + 1))
    values = np.stack([drawn[f][:, 0] for f in ("open", "high", "low", "close", "volume", "amount")], axis=1)
    return spec, stamps, values, drawn["variance"][:, 0]


@pytest.mark.parametrize("name,freq", [("ALPHA", "5min"), ("GAMMA", "1D")])
def test_oracle_one_step_variance_is_the_generators(name, freq):
    market = next(m for m in default_markets() if m.name == name)
    spec, stamps, values, variance = _one_symbol(market, freq, 600, seed=3)
    for origin in (0, 47, 300, 598):  # the history ends at bar `origin`; its next bar's variance is known
        got = oracle_variance(spec, (stamps[:origin + 1], values[:origin + 1]), 1)[0]
        assert got == pytest.approx(variance[origin + 1], rel=1e-9)
    late = oracle_variance(spec, (stamps[200:401], values[200:401]), 1)[0]  # not from the listing: converged
    assert late == pytest.approx(variance[401], rel=1e-4)
    paths = oracle_paths(spec, (stamps[:301], values[:301]), 5, 40_000, seed=0)
    log_return = np.log(paths[:, :, 3] / values[300, 3])
    expected = oracle_variance(spec, (stamps[:301], values[:301]), 5)
    assert np.var(log_return, axis=0) == pytest.approx(expected, rel=0.06)
    assert (paths[..., 1] >= paths[..., [0, 3]].max(axis=-1)).all() and (paths[..., 4] >= 0).all()
    again = oracle_paths(spec, (stamps[:301], values[:301]), 5, 100, seed=0)
    assert np.array_equal(again, oracle_paths(spec, (stamps[:301], values[:301]), 5, 100, seed=0))


def test_oracle_state_is_exact_for_symbols_that_list_late_in_a_block():
    """A symbol listing inside a chunk or at a chunk's first bar starts from its first price and long-run variance,
    as the oracle assumes: its variance from the listing on is the generator's."""
    market = next(m for m in default_markets() if m.name == "DELTA")
    template = day_template(market.sessions, "1h", market.overnight, market.lunch, market.u_shape)
    day0, total, first = first_day("2022-03-01"), 60, np.array([0, 7, 10, 23])
    stamps_all, _ = grid_stamps(template, day0, np.arange(total))
    listed = [str(stamps_all[f].astype("datetime64[ns]")) for f in first]
    specs = draw_symbol_specs(market, "1h", template.bars_per_day, 4, listed, [None] * 4, np.random.default_rng(0))
    chunks = list(block_bars(specs, first, np.full(4, total - 1), template, day0, total, 10, np.random.default_rng(1)))
    stamps = np.concatenate([c[0] for c in chunks])
    drawn = {f: np.concatenate([c[2][f] for c in chunks]) for f in ("open", "high", "low", "close", "volume",
                                                                       "amount", "variance")}
    for i, f in enumerate(first):
        values = np.stack([drawn[name][:, i] for name in ("open", "high", "low", "close", "volume", "amount")], 1)
        assert values[f, 0] == pytest.approx(specs[i].price0, rel=0.2)  # trades from its first price
        for end in (f, f + 5, total - 2):
            got = oracle_variance(specs[i], (stamps[f:end + 1], values[f:end + 1]), 1)[0]
            assert got == pytest.approx(drawn["variance"][end + 1, i], rel=1e-9), (i, end)


def test_oracle_beats_a_random_walk_with_20_bar_volatility(daily):
    folder = daily / "BETA" / "1D"
    close = _panel(folder, "close")
    horizon, paths, scores = 5, 200, {"oracle": [], "random_walk": []}
    for i, symbol in enumerate(c for c in close.columns if close[c].count() > 700):
        series = close[symbol].dropna()
        spec = load_symbol_spec(daily, symbol)
        for origin in range(100, 700, 60):
            frame = pd.DataFrame({"timestamps": series.index[:origin + 1], "close": series.to_numpy()[:origin + 1]})
            actual = np.log(series.to_numpy()[origin + 1:origin + 1 + horizon])[None]
            oracle = np.log(oracle_paths(spec, frame, horizon, paths, seed=i)[:, :, 3])[None]
            history = np.log(frame["close"].to_numpy())[None, :, None]
            walk = random_walk_paths(history, horizon, paths, 20, seed=i)[..., 0]
            scores["oracle"].append(crps_values(oracle, actual).mean())
            scores["random_walk"].append(crps_values(walk, actual).mean())
    oracle, walk = np.array(scores["oracle"]), np.array(scores["random_walk"])
    assert len(oracle) >= 500
    difference = walk - oracle
    assert difference.mean() > 2 * difference.std(ddof=1) / np.sqrt(len(difference))  # better, significantly


@pytest.mark.parametrize("market,words", [
    ({"alpha": 0.1, "beta": 0.9, "gamma": 0.1}, "non-stationary GARCH: alpha + beta + gamma/2 = 1.05 >= 1"),
    ({"annual_vol": -0.2}, "a variance cannot be negative"),
    ({"alpha": -0.1}, "can turn negative"),
    ({"frequencies": ["1D", "7x"]}, "bad frequency '7x'"),
    ({"frequencies": ["3h"], "sessions": ["09:30-11:30", "13:00-15:00"]}, "longer than its shortest session"),
    ({"nu": 2.0}, "no finite variance"),
    ({"sessions": ["13:00-11:00"]}, "must start before it ends"),
    ({"split": "test"}, "split 'test' is not one of pretrain, heldout"),
])
def test_an_impossible_market_spec_is_one_line_and_exit_2(tmp_path, capsys, market, words):
    spec = tmp_path / "markets.json"
    spec.write_text(json.dumps({"markets": [{"name": "X", **market}]}))
    code, err = run_in_process("make_market.py", ["--out", str(tmp_path / "c"), "--spec", str(spec)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert "markets.json: market X: " in err and not (tmp_path / "c").exists()


def test_bad_options_of_make_market_are_one_line(tmp_path, capsys):
    for argv, words in ((["--markets", "NOPE"], "no market NOPE"), (["--frequencies", "0min"], "bad frequency"),
                        (["--start", "someday"], "is not a date")):
        code, err = run_in_process("make_market.py", ["--out", str(tmp_path / "c"), *argv], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


@pytest.mark.processes
def test_make_market_writes_a_corpus_the_store_prepares(tmp_path):
    corpus, store = tmp_path / "corpus", tmp_path / "store"
    made = run_job("make_market.py", ["--out", str(corpus), "--markets", "ALPHA,DELTA", "--frequencies", "1D,5min",
                                      "--symbols", "6", "--days", "30", "--symbols_per_file", "4"], timeout=120)
    assert made.returncode == 0, made.stderr
    assert "held out: DELTA" in made.stdout and "bars/s" in made.stdout
    prepared = run_job("prepare_data.py", ["--parquet", str(corpus / "ALPHA" / "5min"), "--split", "0.8,0.1,0.1",
                                           "--lookback", "48", "--predict", "12", "--out", str(store)], timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    index = json.loads((store / "store.json").read_text())
    symbols = sorted(s for e in index["shards"] for s in e["symbols"])
    assert index["freq"] == "5min" and index["fields"][-1] == "amount"
    listed = json.loads((corpus / "ALPHA" / "5min" / "symbols.json").read_text())["symbols"]
    assert set(symbols) <= set(listed) and len(symbols) >= 4  # a late listing may be too short for a window
    assert not error_lines(prepared)
    # The store evaluated with the corpus's oracle as a row (random-weight tiny models: only the plumbing counts).
    evaluated = run_job("evaluate.py", ["--data", str(store), "--tokenizer", "tiny", "--predictor", "tiny", "--out",
                                        str(tmp_path / "eval"), "--oracle", str(corpus), "--sample_count", "4",
                                        "--max_origins_per_symbol", "2", "--baselines", "ewma", "--threads", "1"],
                        timeout=180, OMP_NUM_THREADS="1")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rows = report["probabilistic"]["rows"]
    assert {"model", "random_walk", "ewma", "oracle"} <= set(rows) and list(rows["oracle"]["features"]) == ["close"]
    crps = {name: rows[name]["features"]["close"]["crps"]["normalised"]["mean"] for name in rows}
    assert report["oracle"]["gap_closed"] == pytest.approx(
        (crps["random_walk"] - crps["model"]) / (crps["random_walk"] - crps["oracle"]))
    assert "oracle" in report["tests"]["crps"]["diebold_mariano"] and "oracle" in report["volatility"]["rows"]
    assert "gap closed by the model" in evaluated.stdout
