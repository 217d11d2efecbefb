"""Whether a tokenizer and a predictor can work together (shared by training, evaluation and forecasting)."""

from __future__ import annotations

from ds_kronos.errors import UserError
from ds_kronos.model.predictor import Kronos
from ds_kronos.model.tokenizer import KronosTokenizer


def check_pair(tokenizer: KronosTokenizer, predictor: Kronos) -> None:
    """Refuse a tokenizer/predictor pair whose vocabularies differ (they would load, then produce garbage)."""
    t, p = tokenizer.config, predictor.config
    if (t.s1_bits, t.s2_bits) != (p.s1_bits, p.s2_bits):
        raise UserError(f"tokenizer and predictor do not match: tokenizer has s1/s2 bits {t.s1_bits}/{t.s2_bits}, "
                        f"predictor {p.s1_bits}/{p.s2_bits}")
