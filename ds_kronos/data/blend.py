"""Windows of several sources in one dataset: an exact weighted blend for training, and the sources side by side
for validation (so each source's loss can be reported).

**Blend** (exact as Megatron-LM's blended datasets, by a rule that keeps the bound for any number of sources; see
:func:`blend_period`): at every prefix of an epoch each source's count is within one sample of
``weight * prefix``. With the weights as exact fractions ``a_k / P`` (sum of a_k = P)
the sequence repeats every P positions (after P samples every count is exactly a_k), so one period is computed
once (``P <= MAX_PERIOD``) and any position is located from it: O(P) memory, whatever the epoch's length. The j-th
sample a source gives in an epoch is position j of that source's own :class:`WindowDataset` epoch (its draw of
``min(n_k, windows)`` windows from ``default_rng([seed, epoch])``; a source that must give more samples than it has
windows goes through several of its epochs in turn). So a sample is a pure function of (seed, epoch, position),
as for one source, and a blend of a single source is exactly that source's :class:`WindowDataset`.

**Side by side** (:class:`SourceWindows`): the sources' windows one after another, source k at positions
``ranges[k]``; ``source_ids(positions)`` says which source each position belongs to.

Both take the ``(epoch, position)`` indices of :class:`ds_kronos.data.ShardedWindowSampler` (or plain positions) and
fetch a batch with one vectorised read per source.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from ds_kronos.data.prepared import PreparedDataset
from ds_kronos.data.windows import BatchedWindows, Index, WindowDataset, epochs_and_positions
from ds_kronos.errors import ConfigError

MAX_PERIOD = 1 << 16
"""Longest blend period: weights whose exact fractions need a longer one are rounded to multiples of 1/MAX_PERIOD
(largest remainders, so they still sum to 1): a share then differs from the weight given by < 2e-5."""


def period_weights(weights: Sequence[float | str | Fraction]) -> tuple[np.ndarray, int]:
    """The weights as integer counts per period: (a [sources] int64, P) with a.sum() == P and a_k / P the k-th
    normalised weight (exactly, or to 1/MAX_PERIOD). Decimal weights stay exact: 0.7 is 7/10, not a binary float."""
    if not weights:
        raise ConfigError("a blend needs at least one source")
    exact = [w if isinstance(w, Fraction) else Fraction(str(w)) for w in weights]
    if min(exact) <= 0:
        raise ConfigError(f"every weight must be positive, got {', '.join(str(float(w)) for w in exact)}")
    total = sum(exact)
    shares = [w / total for w in exact]
    period = math.lcm(*(s.denominator for s in shares))
    if period <= MAX_PERIOD:
        return np.array([int(s * period) for s in shares], dtype=np.int64), period
    scaled = [s * MAX_PERIOD for s in shares]
    counts = [int(x) for x in scaled]  # floor; the remainder goes to the largest fractional parts
    for k in sorted(range(len(scaled)), key=lambda k: (counts[k] - scaled[k], k))[:MAX_PERIOD - sum(counts)]:
        counts[k] += 1
    if min(counts) == 0:
        raise ConfigError(f"a weight is below 1/{MAX_PERIOD} of the total: shares this small cannot be blended")
    divisor = math.gcd(*counts)
    return np.array(counts, dtype=np.int64) // divisor, MAX_PERIOD // divisor


def blend_period(counts: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """One period of the blend: (source of each position, that sample's number within its source), each [period].

    Tijdeman's rule for the chairman assignment problem: with N sources and s = 1 - 1/(2N - 2), source k's sample
    number m (from 0) may go at step t (from 1) once m + 1 - w_k t <= s and is due by (m + s) / w_k; each step takes
    the released sample due first (ties: the first source). Every count then stays within s < 1 of ``w_k t``.
    (Megatron's rule, the source lagging most, lets one lag by more than a sample with six or more sources.)
    Integer arithmetic throughout (scaled by ``period * (2N - 2)``): no floating-point tie decides a position."""
    steps = [int(c) for c in counts]
    sources = len(steps)
    source = np.zeros(period, dtype=np.int64)
    number = np.arange(period, dtype=np.int64)
    if sources == 1:
        return source, number
    d = 2 * sources - 2  # s = (d - 1) / d
    taken = [0] * sources
    for t in range(1, period + 1):
        best = -1
        for k in range(sources):
            if period * (d * taken[k] + 1) > d * steps[k] * t:  # not released yet
                continue
            # due (taken + s) / w_k: compare (d * taken + d - 1) / a_k across sources by cross-multiplying
            if best < 0 or (d * taken[k] + d - 1) * steps[best] < (d * taken[best] + d - 1) * steps[k]:
                best = k
        if best < 0:
            raise AssertionError(f"blend step {t}: no source may give a sample (counts {steps}, period {period})")
        source[t - 1], number[t - 1] = best, taken[best]
        taken[best] += 1
    if taken != steps:  # every count is within one sample of its share, so a whole period gives it exactly
        raise AssertionError(f"blend period ended with counts {taken}, expected {steps}")
    return source, number


class _Sources(BatchedWindows):
    """What both ways of serving several sources share: locating positions in the sources and batched reads."""

    parts: list[WindowDataset]

    def _init_parts(self, parts: list[WindowDataset]) -> None:
        if not parts:
            raise ConfigError("no source to read windows from")
        windows = {p.window for p in parts}
        if len(windows) != 1 or len({p.lookback for p in parts}) != 1:
            raise ConfigError(f"sources cut windows of different lengths: "
                              f"{', '.join(f'{p.lookback}+{p.predict}+1' for p in parts)}")
        self.parts = parts
        self.lookback, self.predict, self.window = parts[0].lookback, parts[0].predict, parts[0].window
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (as :meth:`WindowDataset.set_epoch`)."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def _split_indices(self, indices: Sequence[Index]) -> tuple[np.ndarray, np.ndarray]:
        epochs, positions = epochs_and_positions(indices, self._epoch)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.num_samples):
            raise IndexError(f"position out of range 0..{self.num_samples - 1}")
        return epochs, positions

    def locate(self, epochs: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source, that source's epoch, position in that source's epoch) of each index."""
        raise NotImplementedError

    def source_ids(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The source (index into ``parts``) of each position."""
        positions = np.asarray(positions, dtype=np.int64)
        return self.locate(np.zeros_like(positions), positions)[0]

    def get_batch(self, indices: Sequence[Index]) -> tuple[torch.Tensor, torch.Tensor]:
        """x float32 [B, T, 6], stamp float32 [B, T, 5], as :meth:`WindowDataset.get_batch`."""
        source, epochs, positions = self.locate(*self._split_indices(indices))
        x = stamp = None
        for k in np.unique(source):
            mask = source == k
            part = self.parts[int(k)]
            ids = part.epoch_ids_of(epochs[mask], positions[mask])
            bx, bstamp = part.windows(part.window_starts(ids))
            if x is None:
                x = torch.empty((len(source), *bx.shape[1:]), dtype=bx.dtype)
                stamp = torch.empty((len(source), *bstamp.shape[1:]), dtype=bstamp.dtype)
            where = torch.from_numpy(np.flatnonzero(mask))
            x[where], stamp[where] = bx, bstamp
        if x is None:
            return (torch.empty((0, self.window, 6)), torch.empty((0, self.window, 5)))
        return x, stamp


class BlendedWindowDataset(_Sources):
    """Training windows of split ``split`` of ``sources`` (opened datasets) blended with ``weights``:
    ``num_samples`` positions per epoch (default: as many as the sources give before the first would repeat a
    window). ``window_options`` (lookback, predict, seed, clip) are :class:`WindowDataset`'s, the same for every
    source."""

    def __init__(self, sources: Sequence[PreparedDataset], weights: Sequence[float | str | Fraction], split: str, *,
                 num_samples: int | None = None, **window_options):
        if len(weights) != len(sources):
            raise ConfigError(f"{len(sources)} sources but {len(weights)} weights")
        self.counts, self.period = period_weights(weights)
        self._source, self._number = blend_period(self.counts, self.period)
        self.weights = self.counts / self.period
        windows = np.array([WindowDataset(s, split, **window_options).num_windows for s in sources], dtype=np.int64)
        self.num_samples = self._first_repeat(windows) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ConfigError(f"a blend needs at least one sample per epoch, got {self.num_samples}")
        self.source_samples = self.samples_before(self.num_samples)
        """Samples each source gives per epoch."""
        # A source draws min(its samples, its windows) windows per epoch of its own and goes through `passes` of them.
        self._draw = np.maximum(np.minimum(self.source_samples, windows), 1)
        self.passes = -(-self.source_samples // self._draw)
        self._init_parts([WindowDataset(s, split, max_samples=int(d), **window_options)
                          for s, d in zip(sources, self._draw)])
        self.num_windows = int(windows.sum())

    def samples_before(self, position: int) -> np.ndarray:
        """How many of positions 0 .. position - 1 each source gives."""
        whole, rest = divmod(int(position), self.period)
        return whole * self.counts + np.bincount(self._source[:rest], minlength=len(self.counts))

    def _first_repeat(self, windows: np.ndarray) -> int:
        # Source k's sample number windows[k] (its first repeat) sits at this position; the epoch ends before the first.
        first = []
        for k, w in enumerate(windows):
            whole, rest = divmod(int(w), int(self.counts[k]))
            first.append(whole * self.period + int(np.flatnonzero(self._source == k)[rest]))
        return min(first)

    def locate(self, epochs: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        whole, rest = np.divmod(positions, self.period)
        source = self._source[rest]
        number = whole * self.counts[source] + self._number[rest]  # the sample's number within its source's epoch
        draw = self._draw[source]
        return source, epochs * self.passes[source] + number // draw, number % draw

    def sources(self) -> list[dict]:
        """Per source: its weight in force, windows, samples per epoch and passes over its drawn windows."""
        return [{"weight": float(w), "windows": int(p.num_windows), "train_samples": int(n), "passes": int(r)}
                for w, p, n, r in zip(self.weights, self.parts, self.source_samples, self.passes)]


class SourceWindows(_Sources):
    """The windows of split ``split`` of ``sources`` one after another, each source's as its own
    :class:`WindowDataset` with ``window_options`` (max_samples is per source): source k holds positions
    ``ranges[k]`` (for validation, where each source's loss is reported)."""

    def __init__(self, sources: Sequence[PreparedDataset], split: str, **window_options):
        self._init_parts([WindowDataset(s, split, **window_options) for s in sources])
        sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.ranges = [range(int(a), int(b)) for a, b in zip(self._starts[:-1], self._starts[1:])]
        self.num_samples = int(self._starts[-1])
        self.num_windows = int(sum(p.num_windows for p in self.parts))

    def locate(self, epochs: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.searchsorted(self._starts, positions, side="right") - 1
        return source, epochs, positions - self._starts[source]
