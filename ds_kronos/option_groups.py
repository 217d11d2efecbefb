"""Option groups and renamed options of the job configs (:mod:`ds_kronos.config` builds the parser from them).

A group is a kw-only dataclass of options that names its :class:`OptionGroup` in ``GROUP`` (litgpt's
``TrainArgs``/``EvalArgs`` style); a job's config inherits the groups it takes, so its attributes stay flat
(``config.save_every``) on the one config object. ``--help`` shows each group as an argument group, and a config file
may give a group's options as one section (``schedule: {epochs: 3}``) or flat, as before.

An option renamed so that one concept has one name across the jobs (``option(renamed_from=...)``) keeps its old
spelling for one release: hidden in ``--help``, accepted on the command line and in config files, and named in one
deprecation line on use.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Any

from ds_kronos.errors import ConfigError

_positions = itertools.count()


@dataclass(frozen=True)
class OptionGroup:
    """``key``: the section name in a config file; ``title``: the heading in ``--help``; groups are listed in the
    order they are declared."""

    key: str
    title: str
    position: int = dataclasses.field(default_factory=lambda: next(_positions), compare=False)


DATA = OptionGroup("data", "data")
MODEL = OptionGroup("model", "model")
SCHEDULE = OptionGroup("schedule", "schedule")
EVALUATION = OptionGroup("evaluation", "evaluation and selection")
CHECKPOINTING = OptionGroup("checkpointing", "checkpointing and reliability")
LOGGING = OptionGroup("logging", "logging")
PERFORMANCE = OptionGroup("performance", "performance")
FINETUNING = OptionGroup("finetuning", "fine-tuning")
PROCESSES = OptionGroup("processes", "processes")


def group_of(cls: type, name: str) -> OptionGroup | None:
    """The group of option ``name`` of config class ``cls``: that of the nearest class that declares the option and
    a ``GROUP`` (a job that only changes an inherited option's default keeps the option in its group)."""
    for klass in cls.__mro__:
        group = vars(klass).get("GROUP")
        if isinstance(group, OptionGroup) and name in vars(klass).get("__annotations__", {}):
            return group
    return None


def renamed_options(cls: type) -> dict[str, str]:
    """Old spelling -> current name, for every renamed option of ``cls``."""
    return {old: field.name for field in dataclasses.fields(cls) for old in field.metadata.get("renamed_from", ())}


def say_renamed(old: str, new: str, where: str = "") -> None:
    """The deprecation line, from the first rank only (every rank parses the same arguments)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"deprecated: {where}{old} is now {new}; the old name will be removed in the next release",
              file=sys.stderr, flush=True)


class RenamedFlag(argparse.Action):
    """An option's old spelling on the command line: says so, then stores the value under the current name (as a
    flat list for list options, like the current flag)."""

    def __call__(self, parser, namespace, values, option_string=None):
        say_renamed(option_string, f"--{self.dest}")
        if isinstance(values, list):
            values = [item for value in values for item in (value if isinstance(value, list) else [value])]
        setattr(namespace, self.dest, values)


def flat_values(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """A config mapping as flat current option names: each group section (``schedule: {...}``, a mapping under a
    group's key) is opened, and an old spelling is renamed with a deprecation line. An option given twice (in a
    section and flat, or under both names) is an error."""
    sections = {group.key for field in dataclasses.fields(cls) if (group := group_of(cls, field.name))}
    renamed = renamed_options(cls)
    flat: dict[str, Any] = {}
    for key, value in values.items():
        # No option takes a mapping, so a mapping under a group's key (which may also name an option: `data`) is a
        # section.
        entries = value.items() if key in sections and isinstance(value, dict) else [(key, value)]
        for name, item in entries:
            if name in renamed:
                say_renamed(name, renamed[name], f"{source}: ")
                name = renamed[name]
            if name in flat:
                raise ConfigError(f"{source}: option {name} is given twice")
            flat[name] = item
    return flat
