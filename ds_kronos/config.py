"""Job configs: kw-only dataclasses with a docstring per field, loadable from YAML/JSON, overridable on the CLI.

Each job (data preparation, training, evaluation) has one dataclass. Fields are declared with :func:`option`,
which records the help text, in option groups that the job's dataclass inherits (:mod:`ds_kronos.option_groups`:
``--help`` shows them as argument groups); :func:`parse_config` builds the argument parser from the fields, reads
``--config FILE`` first, applies command-line overrides on top, then calls the dataclass's ``problems()`` method
and raises one :class:`ConfigError` that lists every problem (rather than stopping at the first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from ds_kronos.errors import ConfigError
from ds_kronos.option_groups import PROCESSES, RenamedFlag, flat_values, group_of

T = TypeVar("T")

DEFAULT_DIST_TIMEOUT_S = 600.0
"""How long a collective may wait for the other ranks before a job stops (``--dist_timeout`` of every job that
joins a process group): long enough for a slow checkpoint write or evaluation on another rank."""

DEFAULT_MAX_CONTEXT = 512
"""Most tokens the predictor sees when forecasting (upstream's KronosPredictor max_context); older history is
dropped. The forecast and evaluation jobs' ``--max_context`` default, and training's forecast validation."""

DEFAULT_TOP_P = 0.9
"""Nucleus sampling mass of the evaluation and forecast jobs and of :class:`ds_kronos.forecast.KronosForecaster`:
upstream's ``KronosPredictor.predict`` default. (The low-level ``ds_kronos.forecast.sampler`` functions keep
upstream's ``auto_regressive_inference`` default, :data:`ds_kronos.forecast.sampler.INFERENCE_TOP_P`.)"""


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Sequence[Any] | None = None,
           default_factory: Any = dataclasses.MISSING, cli: bool = True, nargs: str | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           renamed_from: Sequence[str] = ()) -> Any:
    """Declare a config field with its help text (shown by ``--help`` and in the docs).

    ``nargs="+"`` (list fields only) lets the flag take several space-separated values (``--csv a.csv b.csv``);
    each value may still be comma-separated, so the comma form keeps working. ``ge``/``gt``/``le``/``lt`` bound a
    number, or every item of a list of numbers (a None value, where the field allows it, is not checked);
    :func:`validate` reports a value outside. ``renamed_from``: the option's former names, still accepted for one
    release (:mod:`ds_kronos.option_groups`).
    """
    bounds = {key: value for key, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None}
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli, "nargs": nargs,
                "bounds": bounds, "renamed_from": tuple(renamed_from)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, optional?) for ``X | None`` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def option_types(cls: type) -> dict[str, Any]:
    """Each command-line option of the config class ``cls`` and the type of its value (``int`` for ``int | None``;
    ``list[str]`` stays a list type)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name])[0] for f in dataclasses.fields(cls) if f.metadata.get("cli", True)}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        # No option means anything with NaN, and every comparison with it is false: refuse it here, once.
        raise ValueError(f"not a number: {text!r}")
    return value


_parse_float.__name__ = "float"  # argparse names the converter in its message: "invalid float value: 'x'"


def _converter(tp: Any, optional: bool):
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        convert_item = _converter(item, False)

        def convert_list(text: str):
            if optional and text.lower() in ("", "none", "null"):
                return None
            return [convert_item(part) for part in text.split(",") if part.strip()]
        convert_list.__name__ = f"list of {getattr(item, '__name__', 'str')}"
        return convert_list
    base = {bool: _parse_bool, int: int, float: _parse_float, str: str}.get(tp, str)

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)
    convert.__name__ = getattr(tp, "__name__", "str")
    return convert


def _type_name(tp: Any, optional: bool) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        name = "a list of " + {bool: "true/false values", int: "integers", float: "numbers"}.get(item, "strings")
    else:
        name = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, "a string")
    return f"{name} (or null)" if optional else name


def _from_file(value: Any, tp: Any, optional: bool) -> Any:
    """A value read from a YAML/JSON file as the field's type, converted as the command line would convert its
    text (YAML reads ``1e-4`` as a string and dates as dates); raises ValueError when it cannot be."""
    if value is None:
        if optional:
            return None
        raise ValueError("null")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (str,)
        if isinstance(value, str):
            return _converter(tp, optional)(value)
        if isinstance(value, dict):
            raise ValueError("not a list")
        # A single value is a list of one, as on the command line.
        return [_from_file(v, item, False) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if isinstance(value, (dict, list, tuple)):
        raise ValueError("not a single value")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return _parse_bool(value)
        raise ValueError("not true/false")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError("a boolean")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else int(str(value))
    if tp is float:
        if isinstance(value, bool):
            raise ValueError("a boolean")
        number = float(value) if isinstance(value, (int, float)) else _parse_float(str(value))
        if math.isnan(number):
            raise ValueError("NaN")
        return number
    return str(value)


class _FlattenLists(argparse.Action):
    """Store the values of an ``nargs`` list flag as one flat list (each token was already split on commas)."""

    def __call__(self, parser, namespace, values, option_string=None):
        flat = [item for value in values for item in (value if isinstance(value, list) else [value])]
        setattr(namespace, self.dest, flat)


def load_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON mapping of option names to values."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path}: not found")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; both are the user's file being malformed
        raise ConfigError(f"config file {path}: cannot parse: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of option names to values")
    return data


def from_mapping(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys with their names and values of the wrong type with
    the option, the expected type and the value (all at once). Group sections and old option names are accepted
    (:func:`ds_kronos.option_groups.flat_values`)."""
    values = flat_values(cls, values, source)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(map(str, unknown))}; known: "
                          f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    converted, problems = {}, []
    for name, value in values.items():
        tp, optional = _base_type(hints[name])
        optional = optional or fields[name].default is None  # e.g. `data: str = option(None)`: null means unset
        try:
            converted[name] = _from_file(value, tp, optional)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            problems.append(f"option {name}: expected {_type_name(tp, optional)}, got {value!r}")
            continue
        choices = fields[name].metadata.get("choices")
        if choices and converted[name] not in choices:
            problems.append(f"option {name}: {converted[name]!r} is not one of {', '.join(map(str, choices))}")
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return cls(**converted)


