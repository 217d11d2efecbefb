"""Activation memory of one rank: what autograd saves in this code's layers per token, the heads' logits and the
frozen tokenizer's forward."""

from __future__ import annotations

from ds_kronos.plan.counts import ModelCounts
from ds_kronos.plan.setup import BYTES, FP32, Setup


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
