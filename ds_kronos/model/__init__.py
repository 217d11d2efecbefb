"""The Kronos model family: tokenizer, predictor, their configs/presets and the published model format."""

from ds_kronos.model.configs import (
    PREDICTOR_PRESETS,
    TOKENIZER_PRESETS,
    KronosConfig,
    KronosTokenizerConfig,
    PredictorPreset,
)
from ds_kronos.model.pairing import check_pair
from ds_kronos.model.predictor import Kronos, preset
from ds_kronos.model.published import CONFIG_NAME, WEIGHTS_NAME, resolve_folder
from ds_kronos.model.tokenizer import KronosTokenizer

__all__ = ["CONFIG_NAME", "PREDICTOR_PRESETS", "TOKENIZER_PRESETS", "WEIGHTS_NAME", "Kronos", "KronosConfig",
           "KronosTokenizer", "KronosTokenizerConfig", "PredictorPreset", "check_pair", "preset", "resolve_folder"]
