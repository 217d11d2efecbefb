"""Per-rank memory of one training configuration: model states (parameters, gradients, optimizer states) and
activations, in bytes.

Model states come from DeepSpeed's own estimators where it ships them (ZeRO-2/3, bf16), and otherwise from the
same byte convention applied here; activations are counted from what autograd saves in this code's layers. The
per-stage table, with the reasons, is in ``docs/memory_planner.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ds_kronos.plan.counts import ModelCounts

BYTES = {"fp32": 4, "bf16": 2}
FP32 = 4
ADAM = 8  # two fp32 moments


@dataclass(frozen=True)
class Setup:
    """One training configuration to size."""

    world_size: int = 1
    gpus_per_node: int = 1
    zero: int = 0
    offload: bool = False
    micro_batch: int = 16
    context: int = 512
    precision: str = "fp32"
    activation_checkpointing: bool = False
    math_attention: bool = False
    """True where the attention scores are materialised (torch's math SDPA kernel, which CPU training takes when
    attention dropout is on). The flash/efficient kernels keep O(1) per query instead of O(T)."""
    teacher_forcing: bool = False

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.world_size / self.gpus_per_node))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank. ``device`` items are what the accelerator (or, on CPU, the process) holds."""

    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    tokenizer: int
    host_offload: int
    """Host (CPU) memory per rank for offloaded states; 0 without offload."""
    model_states_source: str
    deepspeed_model_states: int | None
    """DeepSpeed's own device figure for the model states when its estimator applies (bf16 ZeRO-2/3)."""

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.logits + self.tokenizer


# ------------------------------------------------------------------------------------------------- model states
def _deepspeed_zero2(counts: ModelCounts, setup: Setup) -> tuple[int, int]:
    """(cpu bytes per node, device bytes per rank) from DeepSpeed's ZeRO-2 estimator."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs(
        total_params=counts.total_params, num_gpus_per_node=setup.gpus_per_node, num_nodes=setup.nodes,
        cpu_offload=setup.offload)


def _deepspeed_zero3(counts: ModelCounts, setup: Setup) -> tuple[int, int]:
    """(cpu bytes per node, device bytes per rank) from DeepSpeed's ZeRO-3 estimator. ``zero_init=False``: the
    trainer builds the full model in every process before DeepSpeed partitions it."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, device, _ = estimate_zero3_model_states_mem_needs(
        total_params=counts.total_params, largest_layer_params=counts.largest_layer_params,
        num_gpus_per_node=setup.gpus_per_node, num_nodes=setup.nodes, cpu_offload=setup.offload,
        cpu_offload_params=setup.offload, zero_init=False)
    return cpu, device


def model_states(counts: ModelCounts, setup: Setup) -> tuple[int, int, int, int, str, int | None]:
    """(params, grads, optimizer, host_offload, source, deepspeed figure) per rank."""
    P, L, N, c = counts.total_params, counts.largest_layer_params, setup.world_size, BYTES[setup.precision]
    shard = lambda nbytes: int(nbytes * P / N)  # noqa: E731 - bytes/param over the ranks
    mixed = setup.precision != "fp32"
    ours = f"ds_kronos (DeepSpeed's byte convention, {setup.precision})"
    if setup.zero == 0:
        if mixed:
            return c * P, (c + FP32) * P, (FP32 + ADAM) * P, 0, ours + ": no DeepSpeed estimator for ZeRO-0", None
        return c * P, c * P, ADAM * P, 0, ours + ": no DeepSpeed estimator for ZeRO-0", None
    if setup.zero == 1:
        return c * P, c * P + shard(FP32), shard(FP32 + ADAM), 0, ours + ": no DeepSpeed estimator for ZeRO-1", None
    if setup.zero == 2:
        cpu_node, ds_device = _deepspeed_zero2(counts, setup)
        if setup.offload:
            params, grads, optimizer, host = c * P, 0, 0, cpu_node // setup.gpus_per_node
        else:
            params, grads, optimizer, host = c * P, shard(c + FP32), shard(FP32 + ADAM), 0
        name = "estimate_zero2_model_states_mem_needs"
    else:
        cpu_node, ds_device = _deepspeed_zero3(counts, setup)
        gathered = 2 * c * L  # the largest layer's full params and grads while it is worked on
        if setup.offload:
            params, grads, optimizer, host = gathered, 0, 0, cpu_node // setup.gpus_per_node
        else:
            params, grads, optimizer, host = gathered + shard(c), shard(FP32), shard(FP32 + ADAM), 0
        name = "estimate_zero3_model_states_mem_needs"
    if mixed:
        # DeepSpeed's figure is the total; our split is made to sum to it.
        total = params + grads + optimizer
        optimizer += ds_device - total
        return params, grads, optimizer, host, f"DeepSpeed {name} (split by ds_kronos)", ds_device
    return (params, grads, optimizer, host,
            ours + f": DeepSpeed's {name} assumes 16-bit params (its figure is shown for reference)", ds_device)


