"""Model FLOPs of one training sample, for throughput and MFU (model FLOPs utilisation).

    flops/sample = 6 * P_matmul * T  +  12 * (n_layers + 1) * d_model * T^2

The first term is forward (2 FLOPs per weight per token) plus backward (4) over the parameters that multiply
activations (Linear weights incl. both heads and the embedding's fusion projection; embedding lookups, biases and
norm scales are left out). The second is the attention matmuls (QK^T and AV: 4 * T^2 * d forward, x3 with
backward) of the n_layers self-attention blocks and the dependency layer's cross-attention, counted without the
causal halving (as PaLM's MFU does). Not counted: the frozen tokenizer's forward and activation-checkpointing
recomputation (they are work, but not model FLOPs), element-wise ops and softmax.
"""

from __future__ import annotations

from ds_kronos.plan.counts import ModelCounts


def flops_per_sample(counts: ModelCounts, context: int) -> float:
    c = counts.config
    return 6.0 * counts.matmul_params * context + 12.0 * (c.n_layers + 1) * c.d_model * context ** 2
