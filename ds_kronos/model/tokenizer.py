"""KronosTokenizer: OHLCV bars -> two-level discrete tokens and back."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ds_kronos.model.configs import TOKENIZER_ALIASES, TOKENIZER_PRESETS, KronosTokenizerConfig, resolve_preset
from ds_kronos.model.layers import TransformerBlock
from ds_kronos.model.published import PretrainedMixin
from ds_kronos.model.quantizer import BSQuantizer


class KronosTokenizer(nn.Module, PretrainedMixin):
    """Transformer encoder -> binary spherical quantizer (s1 | s2 bits) -> transformer decoder.

    ``forward(x)`` returns ``((recon_s1_only, recon_full), bsq_loss, quantized, full_ids)`` as upstream.
    Construct from a :class:`KronosTokenizerConfig`, from upstream-style keyword arguments, with
    :meth:`from_preset` or with :meth:`from_pretrained`.
    """

    config_class = KronosTokenizerConfig

    def __init__(self, config: KronosTokenizerConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = config if config is not None else KronosTokenizerConfig(**kwargs)
        c = self.config
        self.s1_bits, self.s2_bits = c.s1_bits, c.s2_bits
        self.codebook_dim = c.s1_bits + c.s2_bits
        self.embed = nn.Linear(c.d_in, c.d_model)
        self.head = nn.Linear(c.d_model, c.d_in)

        def blocks(count: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(c.d_model, c.n_heads, c.ff_dim, c.ffn_dropout_p, c.attn_dropout_p,
                                                  c.resid_dropout_p) for _ in range(count))

        # n_*_layers - 1 blocks: an upstream quirk that the published weights depend on.
        self.encoder = blocks(c.n_enc_layers - 1)
        self.decoder = blocks(c.n_dec_layers - 1)
        self.quant_embed = nn.Linear(c.d_model, self.codebook_dim)
        self.post_quant_embed_pre = nn.Linear(c.s1_bits, c.d_model)
        self.post_quant_embed = nn.Linear(self.codebook_dim, c.d_model)
        self.tokenizer = BSQuantizer(c.s1_bits, c.s2_bits, c.beta, c.gamma0, c.gamma, c.zeta, c.group_size)

    @classmethod
    def from_preset(cls, name: str) -> "KronosTokenizer":
        """Random initialisation of a named configuration (``tiny``, ``base``, ``2k``)."""
        return cls(resolve_preset(name, TOKENIZER_PRESETS, TOKENIZER_ALIASES, "tokenizer"))

    def encode_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output before quantization (``quant_embed``), [B, T, s1_bits + s2_bits]."""
        z = self.embed(x.to(self.embed.weight.dtype))
        for block in self.encoder:
            z = block(z)
        return self.quant_embed(z)

    def _decode_codes(self, codes: torch.Tensor, project: nn.Linear) -> torch.Tensor:
        z = project(codes)
        for block in self.decoder:
            z = block(z)
        return self.head(z)

    def forward(self, x: torch.Tensor):
        bsq_loss, quantized, ids = self.tokenizer(self.encode_latent(x))
        recon_pre = self._decode_codes(quantized[..., :self.s1_bits], self.post_quant_embed_pre)
        recon_full = self._decode_codes(quantized, self.post_quant_embed)
        return (recon_pre, recon_full), bsq_loss, quantized, ids

    def encode(self, x: torch.Tensor, half: bool = False):
        """Token ids of ``x`` [B, T, d_in]: (s1_ids, s2_ids) when ``half``, else composite ids."""
        _, _, ids = self.tokenizer(self.encode_latent(x), half=half, with_loss=False)
        return ids

    def decode(self, ids, half: bool = False) -> torch.Tensor:
        """Reconstruction [B, T, d_in] from (s1_ids, s2_ids) when ``half``, else from composite ids."""
        codes = self.tokenizer.indices_to_codes(ids, half)
        return self._decode_codes(codes.to(self.post_quant_embed.weight.dtype), self.post_quant_embed)
