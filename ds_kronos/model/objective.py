"""The predictor objective on a batch of windows: tokenize (frozen tokenizer), shift, predict, score.

Shared by the training loop, validation, the memory planner's measurement and the throughput benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ds_kronos.model.tokenizer import KronosTokenizer


@dataclass(frozen=True)
class StepInputs:
    s1_in: torch.Tensor
    s2_in: torch.Tensor
    s1_out: torch.Tensor
    s2_out: torch.Tensor
    stamp: torch.Tensor


@torch.no_grad()
def tokenize_batch(tokenizer: KronosTokenizer, x: torch.Tensor, stamp: torch.Tensor, device: torch.device,
                   dtype: torch.dtype) -> StepInputs:
    """Upstream's step: ids of the window, inputs = ids[:, :-1], targets = ids[:, 1:], stamps of the inputs."""
    x = x.to(device, non_blocking=True)
    s1, s2 = tokenizer.encode(x.to(dtype), half=True)
    return StepInputs(s1[:, :-1], s2[:, :-1], s1[:, 1:], s2[:, 1:], stamp.to(device, non_blocking=True)[:, :-1])


def per_sample_uniforms(keys: Sequence[int], length: int) -> torch.Tensor:
    """float32 [len(keys), length] in [0, 1): row i from a CPU generator seeded with ``keys[i]``, so a sample's
    numbers depend on its key alone (not on its batch, rank or device)."""
    return torch.stack([torch.rand(length, generator=torch.Generator().manual_seed(key)) for key in keys])


def predict_and_score(model, head, batch: StepInputs, teacher_forcing: bool, causal_s2: bool | None = None,
                      reduction: str = "mean", s1_uniform: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward through ``model`` (the DeepSpeed engine, so gradients are synchronised) and the dual-head loss.
    ``s1_uniform``: without teacher forcing, the numbers the s1 conditioning is drawn from (Kronos.forward)."""
    s1_logits, s2_logits = model(batch.s1_in, batch.s2_in, batch.stamp, use_teacher_forcing=teacher_forcing,
                                 s1_targets=batch.s1_out if teacher_forcing else None, causal_s2=causal_s2,
                                 s1_uniform=None if teacher_forcing else s1_uniform)
    return head.compute_loss(s1_logits, s2_logits, batch.s1_out, batch.s2_out, reduction=reduction)