# -------------------------------------------------------------------------------------------------- activations
def _mask(b: int) -> int:
    """Bytes per element of a dropout mask: torch's CPU dropout keeps a noise tensor at the activation dtype (the
    fused CUDA kernel keeps a 1-byte mask; the larger figure is used for both)."""
    return b


def norm_bytes(d: int, b: int) -> int:
    """RMSNorm computes in fp32: it saves the fp32 input (the input itself in fp32) and the normalised value at
    the activation precision."""
    return FP32 * d + b * d


def attention_bytes(d: int, b: int, dropout: bool) -> int:
    """Self- or cross-attention per token: the projections' input, rotated q and k and v (what SDPA saves), SDPA's
    output (also out_proj's input, a view) and the output dropout's mask. The fp32 rotary saves only its cos/sin
    tables (they do not require grad), so nothing per token."""
    return b * d + 3 * b * d + b * d + (_mask(b) * d if dropout else 0)


def ffn_bytes(d: int, ff: int, b: int, dropout: bool) -> int:
    """SwiGLU: its input, w1 x, silu(w1 x), w3 x and their product (w2's input), and the dropout mask."""
    return b * d + 4 * b * ff + (_mask(b) * d if dropout else 0)


def block_bytes_per_token(counts: ModelCounts, setup: Setup) -> int:
    c, b = counts.config, BYTES[setup.precision]
    return (2 * norm_bytes(c.d_model, b) + attention_bytes(c.d_model, b, c.resid_dropout_p > 0)
            + ffn_bytes(c.d_model, c.ff_dim, b, c.ffn_dropout_p > 0))


def scores_bytes_per_token(heads: int, context: int, b: int, dropout: bool) -> int:
    """The math SDPA kernel's saved attention probabilities per query and, with attention dropout, the dropout
    mask and the dropped-out probabilities."""
    return heads * context * (b + (_mask(b) + b if dropout else 0))


def activation_bytes(counts: ModelCounts, setup: Setup) -> int:
    """Saved activations of the predictor per rank (blocks, embedding, final norm, dependency layer)."""
    c, b = counts.config, BYTES[setup.precision]
    tokens = setup.micro_batch * setup.context
    block = block_bytes_per_token(counts, setup)
    if setup.math_attention:
        block += scores_bytes_per_token(c.n_heads, setup.context, b, c.attn_dropout_p > 0)
    # Outside the blocks: the fused embedding's input (2d), the final norm, the s1 head's input, and the
    # dependency layer (one cross-attention, its norm, the s2 head's input and the s1-token embedding).
    other = (2 * b * c.d_model + norm_bytes(c.d_model, b) + b * c.d_model
             + attention_bytes(c.d_model, b, c.resid_dropout_p > 0) + norm_bytes(c.d_model, b) + 2 * b * c.d_model)
    if setup.activation_checkpointing:
        # Each block keeps its input; during backward one block at a time is recomputed in full.
        per_token = c.n_layers * b * c.d_model + block + other
    else:
        per_token = c.n_layers * block + other
    return tokens * per_token


def logits_bytes(counts: ModelCounts, setup: Setup) -> int:
    """The two heads' logits (2^s1_bits + 2^s2_bits per token). The loss works in fp32: alive at once are the
    logits, their fp32 log-softmax saved by cross-entropy and, when backward starts, a gradient of the same size;
    bf16 logits add their fp32 copy. Sampling the s1 token (no teacher forcing) adds the fp32 softmax briefly."""
    c, b = counts.config, BYTES[setup.precision]
    vocab = 2 ** c.s1_bits + 2 ** c.s2_bits
    per_vocab = b + FP32 + FP32 + (FP32 if b != FP32 else 0)
    return setup.micro_batch * setup.context * vocab * per_vocab


def tokenizer_bytes(counts: ModelCounts, setup: Setup) -> int:
    """The frozen tokenizer: its weights (fp32 on CPU, fp16 on GPU; fp32 assumed, the larger) and its no-grad
    forward's largest transient (the SwiGLU inner activations of one block)."""
    t = counts.tokenizer_config
    tokens = setup.micro_batch * (setup.context + 1)
    return counts.tokenizer_params * FP32 + tokens * 3 * t.ff_dim * FP32


def estimate(counts: ModelCounts, setup: Setup) -> MemoryEstimate:
    params, grads, optimizer, host, source, ds_figure = model_states(counts, setup)
    return MemoryEstimate(params=params, grads=grads, optimizer=optimizer,
                          activations=activation_bytes(counts, setup), logits=logits_bytes(counts, setup),
                          tokenizer=tokenizer_bytes(counts, setup), host_offload=host,
                          model_states_source=source, deepspeed_model_states=ds_figure)
