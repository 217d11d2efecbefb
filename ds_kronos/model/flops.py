"""Model FLOPs utilisation (MFU): the model FLOPs of one training sample, and the peak a device could deliver.

Predictor (the formula ``benchmarks/`` and the trainer's log lines share)::

    flops/sample = 6 * P_matmul * T  +  12 * (n_layers + 1) * d_model * T^2

The first term is forward (2 FLOPs per weight per token) plus backward (4) over the parameters that multiply
activations (Linear weights incl. both heads and the embedding's fusion projection; embedding lookups, biases and
norm scales are left out). The second is the attention matmuls (QK^T and AV: 4 * T^2 * d forward, x3 with
backward) of the n_layers self-attention blocks and the dependency layer's cross-attention, counted without the
causal halving (as PaLM's MFU does). Not counted: the frozen tokenizer's forward and activation-checkpointing
recomputation (they are work, but not model FLOPs), element-wise ops and softmax.

Frozen weights (``--finetune lora``: the base layers under the adapters; ``--finetune freeze``) get no weight
gradient, so they count 4 FLOPs per weight and token instead of 6: the forward and the activation gradient that
still flows back to the trainable parameters before them. Frozen layers that come before every trainable
parameter (e.g. heads-only training) need no backward at all; the count does not look for them, so it overstates
such runs.

Tokenizer (its own training stage): the same two terms over what one forward applies per bar. The encoder blocks,
``embed``, ``quant_embed`` and both post-quantisation projections run once; the decoder blocks and ``head`` run
twice (the s1-only and the full reconstruction), so they count twice.

Peak: dense (no structured sparsity) tensor-core TFLOP/s from NVIDIA's datasheets, per GPU, for bf16/fp16 with fp32
accumulation and for fp32 (no TF32: torch leaves ``allow_tf32`` off for matmuls by default), matched on
``torch.cuda.get_device_name``. Unknown devices and CPUs have no peak: MFU is then "n/a" unless the user gives one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ds_kronos.model.configs import KronosConfig


def matmul_params(model: nn.Module, frozen_only: bool = False) -> int:
    """Parameters that multiply activations (Linear weights), whole even when ZeRO-3 partitions them; with
    ``frozen_only``, those of them that do not train."""
    return sum(getattr(m.weight, "ds_numel", m.weight.numel()) for m in model.modules()
               if isinstance(m, nn.Linear) and not (frozen_only and m.weight.requires_grad))


def flops_per_sample(config: KronosConfig, matmul: int, context: int, frozen_matmul: int = 0) -> float:
    """Training FLOPs (forward + backward) of one predictor sample of ``context`` tokens; ``frozen_matmul`` of the
    ``matmul`` weights do not train (module docstring)."""
    return ((6.0 * (matmul - frozen_matmul) + 4.0 * frozen_matmul) * context
            + 12.0 * (config.n_layers + 1) * config.d_model * context ** 2)


def tokenizer_flops_per_sample(tokenizer: nn.Module, bars: int) -> float:
    """Training FLOPs of one tokenizer sample of ``bars`` bars (a :class:`ds_kronos.model.KronosTokenizer`)."""
    twice = [tokenizer.decoder, tokenizer.head]  # both reconstructions run them
    per_bar = matmul_params(tokenizer) + sum(matmul_params(module) for module in twice)
    attention_passes = len(tokenizer.encoder) + 2 * len(tokenizer.decoder)
    return 6.0 * per_bar * bars + 12.0 * attention_passes * tokenizer.config.d_model * bars ** 2


@dataclass(frozen=True)
class DevicePeak:
    """Dense TFLOP/s of one GPU model by training precision."""

    name: str
    bf16: float
    fp32: float

    def tflops(self, precision: str) -> float:
        return self.fp32 if precision == "fp32" else self.bf16  # fp16 and bf16 tensor cores have the same rate


PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    # (regular expression on the device name, peak); the first match wins, so variants come before their family.
    (r"GH200", DevicePeak("GH200 (H100 SXM compute)", 989.4, 66.9)),
    (r"H200.*NVL", DevicePeak("H200 NVL", 835.5, 60.0)),
    (r"H200", DevicePeak("H200 SXM", 989.4, 66.9)),
    (r"H100.*NVL", DevicePeak("H100 NVL", 835.5, 60.0)),
    (r"H[18]00.*PCIe", DevicePeak("H100 PCIe", 756.5, 51.2)),
    (r"H[18]00", DevicePeak("H100 SXM", 989.4, 66.9)),  # "NVIDIA H100 80GB HBM3"; the H800 has the same compute
    (r"A[18]00", DevicePeak("A100", 312.0, 19.5)),  # SXM4 and PCIe alike
    (r"L40S", DevicePeak("L40S", 362.05, 91.6)),
    (r"RTX 4090", DevicePeak("GeForce RTX 4090", 165.2, 82.6)),  # fp16 with fp32 accumulation
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The table's entry for a ``torch.cuda.get_device_name`` string, None when it is not in the table."""
    for pattern, peak in PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None
