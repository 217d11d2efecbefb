"""Reading a DeepSpeed JSON and filling its "auto" values from the job's options and data.

As in the Hugging Face DeepSpeed integration: ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``,
``train_batch_size`` and the scheduler's ``total_num_steps`` / ``warmup_num_steps`` may be "auto". An explicit JSON
value wins over a default; an explicit JSON value that contradicts an option the user set is an error naming both.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from ds_kronos.deepspeed_json.checks import check_ds_config
from ds_kronos.deepspeed_json.files import locate_ds_config
from ds_kronos.deepspeed_json.view import DeepSpeedView
from ds_kronos.errors import ConfigError

AUTO = "auto"
WARMUP_FRACTION = 0.03
"""Share of optimizer steps spent warming up: upstream's OneCycleLR(pct_start=0.03)."""


def load_ds_config(path: str) -> dict[str, Any]:
    if not path:
        raise ConfigError("--deepspeed_config is required (e.g. ds_configs/zero2.json)")
    path = locate_ds_config(path)  # a shipped name (zero2, ds_configs/zero2.json) works from any folder
    if not os.path.isfile(path):
        raise ConfigError(f"--deepspeed_config {path}: file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--deepspeed_config {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--deepspeed_config {path}: not a text file") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--deepspeed_config {path}: expected a JSON object")
    if "optimizer" not in config:
        raise ConfigError(f"--deepspeed_config {path}: no \"optimizer\" section (ds_configs/ has examples)")
    check_ds_config(config, path)  # types and values, before any rank builds a model and DeepSpeed sees them
    return config


def _pick(config: dict, key: str, option_value: Any, default: Any, option_name: str, path: str) -> Any:
    """Resolve one value that both the JSON and an option may set."""
    json_value = config.get(key, AUTO)
    if json_value == AUTO:
        return default if option_value is None else option_value
    if option_value is not None and option_value != json_value:
        raise ConfigError(f"{path} sets {key}={json_value} but --{option_name} is {option_value}; "
                          f"set one of them (or make the JSON value \"auto\")")
    return json_value


def options_fixed_by(config: dict) -> dict[str, str]:
    """The job options a DeepSpeed JSON fixes, each with the setting that fixes it: an explicit value (not "auto")
    of the micro batch, the accumulation or the lr (an option set to another value is refused, see :func:`_pick`),
    and an explicit ``train_batch_size``, which fixes the product of the micro batch and the accumulation."""
    lr = config.get("optimizer", {}).get("params", {}).get("lr", AUTO)
    settings = {"batch_size": ("train_micro_batch_size_per_gpu", config.get("train_micro_batch_size_per_gpu", AUTO)),
                "grad_accum": ("gradient_accumulation_steps", config.get("gradient_accumulation_steps", AUTO)),
                "lr": ("optimizer.params.lr", lr)}
    fixed = {option: f"{key}={value}" for option, (key, value) in settings.items() if value != AUTO}
    if config.get("train_batch_size", AUTO) != AUTO:
        for option in ("batch_size", "grad_accum"):
            fixed.setdefault(option, f"train_batch_size={config['train_batch_size']}")
    return fixed


@dataclass(frozen=True)
class BatchLayout:
    micro_batch: int
    grad_accum: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def describe(self) -> str:
        return (f"{self.micro_batch} per rank x {self.grad_accum} accumulation x {self.world_size} ranks = "
                f"{self.global_batch}")


def resolve_batch(config: dict, path: str, *, batch_size: int | None, grad_accum: int | None, world_size: int,
                  default_micro: int, default_accum: int) -> BatchLayout:
    micro = _pick(config, "train_micro_batch_size_per_gpu", batch_size, default_micro, "batch_size", path)
    accum = _pick(config, "gradient_accumulation_steps", grad_accum, default_accum, "grad_accum", path)
    batch = BatchLayout(int(micro), int(accum), world_size)
    total = config.get("train_batch_size", AUTO)
    if total != AUTO and int(total) != batch.global_batch:
        raise ConfigError(f"{path} sets train_batch_size={total}, but micro batch {batch.micro_batch} x accumulation "
                          f"{batch.grad_accum} x world size {world_size} = {batch.global_batch}")
    return batch


