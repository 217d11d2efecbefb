"""Binary spherical quantization (BSQ, arXiv:2406.07548) with Kronos's split into coarse (s1) and fine (s2) bits.

Token ids put the s1 bits in the LOW bits: ``full_id = s1_id + (s2_id << s1_bits)``. That order defines the
published vocabularies and must not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LOG_EPS = 1e-8


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs + _LOG_EPS)).sum(dim=-1)


class BinarySphericalQuantizer(nn.Module):
    """Sign quantizer on the unit sphere with commitment and entropy regularisers.

    The loss follows upstream's configuration of the reference implementation (soft entropy, analytical
    per-sample entropy, l2-normalised codes, inverse temperature 1). In that configuration the codebook entropy
    is computed from the per-bit probabilities, so ``group_size`` does not change any number; it is kept because
    it is part of the published config and of the state dict (``group_basis``).
    """

    def __init__(self, embed_dim: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int):
        super().__init__()
        if embed_dim % group_size:
            raise ValueError(f"codebook size {embed_dim} is not divisible by group_size {group_size}")
        self.embed_dim = embed_dim
        self.beta = beta
        self.gamma0 = gamma0
        self.gamma = gamma
        self.zeta = zeta
        self.group_size = group_size
        self.register_buffer("basis", 2 ** torch.arange(embed_dim - 1, -1, -1))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1))

    @property
    def scale(self) -> float:
        return 1.0 / self.embed_dim ** 0.5

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Signs of ``z`` scaled to the sphere, with a straight-through gradient."""
        signs = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        return (z + (signs - z).detach()) * self.scale

    def loss(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        """Commitment loss + zeta * (gamma0 * per-sample entropy - gamma * codebook entropy)."""
        p_negative = torch.sigmoid(-4.0 * z * self.scale)
        bit_probs = torch.stack([p_negative, 1.0 - p_negative], dim=-1)  # [..., D, 2]
        per_sample_entropy = _entropy(bit_probs).sum(dim=-1).mean()
        mean_bit_probs = bit_probs.reshape(-1, self.embed_dim, 2).mean(dim=0)
        codebook_entropy = _entropy(mean_bit_probs).sum()
        commit_loss = self.beta * ((zq.detach() - z) ** 2).sum(dim=-1).mean()
        return commit_loss + self.zeta * (self.gamma0 * per_sample_entropy - self.gamma * codebook_entropy)

    def forward(self, z: torch.Tensor, with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        zq = self.quantize(z)
        return zq, (self.loss(z, zq) if with_loss else zq.new_zeros(()))


class BSQuantizer(nn.Module):
    """L2-normalises the encoder output, quantizes it and turns the bits into s1/s2 (or composite) ids."""

    def __init__(self, s1_bits: int, s2_bits: int, beta: float, gamma0: float, gamma: float, zeta: float,
                 group_size: int):
        super().__init__()
        self.s1_bits = s1_bits
        self.s2_bits = s2_bits
        self.codebook_dim = s1_bits + s2_bits
        self.bsq = BinarySphericalQuantizer(self.codebook_dim, beta, gamma0, gamma, zeta, group_size)

    @staticmethod
    def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
        """Little-endian: the first bit is the least significant."""
        weights = 2 ** torch.arange(bits.shape[-1], dtype=torch.long, device=bits.device)
        return ((bits >= 0).long() * weights).sum(dim=-1)

    def forward(self, z: torch.Tensor, half: bool = False, with_loss: bool = True):
        """Returns (bsq_loss, quantized codes, ids): ids are (s1_ids, s2_ids) when ``half`` else composite ids."""
        quantized, bsq_loss = self.bsq(F.normalize(z, dim=-1), with_loss=with_loss)
        if half:
            ids = (self.bits_to_indices(quantized[..., :self.s1_bits]),
                   self.bits_to_indices(quantized[..., self.s1_bits:]))
        else:
            ids = self.bits_to_indices(quantized)
        return bsq_loss, quantized, ids

    def indices_to_codes(self, ids, half: bool) -> torch.Tensor:
        """Inverse of the id computation: ids -> scaled +-1 codes ([..., s1_bits + s2_bits]).

        Differs from upstream: upstream's ``half=True`` path extracts ``codebook_dim // 2`` bits from both ids,
        which is only right when s1_bits == s2_bits (true of every published model); here each part uses its own
        width.
        """
        if half:
            s1_ids, s2_ids = ids
            bits = torch.cat([_unpack_bits(s1_ids, self.s1_bits), _unpack_bits(s2_ids, self.s2_bits)], dim=-1)
        else:
            bits = _unpack_bits(ids, self.codebook_dim)
        return (bits.float() * 2 - 1) * self.bsq.scale


def _unpack_bits(ids: torch.Tensor, n_bits: int) -> torch.Tensor:
    mask = 2 ** torch.arange(n_bits, device=ids.device, dtype=torch.long)
    return (ids.long().unsqueeze(-1) & mask) != 0
