"""The predictor's input embeddings: the (s1, s2) token pair and the bar's time stamp.

Names mirror the published checkpoints (``emb_s1``, ``fusion_proj``, ``minute_embed.emb.weight`` ...), so their state
dicts load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ds_kronos.model.partitioned import modifiable


class HierarchicalEmbedding(nn.Module):
    """Embeds (s1, s2) token pairs: both tables scaled by sqrt(d_model), concatenated, then fused linearly."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2 ** s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2 ** s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)
        for table in (self.emb_s1, self.emb_s2):
            # Under deepspeed.zero.Init the tables are partitioned by now: gathered, the draw is the full table's,
            # so the random stream (and every later initial weight) is the same as in a plain build.
            with modifiable(table):
                nn.init.normal_(table.weight, mean=0.0, std=d_model ** -0.5)

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        return self.fusion_proj(torch.cat([self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale], dim=-1))


class FixedEmbedding(nn.Module):
    """Frozen sinusoidal table (used when ``learn_te`` is false); stored as ``emb.weight`` like upstream."""

    def __init__(self, num_embeddings: int, d_model: int):
        super().__init__()
        position = torch.arange(num_embeddings).float().unsqueeze(1)
        div_term = (torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model)).exp()
        table = torch.zeros(num_embeddings, d_model)
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.emb = nn.Embedding(num_embeddings, d_model)
        self.emb.weight = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x).detach()


class TemporalEmbedding(nn.Module):
    """Sum of embeddings of [minute, hour, weekday, day, month] (stamp[..., 0..4])."""

    def __init__(self, d_model: int, learn_te: bool):
        super().__init__()
        table = nn.Embedding if learn_te else FixedEmbedding
        self.minute_embed = table(60, d_model)
        self.hour_embed = table(24, d_model)
        self.weekday_embed = table(7, d_model)
        self.day_embed = table(32, d_model)
        self.month_embed = table(13, d_model)

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        stamp = stamp.long()
        # Summation order as upstream, so fp32 results match to the last bit.
        return (self.hour_embed(stamp[..., 1]) + self.weekday_embed(stamp[..., 2]) + self.day_embed(stamp[..., 3])
                + self.month_embed(stamp[..., 4]) + self.minute_embed(stamp[..., 0]))
