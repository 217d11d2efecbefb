"""Mixtures of sources: the blend's shares are exact at every prefix of an epoch, each sample is a pure function of
(seed, epoch, position), a blend of one source is that source's windows, validation keeps the sources apart, and
bad --data specs are one line."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from test_data_store import LOOKBACK, PREDICT, RANGES, market, write_csv

from ds_kronos.data import PrepareConfig, ShardedWindowSampler, WindowDataset, prepare_dataset
from ds_kronos.data.blend import MAX_PERIOD, BlendedWindowDataset, SourceWindows, blend_period, period_weights
from ds_kronos.data.sources import data_spec_problems, open_sources, parse_data_spec
from ds_kronos.errors import ConfigError

SEED = 7


def _prepare(root, name: str, symbols: int, seed: int, lookback: int = LOOKBACK) -> str:
    csv = write_csv(market(symbols=symbols, seed=seed), root / f"{name}-csv")
    out = root / name
    prepare_dataset(PrepareConfig(csv=csv, out=str(out), lookback=lookback, predict=PREDICT, **RANGES),
                    log=lambda line: None)
    return str(out)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    return {"a": _prepare(root, "a", 6, 0), "b": _prepare(root, "b", 3, 1), "c": _prepare(root, "c", 4, 2),
            "short": _prepare(root, "short", 3, 3, lookback=LOOKBACK - 5)}


def _max_lag(counts: np.ndarray, period: int, source: np.ndarray) -> float:
    taken = np.zeros((len(source), len(counts)))
    taken[np.arange(len(source)), source] = 1
    return float(np.abs(np.cumsum(taken, axis=0) - np.outer(np.arange(1, len(source) + 1), counts / period)).max())


def test_every_prefix_is_within_one_sample_of_the_weights():
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = [round(float(w), int(rng.integers(1, 4))) or 0.5 for w in rng.uniform(0.01, 1, rng.integers(1, 9))]
        counts, period = period_weights(weights)
        source, number = blend_period(counts, period)
        assert counts.sum() == period and _max_lag(counts, period, source) < 1, weights
        for k in range(len(counts)):  # each source's samples are numbered 0, 1, ... in order
            np.testing.assert_array_equal(number[source == k], np.arange(counts[k]))
    # Megatron's rule (the most lagging source next) lets a source fall 1.04 samples behind with these weights.
    counts, period = period_weights([0.18, 0.85, 0.89, 0.085, 0.019, 0.3])
    assert _max_lag(counts, period, blend_period(counts, period)[0]) < 1
    # Decimal weights are exact fractions; weights that need a longer period are rounded to 1/MAX_PERIOD.
    assert period_weights(["0.7", 0.3]) == (pytest.approx(np.array([7, 3])), 10)
    assert period_weights([Fraction(1, 3), 1])[1] == 4
    counts, period = period_weights([0.1234567, 0.2, 0.6765433])
    assert period == MAX_PERIOD and counts.sum() == MAX_PERIOD
    np.testing.assert_allclose(counts / period, [0.1234567, 0.2, 0.6765433], atol=1 / MAX_PERIOD)


def test_blend_shares_and_samples_are_pure_functions_of_seed_epoch_and_position(stores):
    sources = open_sources(f"{stores['a']}:0.7,{stores['b']}:0.2,{stores['c']}:0.1")
    build = lambda: BlendedWindowDataset([s.dataset for s in sources], [s.exact_weight for s in sources],  # noqa: E731
                                         "train", num_samples=500, seed=SEED)
    blend = build()
    ids = blend.source_ids(np.arange(len(blend)))
    assert _max_lag(blend.counts, blend.period, ids) < 1  # exact at every prefix of the epoch itself
    np.testing.assert_array_equal(np.bincount(ids, minlength=3), blend.source_samples)
    assert blend.source_samples.tolist() == [350, 100, 50]
    x1, s1 = blend.get_batch([(3, p) for p in range(len(blend))])
    # Another process (a fresh dataset), another order, a subset, plain indices after set_epoch: the same samples.
    other = build()
    order = np.random.default_rng(1).permutation(len(blend))[:64]
    x2, s2 = other.get_batch([(3, int(p)) for p in order])
    torch.testing.assert_close(x2, x1[order], rtol=0, atol=0)
    torch.testing.assert_close(s2, s1[order], rtol=0, atol=0)
    other.set_epoch(3)
    torch.testing.assert_close(other[int(order[0])][0], x1[order[0]], rtol=0, atol=0)
    assert not torch.equal(blend.get_batch([(4, p) for p in range(64)])[0], x1[:64])  # another epoch, another draw
    # Each sample is its source's window: the source's own dataset at the located (epoch, position).
    source, epochs, positions = blend.locate(np.full(len(blend), 3), np.arange(len(blend)))
    for k in range(3):
        mask = source == k
        own = WindowDataset(sources[k].dataset, "train", seed=SEED, max_samples=int(blend._draw[k]))
        x, _ = own.get_batch(list(zip(epochs[mask].tolist(), positions[mask].tolist())))
        torch.testing.assert_close(x, x1[torch.from_numpy(np.flatnonzero(mask))], rtol=0, atol=0)
    # An epoch of 1e8 samples costs no memory of its own (one period of 10 positions) and reads at its far end.
    huge = BlendedWindowDataset([s.dataset for s in sources], ["0.7", "0.2", "0.1"], "train", num_samples=10**8,
                                seed=SEED)
    assert huge.period == 10 and huge.source_samples.tolist() == [7 * 10**7, 2 * 10**7, 10**7]
    assert huge.get_batch([(0, 10**8 - 1), (5, 10**8 - 2)])[0].shape == (2, blend.window, 6)
    # Any number of ranks together serve exactly the epoch's samples (the sampler deals positions).
    dealt = sorted(p for r in range(3) for _, p in _rank_positions(len(blend), r, 3))
    assert dealt == list(range(len(blend) // 3 * 3))


def _rank_positions(n: int, rank: int, world: int):
    sampler = ShardedWindowSampler(n, rank=rank, world_size=world, batch_size=1, drop_last=True)
    sampler.set_epoch(3)
    return list(sampler)


def test_a_small_source_is_repeated_and_the_default_epoch_repeats_none(stores):
    sources = open_sources(f"{stores['a']},{stores['b']}")  # equal shares; b has fewer windows than a
    datasets = [s.dataset for s in sources]
    windows = [WindowDataset(d, "train").num_windows for d in datasets]
    assert windows[1] < windows[0]
    blend = BlendedWindowDataset(datasets, [s.exact_weight for s in sources], "train", seed=SEED)
    # Default epoch: until the smaller source would repeat a window; every sample distinct.
    assert blend.source_samples[1] == windows[1] and abs(blend.source_samples[0] - windows[1]) <= 1
    assert blend.passes.tolist() == [1, 1]
    _, epochs, positions = blend.locate(np.zeros(len(blend), np.int64), np.arange(len(blend)))
    ids = blend.source_ids(np.arange(len(blend)))
    for k in range(2):
        starts = blend.parts[k].window_starts(blend.parts[k].epoch_ids_of(epochs[ids == k], positions[ids == k]))
        assert len(np.unique(starts)) == (ids == k).sum()
    # A longer epoch goes through the small source's windows again, in a new order each pass.
    long = BlendedWindowDataset(datasets, [1, 1], "train", seed=SEED, num_samples=4 * windows[1])
    assert long.passes.tolist() == [1 + (windows[0] < 2 * windows[1]), 2]
    assert long.source_samples.tolist() == [2 * windows[1]] * 2
    src, ep, pos = long.locate(np.zeros(len(long), np.int64), np.arange(len(long)))
    small = long.parts[1].window_starts(long.parts[1].epoch_ids_of(ep[src == 1], pos[src == 1]))
    assert sorted(small[:windows[1]]) == sorted(small[windows[1]:]) and list(small[:5]) != list(small[windows[1]:][:5])
    assert long.sources()[1] == {"weight": 0.5, "windows": windows[1], "train_samples": 2 * windows[1], "passes": 2}


def test_a_blend_of_one_source_is_that_sources_windows(stores):
    source = open_sources(stores["a"])
    assert [s.weight for s in source] == [1.0]
    plain = WindowDataset(source[0].dataset, "train", seed=SEED, max_samples=120)
    blend = BlendedWindowDataset([source[0].dataset], [1], "train", seed=SEED, num_samples=120)
    indices = [(2, p) for p in range(120)]
    for u, v in zip(plain.get_batch(indices), blend.get_batch(indices)):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_validation_keeps_each_sources_windows_and_says_whose_they_are(stores):
    sources = open_sources(f"{stores['a']}:3,{stores['b']}:1")
    val = SourceWindows([s.dataset for s in sources], "val", max_samples=40, seed=SEED, shuffle=False)
    own = [WindowDataset(s.dataset, "val", max_samples=40, seed=SEED, shuffle=False) for s in sources]
    assert [len(r) for r in val.ranges] == [len(d) for d in own] and len(val) == sum(len(d) for d in own)
    assert val.ranges[0].start == 0 and val.ranges[1].start == val.ranges[0].stop
    ids = val.source_ids(np.arange(len(val)))
    for k, d in enumerate(own):
        assert (ids[val.ranges[k].start:val.ranges[k].stop] == k).all()
        x, _ = val.get_batch(list(val.ranges[k]))
        torch.testing.assert_close(x, d.get_batch(list(range(len(d))))[0], rtol=0, atol=0)


def test_bad_specs_are_one_line(stores, tmp_path):
    a, b = stores["a"], stores["b"]
    assert [(s.path, s.weight) for s in parse_data_spec(f"{a}:0.7, {b}:0.3")] == [(a, Fraction(7, 10)),
                                                                              (b, Fraction(3, 10))]
    assert [s.weight for s in parse_data_spec(f"{a},{b}")] == [None, None]
    bad = {f"{a}:0.7,{b}:0": f"the weight of {b} is 0; weights must be positive",
           f"{a}:-1,{b}:1": f"the weight of {a} is -1",
           f"{a}:0.7,{b}": f"{b} has no weight; give every source a weight, or none",
           f"{a},,{b}": "an empty entry",
           f"{a}:1,{a}/:2": f"{a}/ names the same data as {a}",
           "": "--data is required"}
    for spec, message in bad.items():
        with pytest.raises(ConfigError, match="^[^\n]*" + message.replace("/", "/").replace("(", r"\(")):
            parse_data_spec(spec)
    missing = str(tmp_path / "gone")
    assert data_spec_problems(f"{a}:0.5,{missing}:0.5") == [f"--data {missing}: no such folder (a prepared "
                                                           f"dataset or store)"]
    problems = data_spec_problems(f"{a}:0.5,{stores['short']}:0.5")
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith(f"--data: {stores['short']} has lookback {LOOKBACK - 5} but {a} has {LOOKBACK}")
    assert data_spec_problems(f"{a}:0.5,{b}:0.5") == []
    with pytest.raises(ConfigError, match="every weight must be positive"):
        period_weights([1, 0])
