"""The sampler settings a model folder recommends: ``sampler.json``, written by ``launch/calibrate.py``.

The file is plain JSON checked against a small schema (it is read with :func:`json.loads`, never executed or
unpickled), so a file that is not ours, or holds a value out of range, is one clear line. Upstream's loader
ignores it. Which settings a job uses, in order: an explicit option (``--temperature``, ``--top_p``,
``--spread``), else the predictor folder's ``sampler.json`` (unless ``--sampler_file false``), else upstream's
defaults (T 1.0, top-p 0.9, and no spread factor: 1.0).

The spread factor scales each origin's sampled paths around their mean (:func:`ds_kronos.forecast.sampler.widen_paths`),
an ensemble post-processing step fitted on validation by ``launch/calibrate.py``. Version 2 of the file added it; a
version-1 file (no ``spread``) still reads, with spread 1.0.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

from ds_kronos.config import DEFAULT_TOP_P
from ds_kronos.errors import ConfigError
from ds_kronos.jsonio import write_json_atomic

SAMPLER_FILE = "sampler.json"
FORMAT = "ds_kronos.sampler"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 had no spread factor
DEFAULT_TEMPERATURE = 1.0
MAX_TEMPERATURE = 100.0  # a larger value samples uniformly in practice: a file asking for it is not sane
DEFAULT_SPREAD = 1.0  # the paths as sampled
MAX_SPREAD = 10.0  # ten times the sampled spread is no longer a correction of the model's paths: not sane
MAX_FILE_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Temperature, nucleus mass and spread factor of the sampler, and where each came from."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    spread: float = DEFAULT_SPREAD
    sources: dict[str, str] = dataclasses.field(default_factory=lambda: {"temperature": "default", "top_p": "default",
                                                                          "spread": "default"})
    file: str | None = None                 # the sampler.json read, if any
    calibration: dict[str, Any] | None = None  # what that file says about how it was chosen

    def describe(self) -> dict[str, Any]:
        """The report's ``sampler`` section."""
        return {"temperature": self.temperature, "top_p": self.top_p, "spread": self.spread,
                "sources": dict(self.sources), "file": self.file, "calibration": self.calibration}


def _number(value: Any, name: str, path: Path, low: float, high: float, low_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{path}: {name!r} must be a number in {bound}, got {value!r}")
    return float(value)


def read_sampler_file(path: str | Path) -> SamplerSettings:
    """Parse and check a sampler.json; a file that is not ours or is out of range raises one ConfigError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: not a ds_kronos sampler file (larger than {MAX_FILE_BYTES} bytes)")
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON sampler file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a ds_kronos sampler file (expected \"format\": \"{FORMAT}\"; written by "
                          f"launch/calibrate.py); remove it or pass --sampler_file false")
    version = payload.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ConfigError(f"{path}: sampler file version {version!r}, this ds_kronos reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))}")
    temperature = _number(payload.get("temperature"), "temperature", path, 0.0, MAX_TEMPERATURE, True)
    top_p = _number(payload.get("top_p"), "top_p", path, 0.0, 1.0, True)
    spread = (DEFAULT_SPREAD if version == 1 else
              _number(payload.get("spread"), "spread", path, 0.0, MAX_SPREAD, True))
    calibration = payload.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise ConfigError(f"{path}: 'calibration' must be an object, got {type(calibration).__name__}")
    source = f"{SAMPLER_FILE} ({path})"
    return SamplerSettings(temperature, top_p, spread, {"temperature": source, "top_p": source, "spread": source},
                           str(path), calibration)


def sampler_file_of(predictor: str | None) -> Path | None:
    """The sampler.json of a predictor model folder, if there is one (a preset name has none)."""
    if not predictor:
        return None
    candidate = Path(predictor) / SAMPLER_FILE
    return candidate if candidate.is_file() else None


def resolve_sampler(predictor: str | None, temperature: float | None, top_p: float | None,
                    use_file: bool = True, spread: float | None = None) -> SamplerSettings:
    """The settings a job samples with: explicit values, else the folder's sampler.json, else the defaults."""
    path = sampler_file_of(predictor) if use_file else None
    base = read_sampler_file(path) if path is not None else SamplerSettings()
    explicit = {name: float(value) for name, value in
                (("temperature", temperature), ("top_p", top_p), ("spread", spread)) if value is not None}
    sources = {**base.sources, **{name: "command line" for name in explicit}}
    return dataclasses.replace(base, **explicit, sources=sources)


def write_sampler_file(path: str | Path, temperature: float, top_p: float, spread: float,
                       calibration: dict[str, Any]) -> Path:
    """Write a sampler.json atomically (a reader never sees half a file); returns its path."""
    path = Path(path)
    write_json_atomic(path, {"format": FORMAT, "version": VERSION, "temperature": float(temperature),
                             "top_p": float(top_p), "spread": float(spread), "calibration": calibration})
    return path


def selection_sampler_writer(settings: SamplerSettings) -> Callable[[Path], None]:
    """What a training run adds to each export when it scores forecasts
    (ds_kronos.train.validation.forecast_validation): the
    sampler settings those forecasts were sampled with, as the folder's sampler.json, so that a job reading the
    export (``evaluate.py --predictor best_model``) samples it as the selection scored it. The calibration says where
    they came from (a start folder's sampler.json was fitted to the start model, not to this one)."""
    calibration = {"source": "the sampler settings of the training run's forecast validation",
                   "settings_from": dict(settings.sources), "file": settings.file,
                   "file_calibration": settings.calibration}

    def write(folder: Path) -> None:
        write_sampler_file(folder / SAMPLER_FILE, settings.temperature, settings.top_p, settings.spread, calibration)
    return write
