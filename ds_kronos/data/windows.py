"""Training windows over a prepared split, and a sampler that shards them across ranks without repeats.

A window is ``lookback + predict + 1`` consecutive bars of one symbol (never across symbols). Window ids number
all windows of the split, symbol by symbol. Each epoch uses ``num_samples`` of them: a sample of window ids
without replacement drawn from ``np.random.default_rng([seed, epoch])`` (with ``shuffle=False``: a fixed sorted
subset, or all windows in order when there are no more than ``max_samples``). Position ``i`` of the epoch maps to
one window, so a sample is a pure function of (seed, epoch, i), whichever process computes it.

Use with :class:`ShardedWindowSampler`, which yields ``(epoch, position)`` pairs: each rank gets a disjoint
share, the DataLoader hands disjoint batches to its workers, and because the epoch travels with the index,
workers need no state from the main process (works with ``persistent_workers`` True or False). Plain integer
indices use the epoch set by :meth:`WindowDataset.set_epoch` in the main process; then keep
``persistent_workers=False`` so workers are re-created (and see the new epoch) every epoch.

Normalisation follows upstream Kronos (:func:`ds_kronos.data.normalise.normalise_windows`) over the first
``lookback`` rows of each window.

Typical training loop::

    ds = WindowDataset(PreparedDataset.open(path), "train", max_samples=n_train_iter, seed=seed)
    sampler = ShardedWindowSampler(len(ds), rank=rank, world_size=world, batch_size=64, drop_last=True)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, drop_last=True, num_workers=2)
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        if epoch == start_epoch:
            sampler.set_start_batch(batches_done_in_that_epoch)  # resume mid-epoch
        for x, stamp in loader: ...
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ds_kronos.data.normalise import DEFAULT_CLIP, normalise_windows
from ds_kronos.data.prepared import PreparedDataset, SplitArrays
from ds_kronos.errors import DataError

Index = int | tuple[int, int]


def epochs_and_positions(indices: Sequence[Index], epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's indices as (epoch, position) arrays: the sampler's ``(epoch, position)`` pairs, or plain positions
    of ``epoch``."""
    epochs = np.empty(len(indices), dtype=np.int64)
    positions = np.empty(len(indices), dtype=np.int64)
    for k, index in enumerate(indices):
        epochs[k], positions[k] = index if isinstance(index, tuple) else (epoch, index)
    return epochs, positions


