"""Validation reduced across ranks: sums of per-sample losses and sample counts, all-reduced with deepspeed.comm.

Summing per-sample losses (rather than averaging per-rank batch means, as upstream's predictor script does) makes
the mean exact when ranks hold different numbers of samples. For the predictor, scoring keeps the dependency layer
causal (as in training): upstream validates in eval mode, where the s2 head at position t can see the context of
t+1, which contains the very s2 token it is scored on. Any sampling (s1 conditioning when teacher forcing is off)
draws from a stream of the validation window's own, stream_seed(seed, VALIDATION_STREAM, its position), so the
number is reproducible, the same on any number of ranks and batch size, and the training RNG stream is left
untouched.

With several sources (a ``--data`` mixture, validated by :class:`ds_kronos.data.blend.SourceWindows`), each
sample's loss is also summed into its source's slot, by the positions the sampler dealt: the per-source sums travel
in the same all-reduce as the total, so they cost no extra host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds_kronos.runtime import Runtime, all_reduce_max, all_reduce_sum, stream_seed

VALIDATION_STREAM = 13
"""Key of the validation windows' sampling streams, stream_seed(seed, VALIDATION_STREAM, position): apart from
training's and forecast validation's streams."""


def sample_keys(seed: int, positions) -> list[int]:
    """The sampling stream of each validation window (positions in the split's fixed order)."""
    return [stream_seed(seed, VALIDATION_STREAM, int(position)) for position in positions]


@dataclass(frozen=True)
class ValidationResult:
    loss: float
    components: tuple[float, ...]
    """The task's other per-sample means (predictor: s1, s2; tokenizer: s1-only recon, bsq)."""
    samples: int
    source_losses: tuple[float | None, ...] = ()
    """Per source of a mixture, its samples' mean loss (None for a source without validation samples); () for one
    source."""


def batch_sums(per_sample: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Sums over the batch of each per-sample value, and the sample count (float64)."""
    count = torch.tensor(float(per_sample[0].numel()), device=per_sample[0].device)
    return torch.stack([t.double().sum() for t in per_sample] + [count.double()])


def source_count(dataset) -> int:
    """Sources whose losses are reported apart: those of a SourceWindows, else none."""
    return len(getattr(dataset, "ranges", ()))


def validate(engine, task, loader, runtime: Runtime, seed: int) -> ValidationResult:
    """Collective: every rank must call it (ranks may hold different numbers of batches, including none).

    Every rank runs the same number of forward passes: under ZeRO-3 a forward gathers parameters, so it is a
    collective, and a rank with one batch more would wait for the others forever. Ranks with fewer batches run
    padding batches (a real window, so the model sees valid input) whose sums are discarded.
    """
    sums = None
    sources = source_count(loader.dataset)
    by_source = torch.zeros(sources, 2, dtype=torch.float64, device=runtime.device)  # [loss sum, count] per source
    was_training = engine.module.training
    engine.eval()
    fork_devices = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    forwards = all_reduce_max(len(loader), runtime.device)
    padding = None
    indices = iter(loader.batch_sampler)  # the (epoch, position) lists the loader fetches, in its order
    with torch.no_grad(), torch.random.fork_rng(devices=fork_devices):
        for x, stamp in loader:
            positions = [position for _, position in next(indices)]
            keys = sample_keys(seed, positions)
            losses = task.validation_losses(engine, x, stamp, keys)
            batch = batch_sums(losses)
            sums = batch if sums is None else sums + batch
            if sources:
                ids = torch.from_numpy(loader.dataset.source_ids(positions)).to(runtime.device, non_blocking=True)
                by_source.index_add_(0, ids, torch.stack([losses[0].double(), torch.ones_like(losses[0],
                                                                                              dtype=torch.float64)], 1))
            padding = (x[:1], stamp[:1], keys[:1])
        for _ in range(forwards - len(loader)):
            padding = padding or (*loader.dataset.get_batch([0]), sample_keys(seed, [0]))
            task.validation_losses(engine, *padding)
    engine.train(was_training)
    if sums is None:  # this rank had no validation batch; it still takes part in the reduction
        sums = torch.zeros(len(task.names.val_components_comet) + 2, dtype=torch.float64, device=runtime.device)
    reduced = all_reduce_sum(torch.cat([sums.to(runtime.device), by_source.flatten()])).tolist()
    total, per_source = reduced[:len(sums)], reduced[len(sums):]
    count = max(total[-1], 1.0)
    means = [value / count for value in total[:-1]]
    source_losses = tuple(loss / n if n else None for loss, n in zip(per_source[0::2], per_source[1::2]))
    return ValidationResult(means[0], tuple(means[1:]), int(total[-1]), source_losses)
