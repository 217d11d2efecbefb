"""Window Dataset and sharded sampler: normalisation, symbol boundaries, disjoint exact coverage, resumption."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import DEMO_LOOKBACK, DEMO_PREDICT
from ds_kronos.data import PreparedDataset, ShardedWindowSampler, WindowDataset

torch.set_num_threads(1)
T = DEMO_LOOKBACK + DEMO_PREDICT + 1


@pytest.fixture(scope="module")
def prepared(demo_prepared_dir) -> PreparedDataset:
    return PreparedDataset.open(demo_prepared_dir)


def _reference_window(values: np.ndarray, start: int, lookback: int, clip: float = 5.0) -> np.ndarray:
    raw = np.asarray(values[start:start + T], dtype=np.float32)
    past = raw[:lookback]
    x = (raw - past.mean(axis=0)) / (past.std(axis=0) + 1e-5)
    return np.clip(x, -clip, clip)


def test_normalisation_matches_numpy(prepared):
    ds = WindowDataset(prepared, "train", seed=3)
    ids = ds.epoch_window_ids(0)[:50]
    starts = ds.window_starts(ids)
    x, stamp = ds.get_batch(list(range(50)))
    assert x.shape == (50, T, 6) and x.dtype == torch.float32 and stamp.shape == (50, T, 5)
    for k, start in enumerate(starts):
        np.testing.assert_allclose(x[k].numpy(), _reference_window(prepared.train.values, start, DEMO_LOOKBACK),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(stamp[k].numpy(), prepared.train.time_features[start:start + T])
    # Only the lookback part sets the statistics: it has mean ~0 per column, the whole window does not have to.
    past = x[:, :DEMO_LOOKBACK].numpy()
    unclipped = np.abs(past).max(axis=1) < 5
    assert np.allclose(past.mean(axis=1)[unclipped], 0, atol=1e-4)
    single_x, single_stamp = ds[7]
    torch.testing.assert_close(single_x, x[7])
    assert ds.clip == 5.0 and float(x.abs().max()) <= 5.0


def test_windows_never_cross_symbols(prepared):
    ds = WindowDataset(prepared, "train")
    arrays = prepared.train
    assert ds.num_windows == sum(max(0, n - T + 1) for n in arrays.lengths)
    starts = ds.window_starts(np.arange(ds.num_windows))
    symbol = np.searchsorted(arrays.offsets, starts, side="right") - 1
    assert np.all(starts + T <= arrays.offsets[symbol + 1])
    # All windows are distinct and every row that can start a window does.
    assert len(np.unique(starts)) == ds.num_windows
    last_of_first_symbol = arrays.offsets[1] - T
    assert last_of_first_symbol in starts and last_of_first_symbol + 1 not in starts


def test_epoch_samples_are_seeded_and_capped(prepared):
    ds = WindowDataset(prepared, "train", max_samples=500, seed=1)
    assert len(ds) == 500
    e0, e1 = ds.epoch_window_ids(0), ds.epoch_window_ids(1)
    assert len(np.unique(e0)) == 500 and not np.array_equal(e0, e1)
    again = WindowDataset(prepared, "train", max_samples=500, seed=1)
    np.testing.assert_array_equal(again.epoch_window_ids(1), e1)
    other_seed = WindowDataset(prepared, "train", max_samples=500, seed=2)
    assert not np.array_equal(other_seed.epoch_window_ids(0), e0)
    val = WindowDataset(prepared, "val", max_samples=100, shuffle=False)
    np.testing.assert_array_equal(val.epoch_window_ids(0), val.epoch_window_ids(5))
    assert np.all(np.diff(val.epoch_window_ids(0)) > 0)
    full_val = WindowDataset(prepared, "val", shuffle=False)
    np.testing.assert_array_equal(full_val.epoch_window_ids(3), np.arange(full_val.num_windows))
    # Plain integer indices follow set_epoch.
    ds.set_epoch(1)
    torch.testing.assert_close(ds[0][0], ds.get_batch([(1, 0)])[0][0])


def _fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()


def _load(ds, sampler, batch_size, drop_last, workers=2):
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=workers,
                        persistent_workers=False)
    return [(x, stamp) for x, stamp in loader]


def test_two_ranks_two_workers_cover_the_epoch_exactly_once(prepared):
    batch, world = 16, 2
    ds = WindowDataset(prepared, "train", max_samples=300, seed=11)
    used = 300 // (batch * world) * batch * world  # 288: the remainder is dropped
    seen, per_rank_batches = [], []
    for rank in range(world):
        sampler = ShardedWindowSampler(len(ds), rank=rank, world_size=world, batch_size=batch, drop_last=True)
        sampler.set_epoch(2)
        batches = _load(ds, sampler, batch, True)
        per_rank_batches.append(len(batches))
        expected_positions = [p for _, p in sampler]
        expected_x, _ = ds.get_batch([(2, p) for p in expected_positions])
        got = torch.cat([x for x, _ in batches])
        torch.testing.assert_close(got, expected_x)  # workers returned exactly the sampler's samples, in order
        seen += [_fingerprint(x) for x in got]
    assert per_rank_batches == [used // (batch * world)] * world
    assert len(seen) == used and len(set(seen)) == used  # disjoint across ranks and workers, no repeats
    all_x, _ = ds.get_batch([(2, p) for p in range(used)])
    assert set(seen) == {_fingerprint(x) for x in all_x}  # exactly the epoch's first `used` samples


def test_validation_without_drop_last_covers_everything(prepared):
    ds = WindowDataset(prepared, "val", max_samples=101, shuffle=False)
    positions = []
    counts = []
    for rank in range(3):
        sampler = ShardedWindowSampler(len(ds), rank=rank, world_size=3, batch_size=8, drop_last=False)
        ranked = [p for _, p in sampler]
        counts.append(len(ranked))
        positions += ranked
        assert len(sampler) == len(ranked) and sampler.batches_per_epoch() == -(-len(ranked) // 8)
    assert sorted(positions) == list(range(101)) and counts == [34, 34, 33]


def test_restart_and_start_batch_reproduce_the_sequence(prepared):
    def run(start_batch=None):
        ds = WindowDataset(prepared, "train", max_samples=256, seed=4)
        sampler = ShardedWindowSampler(len(ds), rank=1, world_size=2, batch_size=8, drop_last=True)
        sampler.set_epoch(3)
        if start_batch is not None:
            sampler.set_start_batch(start_batch)
        return _load(ds, sampler, 8, True)

    full = run()
    restarted = run()
    assert len(full) == 16
    for (a, sa), (b, sb) in zip(full, restarted):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(sa, sb)
    tail = run(start_batch=5)
    assert len(tail) == len(full) - 5
    for (a, _), (b, _) in zip(full[5:], tail):
        torch.testing.assert_close(a, b)
    # set_epoch starts the next epoch from its beginning again.
    sampler = ShardedWindowSampler(256, rank=0, world_size=2, batch_size=8)
    sampler.set_start_batch(3)
    sampler.set_epoch(4)
    assert len(sampler) == 128


def test_set_epoch_reaches_fresh_workers_with_integer_indices(prepared):
    ds = WindowDataset(prepared, "train", max_samples=64, seed=9)
    loader = DataLoader(ds, batch_size=32, shuffle=False, num_workers=2, persistent_workers=False)
    per_epoch = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        per_epoch.append(torch.cat([x for x, _ in loader]))
    expected, _ = ds.get_batch([(1, p) for p in range(64)])
    torch.testing.assert_close(per_epoch[1], expected)
    assert not torch.equal(per_epoch[0], per_epoch[1])


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ShardedWindowSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError):
        ShardedWindowSampler(10, batch_size=0)