class _Parser(argparse.ArgumentParser):
    """argparse that raises a ConfigError (one line) instead of printing the whole usage before its message."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message} (see --help)")


def build_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """The job's parser: one argument group per option group (:mod:`ds_kronos.option_groups`) in their declared
    order, options without a group beside ``--config``; old names of renamed options hidden."""
    parser = _Parser(description=description or (cls.__doc__ or "").strip().split("\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML or JSON file with option values (CLI flags win); "
                                                        "flat, or in sections named by the groups below")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    groups = sorted({g for f in fields if (g := group_of(cls, f.name))}, key=lambda g: g.position)
    containers: dict[Any, Any] = {None: parser, **{g: parser.add_argument_group(g.title) for g in groups}}
    for field in fields:
        tp, optional = _base_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
        text = field.metadata.get("help", "")
        # Help that already explains its default (e.g. "default: the preset's max_context") keeps its wording.
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS,
                                  "help": text if "default" in text else f"{text} (default: {default!r})"}
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        if tp is bool:
            # `--flag` alone means true; `--flag false` is accepted too.
            kwargs.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        else:
            kwargs["type"] = _converter(tp, optional)
            if field.metadata.get("nargs"):
                kwargs.update(nargs=field.metadata["nargs"], action=_FlattenLists)
        containers[group_of(cls, field.name)].add_argument(f"--{field.name}", **kwargs)
        for old in field.metadata.get("renamed_from", ()):
            parser.add_argument(f"--{old}", **{**kwargs, "dest": field.name, "action": RenamedFlag,
                                               "help": argparse.SUPPRESS})
    return parser


def parse_config(cls: type[T], argv: Sequence[str] | None = None, description: str | None = None,
                 parser: argparse.ArgumentParser | None = None) -> T:
    """Defaults <- ``--config`` file <- command-line flags, then validate (all problems at once)."""
    parser = parser or build_parser(cls, description)
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise ConfigError(f"unrecognised argument(s): {' '.join(extra)} (see --help)")
    values: dict[str, Any] = {}
    if args.config:
        values.update(flat_values(cls, load_file(args.config), args.config))
    values.update({k: v for k, v in vars(args).items() if k != "config"})
    config = from_mapping(cls, values, source=args.config or "command line")
    validate(config)
    return config


def problems_of(check: typing.Callable[[], object]) -> list[str]:
    """Run ``check`` (a parser or loader that raises :class:`ConfigError`): its message as the one problem, or none.
    How an option's own parser joins the list of problems that config validation reports together."""
    try:
        check()
    except ConfigError as exc:
        return [str(exc)]
    return []


