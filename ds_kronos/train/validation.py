"""Validation reduced across ranks: sums of per-sample losses and sample counts, all-reduced with deepspeed.comm.

Summing per-sample losses (rather than averaging per-rank batch means, as upstream does) makes the mean exact when
ranks hold different numbers of samples. Scoring keeps the dependency layer causal (as in training): upstream
validates in eval mode, where the s2 head at position t can see the context of t+1, which contains the very s2
token it is scored on. The s1 sampling (when teacher forcing is off) uses a fixed seed per rank, so the number is
reproducible and the training RNG stream is left untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds_kronos.model import KronosTokenizer
from ds_kronos.train.runtime import Runtime, all_reduce_sum
from ds_kronos.train.step import predict_and_score, tokenize_batch


@dataclass(frozen=True)
class ValidationResult:
    loss: float
    s1_loss: float
    s2_loss: float
    samples: int


def validate(engine, tokenizer: KronosTokenizer, loader, runtime: Runtime, tokenizer_dtype: torch.dtype,
             teacher_forcing: bool, seed: int) -> ValidationResult:
    """Collective: every rank must call it (ranks may hold different numbers of batches, including none)."""
    head = engine.module.head
    sums = torch.zeros(4, dtype=torch.float64, device=runtime.device)
    was_training = engine.module.training
    engine.eval()
    fork_devices = [runtime.device.index or 0] if runtime.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed + 7919 * runtime.rank)
        for x, stamp in loader:
            batch = tokenize_batch(tokenizer, x, stamp, runtime.device, tokenizer_dtype)
            loss, s1_loss, s2_loss = predict_and_score(engine, head, batch, teacher_forcing, causal_s2=True,
                                                       reduction="none")
            sums += torch.stack([loss.sum(), s1_loss.sum(), s2_loss.sum(),
                                 torch.tensor(float(loss.numel()), device=loss.device)]).to(sums)
    engine.train(was_training)
    total = all_reduce_sum(sums).tolist()
    count = max(total[3], 1.0)
    return ValidationResult(total[0] / count, total[1] / count, total[2] / count, int(total[3]))
