"""Checking a DeepSpeed JSON before DeepSpeed sees it, so a mistake ends in one line naming the key.

DeepSpeed validates late (inside ``deepspeed.initialize``, after every rank has built its model) and answers a
wrong type with a traceback, or not at all: an unknown top-level key is silently ignored, so a misspelt
``"zero_optimisation"`` trains without ZeRO. The rules come from DeepSpeed itself wherever it has them: its
pydantic models for the ZeRO, fp16, bf16, monitor and compile sections, its list of optimizers and schedulers,
the keys it has removed (with its own message), and the key names its config modules define. The rest are the
values this project's trainer fills or relies on (batch sizes, learning rate, scheduler steps).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import re
from typing import Any, Callable

from ds_kronos.errors import ConfigError

AUTO = "auto"
_KEY = re.compile(r"[a-z][a-z0-9_]*")
# Modules whose UPPER_CASE string constants name DeepSpeed config keys (a superset of the top-level keys: nested
# names too, so a valid key is never refused; a misspelt top-level key is still caught).
_CONSTANT_MODULES = (
    "deepspeed.runtime.constants", "deepspeed.runtime.config", "deepspeed.runtime.zero.config",
    "deepspeed.runtime.activation_checkpointing.config", "deepspeed.profiling.constants", "deepspeed.comm.constants",
    "deepspeed.runtime.data_pipeline.constants", "deepspeed.runtime.swap_tensor.constants",
    "deepspeed.autotuning.constants", "deepspeed.runtime.model_checkpointing.constants",
    "deepspeed.runtime.precision_config", "deepspeed.monitor.config", "deepspeed.utils.config",
    "deepspeed.datastates.config", "deepspeed.compile.config",
)
# Modules that read top-level keys by literal name rather than through a constant.
_LITERAL_MODULES = ("deepspeed.runtime.config", "deepspeed.monitor.config")
_EXTRA_KEYS = frozenset({"tensor_parallel"})  # read in deepspeed/__init__.py by literal name
_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
_OBJECT_SECTIONS = ("optimizer", "scheduler", "zero_optimization", "fp16", "bf16", "bfloat16",
                    "activation_checkpointing", "flops_profiler", "tensorboard", "wandb", "csv_monitor", "comet",
                    "checkpoint", "aio", "data_types", "autotuning", "data_efficiency", "pipeline", "torch_autocast",
                    "compile", "hybrid_engine", "weight_quantization", "comms_logger", "timers", "tensor_parallel")


@functools.lru_cache(maxsize=1)
def known_top_level_keys() -> frozenset[str]:
    keys = set(_EXTRA_KEYS)
    for name in _CONSTANT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue  # moved or removed in this DeepSpeed version
        keys.update(v for k, v in vars(module).items() if k.isupper() and isinstance(v, str) and _KEY.fullmatch(v))
    for name in _LITERAL_MODULES:
        keys.update(re.findall(r"[\"']([a-z][a-z0-9_]*)[\"']", inspect.getsource(importlib.import_module(name))))
    return frozenset(keys - set(removed_top_level_keys()))


def removed_top_level_keys() -> dict[str, str]:
    """Keys DeepSpeed has removed, with its own explanation (empty for versions that do not list them)."""
    import deepspeed.runtime.config as ds_runtime_config

    return dict(getattr(ds_runtime_config, "_REMOVED_TOP_LEVEL_CONFIG_KEYS", {}))


def _close(name: str, candidates: Any) -> str:
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_value(problems: list[str], where: str, value: Any, ok: Callable[[Any], bool], expected: str,
                 auto: bool = False) -> None:
    if auto and value == AUTO:
        return
    if not ok(value):
        alternative = ' or "auto"' if auto else ""
        problems.append(f"{where} must be {expected}{alternative}, got {value!r}")


def _pydantic_problems(section: str, values: dict, model: type) -> list[str]:
    """DeepSpeed's own model of a section; each of its complaints as 'section.key: message'."""
    from pydantic import ValidationError

    try:
        model(**values)
    except ValidationError as exc:
        problems = []
        fields = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
        for error in exc.errors():
            loc = ".".join(str(part) for part in (section, *error["loc"]))
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown key {loc}{_close(str(error['loc'][-1]), fields)}")
            else:
                message = error["msg"][0].lower() + error["msg"][1:]
                problems.append(f"{loc}: {message}, got {error.get('input')!r}")
        return problems
    except (TypeError, ValueError, AssertionError) as exc:  # validators that raise outside pydantic's wrapping
        return [f"{section}: {exc}"]
    return []


