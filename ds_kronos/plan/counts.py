"""Parameter counts of a predictor preset (and its frozen tokenizer), built on the meta device: no memory is used,
so the 3b preset is counted as cheaply as tiny. Under LoRA (``lora_rank`` > 0) the predictor's own parameters are
frozen and only the adapters train (ds_kronos.adapters counts them from the rank and the targets)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ds_kronos.adapters import DEFAULT_LORA_TARGETS, lora_parameter_count, targeted_modules
from ds_kronos.model import TOKENIZER_PRESETS, Kronos, KronosConfig, KronosTokenizer, KronosTokenizerConfig, preset
from ds_kronos.model.flops import matmul_params


@dataclass(frozen=True)
class ModelCounts:
    variant: str
    config: KronosConfig
    tokenizer_config: KronosTokenizerConfig
    max_context: int
    total_params: int
    """Predictor parameters that the engine holds and trains or keeps frozen inside it (the learned ones, and the
    adapters under LoRA; the tokenizer lives outside the engine and is not counted here)."""
    trained_params: int
    """Parameters the optimizer holds (gradients, fp32 masters, AdamW moments): all of them, or the adapters."""
    largest_layer_params: int
    """DeepSpeed's definition (stage3.model_to_params): the most parameters held directly by one module. ZeRO-3
    gathers one such module at a time, so its full-size copy must fit next to the partitions."""
    matmul_params: int
    """Parameters that multiply activations (Linear weights): the ones that cost FLOPs. Embedding tables are
    lookups, biases and norm scales are element-wise, so both are left out of the FLOP count."""
    tokenizer_params: int
    largest_tensor_params: int = 0
    """The biggest single parameter tensor: what loading a checkpoint one tensor at a time holds at most."""
    adapted_weight_params: int = 0
    """Under LoRA: the weights of the adapted layers (an export writes them merged, a copy of each)."""
    lora_rank: int = 0
    """0: every parameter trains."""

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trained_params


def _largest_layer(model: nn.Module) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


@lru_cache(maxsize=None)
def model_counts(variant: str, lora_rank: int = 0,
                 lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS) -> ModelCounts:
    """Counts for a preset name (tiny, mini, small, base, large, 1b, 3b); raises ModelFolderError for others.
    ``lora_rank`` > 0: the predictor fine-tuned with LoRA of that rank on ``lora_targets`` (--finetune lora)."""
    spec = preset(variant)
    with torch.device("meta"):
        model = Kronos(spec.config)
        tokenizer = KronosTokenizer(TOKENIZER_PRESETS[spec.tokenizer])
    learned = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = lora_parameter_count(model, lora_targets, lora_rank) if lora_rank else 0
    return ModelCounts(
        variant=variant, config=spec.config, tokenizer_config=TOKENIZER_PRESETS[spec.tokenizer],
        max_context=spec.max_context, total_params=learned + adapters, trained_params=adapters or learned,
        largest_layer_params=_largest_layer(model), matmul_params=matmul_params(model),
        tokenizer_params=sum(p.numel() for p in tokenizer.parameters()),
        largest_tensor_params=max(p.numel() for p in model.parameters()),
        adapted_weight_params=(sum(m.weight.numel() for _, m in targeted_modules(model, lora_targets))
                               if lora_rank else 0),
        lora_rank=lora_rank)