def output_dir_problems(flag: str, path: str | None) -> list[str]:
    """A folder a job will write into: it must not be a file, nor lie below one, and the nearest existing folder
    on its way must be writable. Nothing is created here."""
    if not path:
        return []
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        return [f"{flag} {path}: is a file, not a folder"]
    ancestor = target
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return [f"{flag} {path}: {ancestor} is a file, not a folder"]
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return [f"{flag} {path}: folder {ancestor} is not writable"]
    return []


def _describe_bounds(bounds: dict[str, float]) -> str:
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    symbol, value = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}, next(iter(bounds.items()))
    return f"{symbol[value[0]]} {value[1]:g}"


def _inside(value: float, bounds: dict[str, float]) -> bool:
    return (("ge" not in bounds or value >= bounds["ge"]) and ("gt" not in bounds or value > bounds["gt"])
            and ("le" not in bounds or value <= bounds["le"]) and ("lt" not in bounds or value < bounds["lt"]))


def bound_problems(config: Any) -> list[str]:
    """The declared ``ge``/``gt``/``le``/``lt`` bounds of every field, or of every item of a list field (NaN is
    outside any bound)."""
    problems = []
    for field in dataclasses.fields(config):
        bounds, value = field.metadata.get("bounds") or {}, getattr(config, field.name)
        if not bounds or value is None or isinstance(value, bool):
            continue
        if isinstance(value, (list, tuple)):
            outside = [item for item in value if not _inside(item, bounds)]
            if outside:
                problems.append(f"--{field.name} must be {_describe_bounds(bounds)}, got "
                                f"{', '.join(f'{item:g}' for item in outside)}")
        elif not _inside(value, bounds):
            problems.append(f"--{field.name} must be {_describe_bounds(bounds)}, got {value}")
    return problems


def validate(config: Any) -> None:
    """Check the declared bounds and call ``config.problems()``; raise one ConfigError listing every problem."""
    problems = bound_problems(config) if dataclasses.is_dataclass(config) else []
    problems += list(config.problems()) if hasattr(config, "problems") else []
    if problems:
        if len(problems) == 1:
            raise ConfigError(problems[0])
        raise ConfigError(f"{len(problems)} problems in the configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


@dataclass(kw_only=True)
class ProcessOptions:
    """The options of a job's process (every job that joins a process group through the deepspeed launcher)."""

    GROUP = PROCESSES

    local_rank: int = option(-1, help="set by the deepspeed launcher")
    threads: int | None = option(None, help="torch threads per process (default: CPU cores / local processes)", ge=1)
    dist_timeout: float = option(DEFAULT_DIST_TIMEOUT_S, gt=0, help="seconds a collective may wait for the other "
                                 "ranks before the job stops and names the rank that stopped answering")
