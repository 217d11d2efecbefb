"""The search space: which ``launch/train.py`` options a sweep varies, over which ranges or choices.

A YAML or JSON mapping from option names of the train config (:class:`ds_kronos.train.config.TrainConfig`) to

- a range, ``{low: L, high: H}``, with ``log: true`` (sampled uniformly in log space) or ``step: S`` (a grid),
  for an option that takes a number (an integer option draws integers);
- choices, ``{choices: [a, b, ...]}`` or simply ``[a, b, ...]``, for any option (a list option's choice is one
  comma-separated string, as on the command line).

Every value is checked against the option before the first trial, as the command line would check it: its type,
its declared bounds and choices. The options each trial gets from the sweep (``--save_dir``; ``--resume`` and
``--exit_after_steps`` make no sense per trial; ``--local_rank`` is the launcher's) cannot be swept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ds_kronos.config import bound_problems, from_mapping, load_file, option_types
from ds_kronos.errors import ConfigError
from ds_kronos.train.config import TrainConfig

SET_BY_THE_SWEEP = ("save_dir", "resume", "exit_after_steps", "local_rank")
RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Dimension:
    """One swept option: a range of numbers (``kind`` int or float) or a list of choices (``kind`` choice)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """This option's value for an Optuna trial (the study's sampler draws it)."""
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        scale = ", log" if self.log else f", step {self.step:g}" if self.step else ""
        return f"{self.name} in [{self.low:g}, {self.high:g}{scale}]"


def command_line_value(value: Any) -> str:
    """A drawn value as train.py's command line takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def suggest(self, trial) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dimensions}

    @staticmethod
    def arguments(params: dict[str, Any]) -> list[str]:
        """``--name value`` for each drawn parameter."""
        return [part for name, value in params.items() for part in (f"--{name}", command_line_value(value))]

    def describe(self) -> str:
        return "; ".join(d.describe() for d in self.dimensions)


def _checked_value(name: str, raw: Any, what: str, problems: list[str]) -> Any:
    """``raw`` converted as the option's value (None after recording a problem)."""
    try:
        config = from_mapping(TrainConfig, {name: raw}, source=what)
    except ConfigError as exc:
        problems.append(str(exc))
        return None
    outside = [p for p in bound_problems(config) if p.startswith(f"--{name} ")]
    if outside:
        problems.append(f"{name} {what}: {outside[0]}")
        return None
    return getattr(config, name)


def _choices(name: str, raw: Any, problems: list[str]) -> Dimension | None:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{name}: choices must be a non-empty list, got {raw!r}")
        return None
    values = []
    for item in raw:
        value = _checked_value(name, item, f"choice {item!r}", problems)
        if isinstance(value, list):  # a list option: Optuna's choices are plain values, the command line's text
            value = item if isinstance(item, str) else None
            if value is None:
                problems.append(f"{name}: each choice is one comma-separated string, got {item!r}")
        values.append(value)
    if len(set(map(repr, values))) < len(values):
        problems.append(f"{name}: choices repeat a value: {raw!r}")
    return Dimension(name, "choice", choices=tuple(values))


def _range(name: str, spec: dict[str, Any], kind: type, problems: list[str]) -> Dimension | None:
    if kind not in (int, float):
        problems.append(f"{name} takes {kind.__name__ if isinstance(kind, type) else kind} values: give choices "
                        f"({{choices: [...]}}), not a range")
        return None
    unknown = sorted(set(spec) - RANGE_KEYS)
    if unknown or not {"low", "high"} <= set(spec):
        problems.append(f"{name}: a range is {{low: L, high: H}} with optional log: true or step: S (or choices: "
                        f"[...]), got keys {', '.join(map(str, spec))}")
        return None
    count = len(problems)
    low = _checked_value(name, spec["low"], f"low {spec['low']!r}", problems)
    high = _checked_value(name, spec["high"], f"high {spec['high']!r}", problems)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        problems.append(f"{name}: log must be true or false, got {log!r}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0 or \
                (kind is int and not float(step).is_integer()):
            problems.append(f"{name}: step must be a positive {'integer' if kind is int else 'number'}, got {step!r}")
        elif log is True:
            problems.append(f"{name}: a range has either log: true or a step, not both")
    if len(problems) > count:
        return None
    if not low < high:
        problems.append(f"{name}: low ({low:g}) must be below high ({high:g})")
    elif log and low <= 0:
        problems.append(f"{name}: a log range needs low > 0, got {low:g}")
    elif kind is float and not (math.isfinite(low) and math.isfinite(high)):
        problems.append(f"{name}: low and high must be finite")
    return None if len(problems) > count else Dimension(name, kind.__name__, float(low), float(high), log,
                                                        None if step is None else float(step))


def load_space(path: str) -> SearchSpace:
    """Read and check the search space file: one ConfigError naming every problem, on one line."""
    entries = load_file(path)
    if not entries:
        raise ConfigError(f"--space {path}: no option to sweep")
    types = option_types(TrainConfig)
    problems: list[str] = []
    dimensions = []
    for name, spec in entries.items():
        if name in SET_BY_THE_SWEEP:
            problems.append(f"{name}: set by the sweep for each trial, not a search dimension")
        elif name not in types:
            problems.append(f"{name}: not an option of launch/train.py (see launch/train.py --help)")
        elif isinstance(spec, list) or (isinstance(spec, dict) and "choices" in spec):
            extra = sorted(set(spec) - {"choices"}) if isinstance(spec, dict) else []
            if extra:
                problems.append(f"{name}: choices take no {', '.join(extra)}")
            dimensions.append(_choices(name, spec if isinstance(spec, list) else spec["choices"], problems))
        elif isinstance(spec, dict):
            dimensions.append(_range(name, spec, types[name], problems))
        else:
            problems.append(f"{name}: expected a range {{low: L, high: H}} or choices [...], got {spec!r}")
    if problems:
        raise ConfigError(f"--space {path}: {'; '.join(problems)}")
    return SearchSpace(tuple(dimensions))
