"""Model configurations and named presets.

A config's fields are exactly the constructor arguments of the upstream class, and therefore exactly the keys of
a published ``config.json`` (11 for the predictor, 16 for the tokenizer).

Presets:

=============  ==========  ===========================================================================
name           params      source
=============  ==========  ===========================================================================
tiny           ~0.4M       ours: tests and the CPU demo
mini           4,108,032   Kronos-mini (published)
small          24,741,376  Kronos-small (published)
base           102,310,592 Kronos-base (published)
large          499,246,976 OUR GUESS: the published Kronos-large (499.2M) has no released config; d_model
                           1664, 18 layers, ff 3072 reproduces the count, and n_heads 26 keeps head size 64
1b             1,040,777,216  ours, for scaling studies (d_model 2048, 24 layers, ff 4096)
3b             3,064,104,448  ours, for scaling studies (d_model 2560, 38 layers, ff 6912)
=============  ==========  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ds_kronos.errors import ModelFolderError

MAX_BITS = 16
"""Largest s1_bits / s2_bits accepted: embeddings and heads have 2**bits rows (65,536 at 16; 40 bits would ask for
terabytes before anything could fail cleanly)."""


@dataclass(kw_only=True, frozen=True)
class _HubConfig:
    """Shared (de)serialisation of a published ``config.json``."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "_HubConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing key(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unexpected key(s) {', '.join(unknown)}")
            raise ModelFolderError(f"{source}: not a {cls.__name__} config: {'; '.join(parts)}")
        config = cls(**{n: values[n] for n in names})
        problems = config.problems()
        if problems:
            raise ModelFolderError(f"{source}: invalid {cls.__name__}: {'; '.join(problems)}")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dict(sorted(dataclasses.asdict(self).items()))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def problems(self) -> list[str]:
        problems = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if field.name.endswith("_p"):
                if not (number and 0.0 <= value < 1.0):
                    problems.append(f"{field.name} must be in [0, 1), got {value!r}")
            elif field.type in ("int", int) and not (isinstance(value, int) and not isinstance(value, bool)
                                                   and value > 0):
                problems.append(f"{field.name} must be a positive integer, got {value!r}")
            elif field.type in ("float", float) and not (number and math.isfinite(value)):
                problems.append(f"{field.name} must be a finite number, got {value!r}")
            elif field.type in ("bool", bool) and not isinstance(value, bool):
                problems.append(f"{field.name} must be true or false, got {value!r}")
            elif field.name.endswith("_bits") and value > MAX_BITS:
                problems.append(f"{field.name} must be at most {MAX_BITS}, got {value}: the vocabulary has "
                                f"2**{field.name} entries (published models use 10)")
        return problems


@dataclass(kw_only=True, frozen=True)
class KronosConfig(_HubConfig):
    """Predictor (``Kronos``) configuration."""

    s1_bits: int = 10
    """Coarse-token bits; the s1 vocabulary has 2**s1_bits entries. Must equal the tokenizer's."""
    s2_bits: int = 10
    """Fine-token bits; the s2 vocabulary has 2**s2_bits entries. Must equal the tokenizer's."""
    n_layers: int = 8
    """Number of causal transformer blocks."""
    d_model: int = 512
    """Hidden size."""
    n_heads: int = 8
    """Self-attention heads (the dependency layer always has 4)."""
    ff_dim: int = 1024
    """SwiGLU inner size."""
    ffn_dropout_p: float = 0.0
    """Dropout after the feed-forward."""
    attn_dropout_p: float = 0.0
    """Dropout on attention probabilities."""
    resid_dropout_p: float = 0.0
    """Dropout on attention outputs."""
    token_dropout_p: float = 0.0
    """Dropout on the summed token + time embedding."""
    learn_te: bool = True
    """Learned temporal embeddings (True for every published model) or frozen sinusoidal tables."""

    def problems(self) -> list[str]:
        problems = super().problems()
        if not problems:
            if self.d_model % self.n_heads:
                problems.append(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            if self.d_model % 4:
                problems.append(f"d_model {self.d_model} is not divisible by the dependency layer's 4 heads")
            if (self.d_model // self.n_heads) % 2:
                problems.append("the attention head size must be even for rotary embeddings")
        return problems


@dataclass(kw_only=True, frozen=True)
class KronosTokenizerConfig(_HubConfig):
    """Tokenizer (``KronosTokenizer``) configuration."""

    d_in: int = 6
    """Input features per bar: open, high, low, close, volume, amount."""
    d_model: int = 256
    """Hidden size."""
    n_heads: int = 4
    """Attention heads."""
    ff_dim: int = 512
    """SwiGLU inner size."""
    n_enc_layers: int = 4
    """As upstream, the encoder has n_enc_layers - 1 blocks."""
    n_dec_layers: int = 4
    """As upstream, the decoder has n_dec_layers - 1 blocks."""
    ffn_dropout_p: float = 0.0
    """Dropout after the feed-forward."""
    attn_dropout_p: float = 0.0
    """Dropout on attention probabilities."""
    resid_dropout_p: float = 0.0
    """Dropout on attention outputs."""
    s1_bits: int = 10
    """Coarse bits (low bits of the composite id)."""
    s2_bits: int = 10
    """Fine bits (high bits of the composite id)."""
    beta: float = 0.05
    """Commitment loss weight."""
    gamma0: float = 1.0
    """Per-sample entropy weight."""
    gamma: float = 1.1
    """Codebook entropy weight."""
    zeta: float = 0.05
    """Weight of the whole entropy penalty."""
    group_size: int = 4
    """Entropy group size; must divide s1_bits + s2_bits (no numeric effect, see BinarySphericalQuantizer)."""

    def problems(self) -> list[str]:
        problems = super().problems()
        if not problems:
            if self.d_model % self.n_heads:
                problems.append(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            if (self.s1_bits + self.s2_bits) % self.group_size:
                problems.append(f"s1_bits + s2_bits = {self.s1_bits + self.s2_bits} is not divisible by "
                                f"group_size {self.group_size}")
        return problems


@dataclass(frozen=True)
class PredictorPreset:
    config: KronosConfig
    tokenizer: str
    """Name of the tokenizer preset it pairs with."""
    max_context: int
    """Context length the model is used with (not stored in config.json)."""
    published: str | None = None
    """Hub repository of the published weights, if any."""


def _predictor(d_model: int, n_layers: int, n_heads: int, ff_dim: int, dropout: tuple[float, float, float, float],
               **extra: Any) -> KronosConfig:
    attn, ffn, resid, token = dropout
    return KronosConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, ff_dim=ff_dim, attn_dropout_p=attn,
                        ffn_dropout_p=ffn, resid_dropout_p=resid, token_dropout_p=token, **extra)


_BASE_DROPOUT = (0.0, 0.2, 0.2, 0.0)

PREDICTOR_PRESETS: dict[str, PredictorPreset] = {
    "tiny": PredictorPreset(_predictor(64, 2, 4, 128, (0.0, 0.0, 0.0, 0.0)), "tiny", 512),
    "mini": PredictorPreset(_predictor(256, 4, 4, 512, _BASE_DROPOUT), "2k", 2048, "NeoQuasar/Kronos-mini"),
    "small": PredictorPreset(_predictor(512, 8, 8, 1024, (0.1, 0.25, 0.25, 0.1)), "base", 512,
                             "NeoQuasar/Kronos-small"),
    "base": PredictorPreset(_predictor(832, 12, 16, 2048, _BASE_DROPOUT), "base", 512, "NeoQuasar/Kronos-base"),
    "large": PredictorPreset(_predictor(1664, 18, 26, 3072, _BASE_DROPOUT), "base", 512),
    "1b": PredictorPreset(_predictor(2048, 24, 32, 4096, _BASE_DROPOUT), "base", 512),
    "3b": PredictorPreset(_predictor(2560, 38, 40, 6912, _BASE_DROPOUT), "base", 512),
}

TOKENIZER_PRESETS: dict[str, KronosTokenizerConfig] = {
    "tiny": KronosTokenizerConfig(d_model=64, n_heads=4, ff_dim=128, n_enc_layers=2, n_dec_layers=2),
    "base": KronosTokenizerConfig(group_size=4),
    "2k": KronosTokenizerConfig(group_size=5),
}
# Aliases by hub name, so `--tokenizer Kronos-Tokenizer-base` style names work as presets too.
TOKENIZER_ALIASES = {"kronos-tokenizer-base": "base", "kronos-tokenizer-2k": "2k"}
PREDICTOR_ALIASES = {f"kronos-{name}": name for name in ("mini", "small", "base", "large")}


def resolve_preset(name: str, presets: dict[str, Any], aliases: dict[str, str], kind: str) -> Any:
    key = aliases.get(name.lower(), name.lower())
    if key not in presets:
        raise ModelFolderError(f"unknown {kind} preset {name!r}; choose one of {', '.join(presets)}")
    return presets[key]