class BatchedWindows(Dataset):
    """A dataset whose reads all go through ``get_batch`` (one vectorised read per batch of indices)."""

    def get_batch(self, indices: Sequence[Index]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: Index) -> tuple[torch.Tensor, torch.Tensor]:
        x, stamp = self.get_batch([index])
        return x[0], stamp[0]

    def __getitems__(self, indices: Sequence[Index]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # The DataLoader's fetcher calls this with a whole batch of indices: one vectorised read instead of B.
        x, stamp = self.get_batch(indices)
        return list(zip(x.unbind(0), stamp.unbind(0)))


class WindowDataset(BatchedWindows):
    """Normalised windows of one split: item ``(x float32 [T, 6], stamp float32 [T, 5])``, T = window length."""

    def __init__(self, prepared: PreparedDataset, split: str, *, lookback: int | None = None,
                 predict: int | None = None, max_samples: int | None = None, seed: int = 0, shuffle: bool = True,
                 clip: float = DEFAULT_CLIP):
        self.arrays: SplitArrays = prepared.split(split)
        self.split = split
        self.lookback = prepared.lookback if lookback is None else int(lookback)
        self.predict = prepared.predict if predict is None else int(predict)
        self.window = self.lookback + self.predict + 1
        self.seed, self.shuffle, self.clip = int(seed), bool(shuffle), float(clip)
        lengths = self.arrays.lengths.astype(np.int64)
        per_symbol = np.maximum(lengths - self.window + 1, 0)
        # Window id w belongs to the symbol s with first_id[s] <= w < first_id[s + 1]; O(symbols) memory.
        self._first_id = np.concatenate([[0], np.cumsum(per_symbol)]).astype(np.int64)
        self._row0 = self.arrays.offsets[:-1].astype(np.int64)
        self.num_windows = int(self._first_id[-1])
        if self.num_windows == 0:
            raise DataError(f"{prepared.path}: split {split!r} has no window of {self.window} bars")
        self.num_samples = self.num_windows if max_samples is None else min(int(max_samples), self.num_windows)
        self._offsets_t = np.arange(self.window, dtype=np.int64)
        self._epoch = 0
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (call in the main process before creating the iterator)."""
        self._epoch = int(epoch)

    def epoch_window_ids(self, epoch: int) -> np.ndarray:
        """The window ids of an epoch, in sample order (length ``num_samples``)."""
        key = int(epoch) if self.shuffle else 0
        if key not in self._cache:
            if not self.shuffle and self.num_samples == self.num_windows:
                ids = np.arange(self.num_windows, dtype=np.int64)
            else:
                rng = np.random.default_rng([self.seed, key])
                ids = rng.choice(self.num_windows, size=self.num_samples, replace=False).astype(np.int64)
                if not self.shuffle:
                    ids.sort()
            self._cache = {key: ids}  # one epoch at a time is all a worker needs
        return self._cache[key]

    def window_starts(self, window_ids: np.ndarray) -> np.ndarray:
        """First row (into the split's arrays) of each window id."""
        ids = np.asarray(window_ids, dtype=np.int64)
        symbol = np.searchsorted(self._first_id, ids, side="right") - 1
        return self._row0[symbol] + (ids - self._first_id[symbol])

    def _ids(self, indices: Sequence[Index]) -> np.ndarray:
        return self.epoch_ids_of(*epochs_and_positions(indices, self._epoch))

    def epoch_ids_of(self, epochs: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The window id at each (epoch, position) pair."""
        if len(positions) and (positions.min() < 0 or positions.max() >= self.num_samples):
            raise IndexError(f"window position out of range 0..{self.num_samples - 1}")
        ids = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            ids[mask] = self.epoch_window_ids(int(epoch))[positions[mask]]
        return ids

    def get_batch(self, indices: Sequence[Index]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched fetch with numpy fancy indexing: x float32 [B, T, 6], stamp float32 [B, T, 5]."""
        return self.windows(self.window_starts(self._ids(indices)))

    def windows(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised windows beginning at the given rows (the split must hold ``window`` rows from each)."""
        rows = np.asarray(starts, dtype=np.int64)[:, None] + self._offsets_t
        raw = np.asarray(self.arrays.values[rows], dtype=np.float32)
        if not np.isfinite(raw).all():
            # Verified data never gets here; unverified data must not turn NaN into some token in silence.
            row = int(rows.reshape(-1)[np.flatnonzero(~np.isfinite(raw).all(axis=-1).reshape(-1))[0]])
            symbol = int(np.searchsorted(self.arrays.offsets, row, side="right") - 1)
            raise DataError(f"split {self.split!r}, symbol {self.arrays.symbols[symbol]}, row "
                            f"{row - int(self.arrays.offsets[symbol])}: non-finite value in the prepared data "
                            f"(check the folder with ds_kronos.data.verify_prepared)")
        x, _, _ = normalise_windows(raw, self.lookback, self.clip)
        stamp = self.arrays.time_features[rows].astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(stamp)


class ShardedWindowSampler(Sampler[tuple[int, int]]):
    """Deal an epoch's ``num_samples`` positions to ``world_size`` ranks; yields ``(epoch, position)``.

    Rank r gets positions r, r + world_size, r + 2 * world_size, ... With ``drop_last`` every rank gets the same
    whole number of batches (the remainder of the epoch is dropped); without it ranks get all positions and may
    differ by one sample (and so by one batch). ``set_start_batch(k)`` skips this rank's first k batches of the
    current epoch (resume); ``set_epoch`` resets it to 0, so call it after ``set_epoch``.
    """

    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1, batch_size: int = 1,
                 drop_last: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in 0..{world_size - 1}")
        if batch_size < 1 or num_samples < 0:
            raise ValueError(f"batch_size must be >= 1 and num_samples >= 0, got {batch_size}, {num_samples}")
        self.num_samples, self.rank, self.world_size = int(num_samples), int(rank), int(world_size)
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start_batch = int(epoch), 0

    def set_start_batch(self, batch: int) -> None:
        self.start_batch = int(batch)

    def batches_per_epoch(self) -> int:
        """Batches this rank yields over a whole epoch (ignoring the start batch)."""
        n = self._rank_positions().size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _rank_positions(self) -> np.ndarray:
        if self.drop_last:
            per_rank = self.num_samples // (self.world_size * self.batch_size) * self.batch_size
            return np.arange(self.rank, per_rank * self.world_size, self.world_size, dtype=np.int64)
        return np.arange(self.rank, self.num_samples, self.world_size, dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        positions = self._rank_positions()[self.start_batch * self.batch_size:]
        return iter([(self.epoch, int(p)) for p in positions])

    def __len__(self) -> int:
        return max(0, self._rank_positions().size - self.start_batch * self.batch_size)