def _optimizer_problems(section: dict) -> list[str]:
    import torch
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS

    problems: list[str] = []
    name = section.get("type")
    torch_names = sorted(n for n, v in vars(torch.optim).items()
                         if isinstance(v, type) and issubclass(v, torch.optim.Optimizer) and n != "Optimizer")
    if not isinstance(name, str) or not name:
        problems.append(f"optimizer.type must be an optimizer name such as \"AdamW\", got {name!r}")
    elif name.lower() not in DEEPSPEED_OPTIMIZERS and name not in torch_names:
        problems.append(f"optimizer.type {name!r} is not an optimizer DeepSpeed knows"
                        f"{_close(name, set(DEEPSPEED_OPTIMIZERS) | set(torch_names))}; known: "
                        f"{', '.join(DEEPSPEED_OPTIMIZERS)} (any case) or a torch.optim class")
    params = section.get("params", {})
    if not isinstance(params, dict):
        return problems + [f"optimizer.params must be an object, got {params!r}"]
    if "lr" in params:
        _check_value(problems, "optimizer.params.lr", params["lr"], lambda v: _number(v) and v > 0,
                     "a positive number", auto=True)
    if "betas" in params:
        _check_value(problems, "optimizer.params.betas", params["betas"],
                     lambda v: isinstance(v, list) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
                     "two numbers in [0, 1)")
    if "eps" in params:
        _check_value(problems, "optimizer.params.eps", params["eps"], lambda v: _number(v) and v > 0,
                     "a positive number")
    if "weight_decay" in params:
        _check_value(problems, "optimizer.params.weight_decay", params["weight_decay"],
                     lambda v: _number(v) and v >= 0, "a number >= 0")
    return problems


def _scheduler_problems(section: dict) -> list[str]:
    import torch
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES

    problems: list[str] = []
    name = section.get("type")
    if not isinstance(name, str) or not (name in VALID_LR_SCHEDULES or hasattr(torch.optim.lr_scheduler, name)):
        problems.append(f"scheduler.type {name!r} is not a scheduler DeepSpeed knows"
                        f"{_close(str(name), VALID_LR_SCHEDULES)}; known: {', '.join(VALID_LR_SCHEDULES)} or a "
                        f"torch.optim.lr_scheduler class")
    params = section.get("params", {})
    if not isinstance(params, dict):
        return problems + [f"scheduler.params must be an object, got {params!r}"]
    for key, minimum in (("total_num_steps", 1), ("warmup_num_steps", 0)):
        if key in params:
            _check_value(problems, f"scheduler.params.{key}", params[key], lambda v, m=minimum: _count(v, m),
                         f"an integer >= {minimum}", auto=True)
    for key in ("warmup_max_lr", "cycle_max_lr"):
        if key in params:
            _check_value(problems, f"scheduler.params.{key}", params[key], lambda v: _number(v) and v > 0,
                         "a positive number", auto=True)
    return problems


def _section_models() -> dict[str, type]:
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    return {"zero_optimization": DeepSpeedZeroConfig, "fp16": DeepSpeedFP16Config, "bf16": DeepSpeedBF16Config,
            "bfloat16": DeepSpeedBF16Config, "tensorboard": TensorBoardConfig, "csv_monitor": CSVConfig,
            "wandb": WandbConfig, "comet": CometConfig}


def ds_config_problems(config: dict[str, Any]) -> list[str]:
    """Every problem found in a DeepSpeed JSON object, each naming its key; [] when DeepSpeed may have it."""
    problems: list[str] = []
    removed = removed_top_level_keys()
    known = known_top_level_keys()
    for key in config:
        if key in removed:
            problems.append(f"{key}: {removed[key]}")
        elif key not in known:
            problems.append(f"unknown key {key!r}{_close(key, known)}")
    for key in _OBJECT_SECTIONS:
        if key in config and not isinstance(config[key], dict):
            problems.append(f"{key} must be an object ({{...}}), got {config[key]!r}")
    for key in _BATCH_KEYS:
        if key in config:
            _check_value(problems, key, config[key], lambda v: _count(v, 1), "a positive integer", auto=True)
    if "gradient_clipping" in config:
        _check_value(problems, "gradient_clipping", config["gradient_clipping"], lambda v: _number(v) and v >= 0,
                     "a number >= 0")
    if "steps_per_print" in config:
        _check_value(problems, "steps_per_print", config["steps_per_print"], lambda v: _count(v, 1),
                     "a positive integer")
    if isinstance(config.get("optimizer"), dict):
        problems += _optimizer_problems(config["optimizer"])
    if isinstance(config.get("scheduler"), dict):
        problems += _scheduler_problems(config["scheduler"])
    zero = config.get("zero_optimization")
    if isinstance(zero, dict) and "stage" in zero and zero["stage"] not in (0, 1, 2, 3):
        # Checked here: DeepSpeed's enum would list its alias max_stage as a fifth choice ("0, 1, 2, 3 or 3").
        problems.append(f"zero_optimization.stage must be 0, 1, 2 or 3, got {zero['stage']!r}")
        zero = {k: v for k, v in zero.items() if k != "stage"}
    optimizer = config.get("optimizer")
    if (isinstance(optimizer, dict) and str(optimizer.get("type", "")).lower() == "muon" and isinstance(zero, dict)
            and zero.get("stage") == 3 and zero.get("reduce_scatter", True) is not False):
        # DeepSpeed 0.19's stage3.py refuses the pair inside deepspeed.initialize, with a traceback on every rank.
        problems.append("optimizer Muon with zero_optimization.stage 3 needs \"reduce_scatter\": false in "
                        "zero_optimization (DeepSpeed's ZeRO-3 cannot reduce-scatter Muon's gradients)")
    for key, model in _section_models().items():
        section = zero if key == "zero_optimization" else config.get(key)
        if isinstance(section, dict):
            problems += _pydantic_problems(key, section, model)
    return problems


def check_ds_config(config: dict[str, Any], path: str) -> None:
    """Raise one ConfigError (one line) listing every problem of the DeepSpeed JSON read from ``path``."""
    problems = ds_config_problems(config)
    if problems:
        raise ConfigError(f"--deepspeed_config {path}: {'; '.join(problems)}")
