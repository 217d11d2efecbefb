"""The Transformer blocks shared by the Kronos tokenizer and predictor: RMSNorm, the SwiGLU feed-forward, rotary
self- and cross-attention with their key/value cache, and the block. The predictor's embeddings and heads are in
``embeddings.py`` and ``heads.py``.

Module and parameter names mirror the published checkpoints (``q_proj``, ``rotary.inv_freq``, ``ffn.w1`` ...),
so their state dicts load strictly. Behaviour that defines what the published weights mean is kept as upstream
has it; the places where this code deliberately differs are marked "Differs from upstream".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 whatever the input dtype (as upstream)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, d_model: int, ff_dim: int, dropout_p: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rotary_inv_freq(head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with angles always computed in fp32.

    Differs from upstream: upstream caches cos/sin in the dtype of its ``inv_freq`` buffer, so after ``.to(bf16)``
    the positions themselves are rounded (errors near 0.2 rad within the first 100 positions) and the cache goes
    stale on a dtype change. Here ``inv_freq`` is kept in fp32 through any module cast (it is still saved, as the
    published checkpoints contain it), angles and the rotation are computed in fp32 and only the result is cast
    back to the activations' dtype. In fp32 the arithmetic is the same as upstream's.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("inv_freq", rotary_inv_freq(head_dim))

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32 and not self.inv_freq.is_meta:
            # A dtype cast must not round the frequencies: rebuild them exactly on the new device.
            self.inv_freq = rotary_inv_freq(self.head_dim, device=self.inv_freq.device)
        return result

    def cos_sin(self, seq_len: int, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [seq_len, head_dim] of positions ``offset .. offset + seq_len - 1``."""
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        positions = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x1, x2 = x32.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return (x32 * cos + rotated * sin).to(x.dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q and k ([B, H, L, D]). Positions are those of the queries, as in the published model: keys of a
        longer sequence against a single query (the decode step of the dependency layer) all get position 0."""
        cos, sin = self.cos_sin(q.shape[-2], q.device)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)


class KVCache:
    """Keys and values of one attention layer for the positions decoded so far.

    The buffers ([B, H, capacity, D]) are allocated once: appending a step copies one position in, where a
    concatenation would copy the whole cache at every step. ``length`` positions are valid.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        if keys.shape != values.shape or keys.dim() != 4:
            raise ValueError(f"keys and values must be [B, H, capacity, D] of one shape, got {tuple(keys.shape)} and "
                             f"{tuple(values.shape)}")
        self.keys = keys
        self.values = values
        self.length = 0

    @classmethod
    def empty(cls, batch: int, n_heads: int, head_dim: int, capacity: int, device: torch.device,
              dtype: torch.dtype) -> "KVCache":
        shape = (batch, n_heads, capacity, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def reset(self) -> None:
        """Forget every position (the buffers are reused)."""
        self.length = 0

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys/values [B, H, n, D] of the next n positions; returns views of all valid ones."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache full: {self.length} + {keys.shape[2]} positions exceed its capacity "
                             f"{self.capacity}")
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def _attention_mask(q_len: int, k_len: int, causal: bool, key_padding_mask: torch.Tensor | None,
                    device: torch.device) -> torch.Tensor | None:
    """Boolean mask (True = may attend) combining causality and key padding, or None when nothing is masked.

    Differs from upstream: upstream hands the padding mask to SDPA together with ``is_causal=True``, which SDPA
    rejects, and with the opposite polarity to its loss. Here ``key_padding_mask`` is True/1 at padded positions
    (the loss's convention); a query always keeps itself so that no row is fully masked.
    """
    if key_padding_mask is None:
        return None
    allowed = ~key_padding_mask.bool()[:, None, None, :]  # [B, 1, 1, K]
    if causal:
        allowed = allowed & torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
    return allowed | torch.eye(q_len, k_len, dtype=torch.bool, device=device)


class MultiHeadAttentionWithRoPE(nn.Module):
    """Causal self-attention with rotary embedding, through ``F.scaled_dot_product_attention``."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def attend(self, query: torch.Tensor, key_value: torch.Tensor, causal: bool,
               key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, q_len, _ = query.shape
        q, k = self.rotary(self._heads(self.q_proj(query)), self._heads(self.k_proj(key_value)))
        v = self._heads(self.v_proj(key_value))
        mask = _attention_mask(q_len, k.shape[-2], causal, key_padding_mask, query.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None,
            dropout_p=self.attn_dropout_p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, q_len, self.d_model)
        return self.resid_dropout(self.out_proj(out))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attend(x, x, causal=True, key_padding_mask=key_padding_mask)

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Causal self-attention of the next n positions ``x`` [B, n, d] (absolute positions cache.length ..
        cache.length + n - 1) over every cached position and themselves; their keys/values join the cache.

        The same function as :meth:`forward` on the whole sequence, for those positions: keys are rotated at their
        own positions and the rotary dot product depends only on position differences. Padding is not supported
        (forecasting has none). On an empty cache this is exactly the full computation (same kernel call).
        """
        batch, n, _ = x.shape
        start = cache.length
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        cos, sin = self.rotary.cos_sin(n, x.device, offset=start)
        q, k = self.rotary._rotate(q, cos, sin), self.rotary._rotate(k, cos, sin)
        keys, values = cache.append(k, v)
        dropout = self.attn_dropout_p if self.training else 0.0
        if start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif n == 1:
            # One new query may see every cached position: no mask (a causal flag would align it to key 0).
            out = F.scaled_dot_product_attention(q, keys, values, dropout_p=dropout)
        else:
            allowed = (torch.arange(n, device=x.device)[:, None] + start
                       >= torch.arange(start + n, device=x.device)[None, :])
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(batch, n, self.d_model)
        return self.resid_dropout(self.out_proj(out))


class MultiHeadCrossAttentionWithRoPE(MultiHeadAttentionWithRoPE):
    """Cross-attention of the dependency-aware layer.

    By default as upstream (and so as the published weights were trained): causal in training mode, unmasked in
    eval mode. Unmasked, position t sees the context of t+1, which already contains the s2 token it is asked to
    predict; evaluations that score every position therefore pass ``causal=True``.
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, causal: bool | None = None) -> torch.Tensor:
        if value is not None and value is not key:
            raise ValueError("the dependency layer attends over one sequence: key and value must be the same tensor")
        causal = self.training if causal is None else causal
        return self.attend(query, key, causal=causal, key_padding_mask=key_padding_mask)

    def _rotate_at_zero(self, x: torch.Tensor) -> torch.Tensor:
        # The decode step rotates its single query and every key at position 0 (see RotaryEmbedding.forward).
        cos, sin = self.rotary.cos_sin(1, x.device)
        return self.rotary._rotate(x, cos, sin)

    def append_keys(self, key_value: torch.Tensor, cache: KVCache) -> None:
        """Project the next positions of the attended sequence [B, n, d] into keys/values and cache them."""
        cache.append(self._rotate_at_zero(self._heads(self.k_proj(key_value))), self._heads(self.v_proj(key_value)))

    def attend_cached(self, query: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The decode step (eval mode): one query [B, 1, d] over every cached position, unmasked."""
        batch, q_len, _ = query.shape
        q = self._rotate_at_zero(self._heads(self.q_proj(query)))
        keys, values = cache.keys[:, :, :cache.length], cache.values[:, :, :cache.length]
        out = F.scaled_dot_product_attention(q, keys, values,
                                             dropout_p=self.attn_dropout_p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, q_len, self.d_model)
        return self.resid_dropout(self.out_proj(out))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1 x), then + ffn(norm2 x)."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, ffn_dropout_p: float = 0.0,
                 attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = MultiHeadAttentionWithRoPE(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), key_padding_mask=key_padding_mask)
        return x + self.ffn(self.norm2(x))

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """:meth:`forward` for the next positions only, attending over the cached ones (see the attention)."""
        x = x + self.self_attn.forward_cached(self.norm1(x), cache)
        return x + self.ffn(self.norm2(x))
