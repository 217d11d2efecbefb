"""Kronos: the autoregressive predictor over (s1, s2) token pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ds_kronos.model.configs import PREDICTOR_ALIASES, PREDICTOR_PRESETS, KronosConfig, PredictorPreset, resolve_preset
from ds_kronos.model.embeddings import FixedEmbedding, HierarchicalEmbedding, TemporalEmbedding
from ds_kronos.model.heads import DependencyAwareLayer, DualHead
from ds_kronos.model.layers import KVCache, RMSNorm, TransformerBlock
from ds_kronos.model.partitioned import modifiable
from ds_kronos.model.published import PretrainedMixin


@dataclass
class DecodeCache:
    """Everything incremental decoding keeps per sequence: the keys/values of each transformer block and those of
    the dependency layer (projections of the final-norm context), for positions 0 .. length - 1 of the window."""

    blocks: list[KVCache]
    dependency: KVCache

    @property
    def length(self) -> int:
        return self.dependency.length

    @property
    def capacity(self) -> int:
        return self.dependency.capacity

    def reset(self) -> None:
        for cache in (*self.blocks, self.dependency):
            cache.reset()


class Kronos(nn.Module, PretrainedMixin):
    """Decoder-only transformer predicting the next s1 token, then the s2 token conditioned on an s1 token.

    ``forward(s1_ids, s2_ids, stamp=None, padding_mask=None, use_teacher_forcing=False, s1_targets=None)`` returns
    ``(s1_logits, s2_logits)``. In training, s2 is conditioned on ``s1_targets`` with teacher forcing, otherwise on
    an s1 id sampled from the (detached) s1 distribution, as upstream trains. ``padding_mask`` is 1/True at padded
    positions. ``causal_s2=True`` keeps the dependency layer causal in eval mode too, for scoring every position
    (by default it follows upstream: causal only in training). ``s1_uniform`` [B, T] (numbers in [0, 1)) makes the
    sampled s1 the inverse-CDF draw of those numbers instead of a draw from torch's generator (validation: each
    sample's numbers come from its own stream, so its draw does not depend on its batch or rank).
    """

    config_class = KronosConfig

    def __init__(self, config: KronosConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = config if config is not None else KronosConfig(**kwargs)
        c = self.config
        self.s1_bits, self.s2_bits = c.s1_bits, c.s2_bits
        self.s1_vocab_size = 2 ** c.s1_bits
        self.d_model = c.d_model
        self.token_drop = nn.Dropout(c.token_dropout_p)
        self.embedding = HierarchicalEmbedding(c.s1_bits, c.s2_bits, c.d_model)
        self.time_emb = TemporalEmbedding(c.d_model, c.learn_te)
        self.transformer = nn.ModuleList(
            TransformerBlock(c.d_model, c.n_heads, c.ff_dim, c.ffn_dropout_p, c.attn_dropout_p, c.resid_dropout_p)
            for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)
        self.dep_layer = DependencyAwareLayer(c.d_model)
        self.head = DualHead(c.s1_bits, c.s2_bits, c.d_model)
        self.gradient_checkpointing = False
        """Recompute each block's activations in backward (saves memory, costs ~1/3 more compute)."""
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Upstream's initialisation. Frozen sinusoidal time tables (learn_te=False) are left as they are."""
        if isinstance(module, FixedEmbedding):
            return
        with modifiable(module):  # built under deepspeed.zero.Init, the parameters are partitioned by now
            self._init_module(module)

    def _init_module(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, mean=0.0, std=self.d_model ** -0.5)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    @classmethod
    def preset_config(cls, name: str) -> KronosConfig:
        return preset(name).config

    @classmethod
    def from_preset(cls, name: str) -> "Kronos":
        """Random initialisation of a named configuration (tiny, mini, small, base, large, 1b, 3b)."""
        return cls(cls.preset_config(name))

    def _embed(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None) -> torch.Tensor:
        x = self.embedding(s1_ids, s2_ids)
        if stamp is not None:
            x = x + self.time_emb(stamp)
        return self.token_drop(x)

    def decode_s1(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
                  padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (s1_logits [B, T, V1], context [B, T, d_model] after the final norm)."""
        x = self._embed(s1_ids, s2_ids, stamp)
        for block in self.transformer:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, padding_mask, use_reentrant=False)
            else:
                x = block(x, key_padding_mask=padding_mask)
        x = self.norm(x)
        return self.head(x), x

    def decode_s2(self, context: torch.Tensor, s1_ids: torch.Tensor, padding_mask: torch.Tensor | None = None,
                  causal: bool | None = None) -> torch.Tensor:
        """s2 logits conditioned on the context and the given s1 ids (``causal``: see the dependency layer)."""
        sibling = self.embedding.emb_s1(s1_ids)
        return self.head.cond_forward(self.dep_layer(context, sibling, key_padding_mask=padding_mask, causal=causal))

    # --- Incremental decoding (forecasting): the same functions as decode_s1/decode_s2 in eval mode, one new
    # position at a time over cached keys/values instead of the whole window at every step.

    def new_cache(self, batch: int, capacity: int, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> DecodeCache:
        """An empty :class:`DecodeCache` for ``batch`` sequences of up to ``capacity`` positions."""
        reference = self.head.proj_s1.weight
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        blocks = [KVCache.empty(batch, block.self_attn.n_heads, block.self_attn.head_dim, capacity, device, dtype)
                  for block in self.transformer]
        return DecodeCache(blocks, self.dep_layer.new_cache(batch, capacity, device, dtype))

    def decode_s1_cached(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None,
                         cache: DecodeCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the next n positions (token ids [B, n], ``stamp`` [B, n, 5]) of the window whose first
        ``cache.length`` positions are cached; returns the s1 logits [B, V1] and the context [B, 1, d_model] of
        the last one. On an empty cache this is the prefill: the whole window, as :meth:`decode_s1` computes it.

        Eval mode only: it reproduces the decode-time (eval) behaviour, which differs from training's.
        """
        if self.training:
            raise RuntimeError("incremental decoding reproduces eval mode: call .eval() first")
        x = self._embed(s1_ids, s2_ids, stamp)
        for block, block_cache in zip(self.transformer, cache.blocks):
            x = block.forward_cached(x, block_cache)
        x = self.norm(x)
        self.dep_layer.extend_cache(x, cache.dependency)
        last = x[:, -1:]
        return self.head(last)[:, -1], last

    def decode_s2_cached(self, last_context: torch.Tensor, s1_ids: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """s2 logits [B, V2] of the last cached position conditioned on ``s1_ids`` [B, 1]: the last row of
        ``decode_s2(context, s1_ids)`` in eval mode (the dependency layer unmasked over the whole window)."""
        if self.training:
            raise RuntimeError("incremental decoding reproduces eval mode: call .eval() first")
        sibling = self.embedding.emb_s1(s1_ids)
        return self.head.cond_forward(self.dep_layer.forward_cached(last_context, sibling, cache.dependency))[:, -1]

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
                padding_mask: torch.Tensor | None = None, use_teacher_forcing: bool = False,
                s1_targets: torch.Tensor | None = None, causal_s2: bool | None = None,
                s1_uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s1_logits, context = self.decode_s1(s1_ids, s2_ids, stamp, padding_mask)
        if use_teacher_forcing:
            if s1_targets is None:
                raise ValueError("use_teacher_forcing=True needs s1_targets")
            conditioning = s1_targets
        else:
            probs = F.softmax(s1_logits.detach().float(), dim=-1)
            # Diverged weights give NaN logits; multinomial would raise on one rank while the others wait in a
            # collective. A uniform draw instead lets the NaN reach the loss, where the trainer's divergence guard
            # stops the run on every rank. Identity for finite probabilities (no host sync).
            probs = probs.nan_to_num(nan=1.0 / self.s1_vocab_size, posinf=1.0 / self.s1_vocab_size)
            if s1_uniform is None:
                conditioning = torch.multinomial(probs.view(-1, self.s1_vocab_size), 1).view(s1_ids.shape)
            else:  # the first id whose cumulative probability exceeds u (the last for a rounding shortfall)
                cdf = probs.cumsum(dim=-1)
                conditioning = torch.searchsorted(cdf, s1_uniform.to(cdf).unsqueeze(-1), right=True).squeeze(-1)
                conditioning = conditioning.clamp_max(self.s1_vocab_size - 1)
        return s1_logits, self.decode_s2(context, conditioning, padding_mask, causal=causal_s2)


def preset(name: str) -> PredictorPreset:
    return resolve_preset(name, PREDICTOR_PRESETS, PREDICTOR_ALIASES, "predictor")
