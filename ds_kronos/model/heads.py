"""The predictor's output side: the dependency layer that conditions s2 on an s1 token, and the two heads with
their dual cross-entropy loss. Names mirror the published checkpoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ds_kronos.model.layers import KVCache, MultiHeadCrossAttentionWithRoPE, RMSNorm


class DependencyAwareLayer(nn.Module):
    """Conditions the s2 prediction on an s1 token: cross-attention from the s1 embedding to the context.

    The published models build it without ``n_heads``, so it always has 4 heads; that is part of the format.
    """

    N_HEADS = 4

    def __init__(self, d_model: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.cross_attn = MultiHeadCrossAttentionWithRoPE(d_model, self.N_HEADS, attn_dropout_p, resid_dropout_p)
        self.norm = RMSNorm(d_model)

    def forward(self, hidden_states: torch.Tensor, sibling_embed: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, causal: bool | None = None) -> torch.Tensor:
        attn_out = self.cross_attn(sibling_embed, hidden_states, key_padding_mask=key_padding_mask, causal=causal)
        return self.norm(hidden_states + attn_out)

    def new_cache(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        attn = self.cross_attn
        return KVCache.empty(batch, attn.n_heads, attn.head_dim, capacity, device, dtype)

    def extend_cache(self, hidden_states: torch.Tensor, cache: KVCache) -> None:
        """Add the next context positions [B, n, d] to the keys/values the decode step attends over."""
        self.cross_attn.append_keys(hidden_states, cache)

    def forward_cached(self, last_hidden: torch.Tensor, sibling_embed: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The decode step of :meth:`forward` in eval mode for the last position only: ``sibling_embed`` [B, 1, d]
        attends, unmasked, over every cached context position; ``last_hidden`` [B, 1, d] is the last context.

        :meth:`forward` adds the single attention row to every context position and the caller keeps the last
        one; here only that one is computed.
        """
        return self.norm(last_hidden + self.cross_attn.attend_cached(sibling_embed, cache))


class DualHead(nn.Module):
    """Two linear heads (s1 and s2 vocabularies) and the dual cross-entropy loss."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.vocab_s1 = 2 ** s1_bits
        self.vocab_s2 = 2 ** s2_bits
        self.proj_s1 = nn.Linear(d_model, self.vocab_s1)
        self.proj_s2 = nn.Linear(d_model, self.vocab_s2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s1(x)

    def cond_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return self.proj_s2(x2)

    def compute_loss(self, s1_logits: torch.Tensor, s2_logits: torch.Tensor, s1_targets: torch.Tensor,
                     s2_targets: torch.Tensor, padding_mask: torch.Tensor | None = None,
                     reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, s1_loss, s2_loss) with loss = (ce_s1 + ce_s2) / 2; positions where ``padding_mask`` is
        nonzero are left out. ``reduction="none"`` gives per-sample means ([B]) for exact distributed averages."""
        if reduction == "none":
            return self._per_sample_loss(s1_logits, s2_logits, s1_targets, s2_targets, padding_mask)
        if padding_mask is not None:
            valid = padding_mask == 0
            s1_logits, s2_logits = s1_logits[valid], s2_logits[valid]
            s1_targets, s2_targets = s1_targets[valid], s2_targets[valid]
        ce_s1 = F.cross_entropy(s1_logits.reshape(-1, self.vocab_s1).float(), s1_targets.reshape(-1))
        ce_s2 = F.cross_entropy(s2_logits.reshape(-1, self.vocab_s2).float(), s2_targets.reshape(-1))
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2

    def _per_sample_loss(self, s1_logits, s2_logits, s1_targets, s2_targets, padding_mask):
        batch = s1_logits.shape[0]
        ce_s1 = F.cross_entropy(s1_logits.reshape(-1, self.vocab_s1).float(), s1_targets.reshape(-1),
                                reduction="none").view(batch, -1)
        ce_s2 = F.cross_entropy(s2_logits.reshape(-1, self.vocab_s2).float(), s2_targets.reshape(-1),
                                reduction="none").view(batch, -1)
        if padding_mask is None:
            ce_s1, ce_s2 = ce_s1.mean(dim=1), ce_s2.mean(dim=1)
        else:
            valid = (padding_mask == 0).to(ce_s1.dtype)
            count = valid.sum(dim=1).clamp_min(1)
            ce_s1, ce_s2 = (ce_s1 * valid).sum(dim=1) / count, (ce_s2 * valid).sum(dim=1) / count
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2
