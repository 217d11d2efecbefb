"""The monitor sections of a DeepSpeed JSON (``tensorboard``, ``csv_monitor``, ``wandb``, ``comet``), checked before
DeepSpeed sees them.

DeepSpeed builds its monitors inside ``deepspeed.initialize`` on rank 0, after every rank has built its model: a
missing package ends in an ImportError traceback (after a ``pip install`` hint on stdout), and an ``output_path``
that cannot hold a folder in an OSError traceback from ``os.makedirs``. Here each enabled section's package must be
importable and its log folder (``output_path/job_name``, as DeepSpeed joins them; relative to the working folder)
creatable, so either is one line naming the key before any process group exists. (The sections' keys and types
are checked with DeepSpeed's own models in ds_kronos.deepspeed_json.checks.)

The ``comet`` section and ``--comet`` cannot both be on: each starts a comet_ml experiment in rank 0's process, and
comet_ml ends the running experiment when another starts, so DeepSpeed's (started first, inside
``deepspeed.initialize``) would receive nothing, not even its own learning rate, and would still be archived or
uploaded as if complete.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from ds_kronos.config import output_dir_problems
from ds_kronos.errors import ConfigError

PACKAGES = {"tensorboard": ("tensorboard", "pip install '.[tensorboard]'"),
            "wandb": ("wandb", "pip install '.[wandb]'"),
            "comet": ("comet_ml", "pip install comet_ml")}
"""Section -> (the module DeepSpeed imports for it, how to get it). csv_monitor needs none."""
FOLDER_SECTIONS = ("tensorboard", "csv_monitor")
"""Sections that write into output_path/job_name (DeepSpeed's defaults: "" and "DeepSpeedJobName")."""


def monitor_sections(config: dict[str, Any]) -> dict[str, Any]:
    """The enabled monitor sections as DeepSpeed reads them, each with its own model (``"enabled": "yes"`` is on,
    as it is for DeepSpeed); a malformed section is left out: load_ds_config has reported it (DeepSpeed's message)."""
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
    from pydantic import ValidationError

    sections = {}
    for key, model in (("tensorboard", TensorBoardConfig), ("csv_monitor", CSVConfig), ("wandb", WandbConfig),
                       ("comet", CometConfig)):
        if isinstance(config.get(key), dict):
            try:
                section = model(**config[key])
            except (ValidationError, TypeError, ValueError):
                continue
            if section.enabled:
                sections[key] = section
    return sections


def monitor_log_dir(section: Any) -> str:
    """The folder DeepSpeed's TensorBoard and CSV monitors write into (their own join of the two keys)."""
    return os.path.join(section.output_path, section.job_name)


def monitor_problems(config: dict[str, Any], comet: str = "off") -> list[str]:
    """Problems of the enabled monitor sections that DeepSpeed would meet only inside ``deepspeed.initialize``, and a
    ``comet`` section next to ``--comet`` (``comet``: that option's value)."""
    problems = []
    sections = monitor_sections(config)
    if "comet" in sections and comet != "off":
        problems.append(f"comet.enabled and --comet {comet} would each start a comet_ml experiment, and comet_ml ends "
                        "the first (DeepSpeed's) when the second starts: use one of them")
    for key, section in sections.items():
        if key in PACKAGES:
            module, install = PACKAGES[key]
            if importlib.util.find_spec(module) is None:
                problems.append(f"{key}.enabled needs the {module} package, which is not installed ({install})")
        if key in FOLDER_SECTIONS:
            problems += output_dir_problems(f"{key}.output_path/job_name", monitor_log_dir(section))
    return problems


def check_monitors(config: dict[str, Any], path: str, comet: str = "off") -> None:
    """One ConfigError (one line) listing the problems of the DeepSpeed JSON read from ``path``'s monitors
    (``comet``: the run's --comet)."""
    problems = monitor_problems(config, comet)
    if problems:
        raise ConfigError(f"--deepspeed_config {path}: {'; '.join(problems)}")