def warmup_steps(total_steps: int) -> int:
    return max(1, round(WARMUP_FRACTION * total_steps))


def resolve_ds_config(config: dict, path: str, *, batch: BatchLayout, total_steps: int, lr: float | None,
                      use_onecycle: bool, on_cpu: bool) -> dict[str, Any]:
    """A copy of ``config`` with every "auto" filled and the CPU/scheduler adjustments applied."""
    resolved = copy.deepcopy(config)
    resolved["train_micro_batch_size_per_gpu"] = batch.micro_batch
    resolved["gradient_accumulation_steps"] = batch.grad_accum
    resolved["train_batch_size"] = batch.global_batch

    params = resolved["optimizer"].setdefault("params", {})
    params["lr"] = _pick(params, "lr", lr, None, "lr", path)
    if params["lr"] is None:
        raise ConfigError(f"{path}: optimizer.params.lr is \"auto\" and --lr is not set")
    if on_cpu and not DeepSpeedView.of(resolved).offloads_optimizer:
        # DeepSpeed's FusedAdam needs CUDA; on the CPU accelerator use torch's AdamW, in its fused CPU kernel (the
        # same update as the default loop, several times faster on large models; see docs/performance.md).
        params.setdefault("torch_adam", True)
        params.setdefault("fused", True)

    if use_onecycle:
        # torch's OneCycleLR is handed to deepspeed.initialize instead (it must see the plain torch optimizer).
        resolved.pop("scheduler", None)
    elif "scheduler" in resolved:
        sched_params = resolved["scheduler"].setdefault("params", {})
        for key, value in (("total_num_steps", total_steps), ("warmup_num_steps", warmup_steps(total_steps))):
            if sched_params.get(key, AUTO) == AUTO:
                sched_params[key] = value
        for key in ("warmup_max_lr", "cycle_max_lr"):
            if sched_params.get(key) == AUTO:
                sched_params[key] = params["lr"]
    return resolved


def total_optimizer_steps(epochs: int, per_epoch: int, max_steps: int) -> tuple[int, int]:
    """(total optimizer steps, epochs to run): ``max_steps`` (if set) decides and the epoch count follows."""
    if per_epoch < 1:
        raise ConfigError("the training split yields no optimizer step per epoch: lower --batch_size/--grad_accum "
                          "or raise --n_train_iter")
    if max_steps:
        return max_steps, math.ceil(max_steps / per_epoch)
    return epochs * per_epoch, epochs


@dataclass(frozen=True)
class RunSpec:
    """Everything a training run derives from its DeepSpeed JSON, options, world size and data, resolved once."""

    batch: BatchLayout
    steps_per_epoch: int
    total_steps: int
    epochs: int
    ds_config: dict[str, Any]
    """The JSON with every "auto" filled (see :func:`resolve_ds_config`)."""


def resolve_run(config: dict, path: str, *, batch_size: int | None, grad_accum: int | None, world_size: int,
                micro_batches_per_epoch: Callable[[int], int], epochs: int, max_steps: int, lr: float | None,
                use_onecycle: bool, on_cpu: bool, default_micro: int, default_accum: int) -> RunSpec:
    """The batch layout, step counts and filled DeepSpeed dict of a run. ``micro_batches_per_epoch(micro_batch)``
    is how many micro-batches each rank draws per epoch (the data sampler knows; the JSON does not)."""
    batch = resolve_batch(config, path, batch_size=batch_size, grad_accum=grad_accum, world_size=world_size,
                          default_micro=default_micro, default_accum=default_accum)
    steps_per_epoch = micro_batches_per_epoch(batch.micro_batch) // batch.grad_accum
    total_steps, epochs = total_optimizer_steps(epochs, steps_per_epoch, max_steps)
    ds_config = resolve_ds_config(config, path, batch=batch, total_steps=total_steps, lr=lr,
                                  use_onecycle=use_onecycle, on_cpu=on_cpu)
    return RunSpec(batch, steps_per_epoch, total_steps, epochs, ds_config)
