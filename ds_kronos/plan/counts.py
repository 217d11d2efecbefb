"""Parameter counts of a predictor preset (and its frozen tokenizer), built on the meta device: no memory is used,
so the 3b preset is counted as cheaply as tiny."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ds_kronos.model import TOKENIZER_PRESETS, Kronos, KronosConfig, KronosTokenizer, KronosTokenizerConfig, preset


@dataclass(frozen=True)
class ModelCounts:
    variant: str
    config: KronosConfig
    tokenizer_config: KronosTokenizerConfig
    max_context: int
    total_params: int
    """Trainable predictor parameters (the tokenizer is frozen and not counted here)."""
    largest_layer_params: int
    """DeepSpeed's definition (stage3.model_to_params): the most parameters held directly by one module. ZeRO-3
    gathers one such module at a time, so its full-size copy must fit next to the partitions."""
    matmul_params: int
    """Parameters that multiply activations (Linear weights): the ones that cost FLOPs. Embedding tables are
    lookups, biases and norm scales are element-wise, so both are left out of the FLOP count."""
    tokenizer_params: int
    largest_tensor_params: int = 0
    """The biggest single parameter tensor: what loading a checkpoint one tensor at a time holds at most."""


def _largest_layer(model: nn.Module) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


@lru_cache(maxsize=None)
def model_counts(variant: str) -> ModelCounts:
    """Counts for a preset name (tiny, mini, small, base, large, 1b, 3b); raises CheckpointError for others."""
    spec = preset(variant)
    with torch.device("meta"):
        model = Kronos(spec.config)
        tokenizer = KronosTokenizer(TOKENIZER_PRESETS[spec.tokenizer])
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return ModelCounts(
        variant=variant, config=spec.config, tokenizer_config=TOKENIZER_PRESETS[spec.tokenizer],
        max_context=spec.max_context,
        total_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        largest_layer_params=_largest_layer(model), matmul_params=matmul,
        tokenizer_params=sum(p.numel() for p in tokenizer.parameters()),
        largest_tensor_params=max(p.numel() for p in model.parameters()))
