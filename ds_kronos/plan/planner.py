"""Plan a training run: per-rank memory of a configuration, and the least-sharded configuration that fits.

Escalation order of :func:`recommend` (cheapest first): ZeRO 0 < 1 < 2 < 3 < 3 + CPU offload < 3 + NVMe offload
(ZeRO-Infinity; only when ``--disk_gb`` is given) at the requested micro batch; then the same with activation
checkpointing (about a third more compute); then half the micro batch (with twice the gradient accumulation, so the
global batch is unchanged), and so on down to 1. On ``--device cpu`` a plan fits when its node's host memory (all
its ranks) fits ``--memory_gb``; on GPU when the per-device total does.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ds_kronos.adapters import DEFAULT_LORA_TARGETS, lora_problems
from ds_kronos.config import option
from ds_kronos.deepspeed_json.files import SHIPPED_DIR
from ds_kronos.deepspeed_json.view import OFFLOAD_DEVICES, DeepSpeedView
from ds_kronos.errors import ConfigError, ModelFolderError, naming_path
from ds_kronos.model import PREDICTOR_PRESETS
from ds_kronos.option_groups import DATA, FINETUNING, MODEL, PERFORMANCE, SCHEDULE, OptionGroup
from ds_kronos.plan.counts import ModelCounts, model_counts
from ds_kronos.plan.memory import MemoryEstimate, estimate
from ds_kronos.plan.setup import BYTES, Setup, ZeroKnobs

GIB = 1024 ** 3
# The shipped files (package data), so an installed package plans from any working directory. Choices name them
# "ds_configs/<file>", as users pass them to --deepspeed_config; deepspeed_json.files.locate_ds_config maps that name to
# the shipped file when the working directory has no such file.
DS_CONFIG_DIR = SHIPPED_DIR
SHARDING_LADDER: tuple[tuple[int, str], ...] = ((0, "none"), (1, "none"), (2, "none"), (3, "none"), (3, "cpu"),
                                                (3, "nvme"))


HARDWARE = OptionGroup("hardware", "hardware to fit")
OUTPUT = OptionGroup("output", "output")


@dataclass(kw_only=True)
class PlanModelOptions:
    """The model the run trains."""

    GROUP = MODEL

    predictor: str | None = option(None, renamed_from=("variant",),
                                   help=f"predictor preset: {', '.join(PREDICTOR_PRESETS)}")
    from_model_folder: bool = option(False, help="the predictor is loaded from a model folder (ZeRO-0/1/2 read "
                                   "the whole state dict next to the model)")


@dataclass(kw_only=True)
class PlanDataOptions:
    """What one sample is."""

    GROUP = DATA

    context: int | None = option(None, ge=1, help="tokens per sample (default: the preset's max_context)")


@dataclass(kw_only=True)
class PlanScheduleOptions:
    """The batch (as launch/train.py takes it)."""

    GROUP = SCHEDULE

    batch_size: int = option(16, ge=1, renamed_from=("micro_batch",),
                             help="micro batch: samples per rank per micro step (launch/train.py --batch_size)")


@dataclass(kw_only=True)
class PlanPerformanceOptions:
    """Sharding, offload, precision and recomputation: what the DeepSpeed JSON and launch/train.py choose."""

    GROUP = PERFORMANCE

    zero_stage: int = option(0, choices=(0, 1, 2, 3), renamed_from=("zero",),
                             help="ZeRO stage (the DeepSpeed JSON's zero_optimization.stage)")
    offload: str = option("none", choices=OFFLOAD_DEVICES,
                          help="offload target: none; cpu (optimizer states with ZeRO-2, optimizer and params with "
                          "ZeRO-3); nvme (ZeRO-3 only: ZeRO-Infinity swap files)")
    precision: str = option("fp32", choices=tuple(BYTES), help="training precision")
    activation_checkpointing: bool = option(False, help="recompute transformer blocks in backward")


@dataclass(kw_only=True)
class PlanFinetuneOptions:
    """What trains (launch/train.py --finetune)."""

    GROUP = FINETUNING

    finetune: str = option("full", choices=("full", "lora"),
                           help="what trains (launch/train.py --finetune): every parameter, or LoRA adapters only "
                                "(gradients and optimizer states for the adapters; the predictor held frozen)")
    lora_rank: int = option(8, ge=1, help="--finetune lora: the adapters' rank (launch/train.py --lora_rank)")
    lora_targets: list[str] = option(default_factory=lambda: list(DEFAULT_LORA_TARGETS),
                                     help="--finetune lora: adapted modules (launch/train.py --lora_targets)")


@dataclass(kw_only=True)
class PlanHardwareOptions:
    """The processes and the memory (and disk) a configuration must fit."""

    GROUP = HARDWARE

    world_size: int = option(1, ge=1, help="data-parallel processes (GPUs) in all")
    num_gpus: int | None = option(None, ge=1, renamed_from=("gpus_per_node",),
                                  help="processes per node, as the deepspeed launcher's --num_gpus (default: "
                                       "world_size, at most 8)")
    device: str = option("gpu", choices=("gpu", "cpu"), help="accelerator kind: on CPU the ranks of a node share "
                         "its host memory (--memory_gb is per node), and attention dropout takes torch's math "
                         "attention kernel, which stores the T x T scores")
    memory_gb: float | None = option(None, gt=0, lt=math.inf,
                                     help="memory in GiB to fit: per device on --device gpu; on --device cpu host "
                                     "memory per node, shared by that node's ranks. Recommends a configuration "
                                     "that fits")
    disk_gb: float | None = option(None, gt=0, lt=math.inf,
                                   help="free disk in GiB per node for NVMe (ZeRO-Infinity) swap files; without it "
                                   "NVMe offload is not a candidate")
    margin: float = option(0.2, ge=0, lt=1,
                           help="share of --memory_gb kept free (allocator slack, CUDA context, buffers)")


@dataclass(kw_only=True)
class PlanOutputOptions:
    GROUP = OUTPUT

    write_ds_config: str | None = option(None, help="write the recommended (else the planned) DeepSpeed JSON "
                                         "here, with any changes it needs merged in")


@dataclass(kw_only=True)
class PlanRequest(PlanOutputOptions, PlanFinetuneOptions, PlanHardwareOptions, PlanPerformanceOptions,
                  PlanScheduleOptions, PlanDataOptions, PlanModelOptions):
    """Per-rank memory of a Kronos training configuration, and the configuration that fits a device."""

    def counts(self) -> ModelCounts:
        """The preset's parameter counts under this request's fine-tuning."""
        rank = self.lora_rank if self.finetune == "lora" else 0
        return model_counts(self.predictor, rank, tuple(self.lora_targets))

    def problems(self) -> list[str]:
        problems = []
        if self.predictor is None:
            problems.append(f"--predictor is required ({', '.join(PREDICTOR_PRESETS)})")
        else:
            try:
                model_counts(self.predictor)
            except ModelFolderError as exc:
                problems.append(str(exc))
            else:
                problems += self._lora_problems()
        if self.offload == "cpu" and self.zero_stage < 2:
            problems.append(f"--offload needs --zero_stage 2 or 3 (got --zero_stage {self.zero_stage})")
        elif self.offload == "nvme" and self.zero_stage != 3:
            problems.append(f"--offload nvme needs --zero_stage 3 (got --zero_stage {self.zero_stage})")
        problems += _output_file_problems("--write_ds_config", self.write_ds_config)
        gpn = self.num_gpus
        if gpn and self.world_size >= 1 and self.world_size % min(gpn, self.world_size):
            problems.append(f"--world_size {self.world_size} is not a multiple of --num_gpus {gpn}")
        return problems

    def _lora_problems(self) -> list[str]:
        if self.finetune != "lora":
            return []
        import torch

        from ds_kronos.model import Kronos

        with torch.device("meta"):
            return lora_problems(Kronos.from_preset(self.predictor), tuple(self.lora_targets), self.lora_rank)

    def setup(self, counts: ModelCounts, knobs: ZeroKnobs | None = None) -> Setup:
        gpn = min(self.num_gpus or min(self.world_size, 8), self.world_size)
        return Setup(world_size=self.world_size, gpus_per_node=gpn, zero=self.zero_stage, offload=self.offload,
                     micro_batch=self.batch_size, context=self.context or counts.max_context,
                     precision=self.precision, activation_checkpointing=self.activation_checkpointing,
                     math_attention=self.device == "cpu" and counts.config.attn_dropout_p > 0,
                     on_cpu=self.device == "cpu", from_model_folder=self.from_model_folder,
                     knobs=knobs or ZeroKnobs())


def _output_file_problems(flag: str, path: str | None) -> list[str]:
    """A file to be written must not be a folder, and its folder must exist (it is not created for it)."""
    if not path:
        return []
    target = Path(path)
    if target.is_dir():
        return [f"{flag} {path}: is a folder; give a file name"]
    folder = target.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        return [f"{flag} {path}: folder {folder} {what}"]
    return []


@dataclass(frozen=True)
class DsConfigChoice:
    """A ds_configs/ file and the changes (if any) it needs for the planned configuration."""

    path: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.overrides:
            return self.path
        return f"{self.path} with {json.dumps(self.overrides, sort_keys=True)} merged in"

    def load(self, folder: Path = DS_CONFIG_DIR) -> dict[str, Any]:
        """The JSON (its "auto" values left for the trainer) with the overrides merged."""
        from ds_kronos.deepspeed_json.resolve import load_ds_config

        return self.apply(load_ds_config(str(folder / Path(self.path).name)))

    def write(self, path: str | Path) -> None:
        target, text = Path(path), json.dumps(self.load(), indent=2) + "\n"
        existed = target.exists()
        try:
            with naming_path(path):
                target.write_text(text, encoding="utf-8")
        except OSError:
            if not existed and target.is_file():
                target.unlink()  # no half-written JSON left behind (a full disk)
            raise

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``config`` with the overrides merged (nested mappings merged key by key)."""
        merged = copy.deepcopy(config)
        _merge(merged, self.overrides)
        return merged


def _merge(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _describe_json(config: dict) -> tuple[int, str, str]:
    view = DeepSpeedView.of(config)
    return view.zero_stage, view.offload_optimizer, view.precision


def ds_config_for(zero: int, offload: str, precision: str, folder: Path = DS_CONFIG_DIR) -> DsConfigChoice:
    """The ds_configs/ file matching (stage, offload none/cpu/nvme, precision), else the closest one plus the
    changes needed."""
    files: dict[tuple[int, str, str], str] = {}
    # Only the predictor's zero*.json files: others there (e.g. tokenizer_zero2.json) serve other jobs.
    for path in sorted(folder.glob("zero*.json")) if folder.is_dir() else []:
        try:
            files.setdefault(_describe_json(json.loads(path.read_text(encoding="utf-8"))), f"ds_configs/{path.name}")
        except (ValueError, AttributeError):
            continue  # not a DeepSpeed config: not a candidate
    if (zero, offload, precision) in files:
        return DsConfigChoice(files[(zero, offload, precision)])
    bf16 = {"bf16": {"enabled": True}} if precision == "bf16" else {}
    if (zero, offload, "fp32") in files:
        return DsConfigChoice(files[(zero, offload, "fp32")], bf16)
    # No file with this offload setting: the plain file of the stage, with offload switched on (ZeRO-3 offloads
    # the params as well, as ds_configs/zero3_offload.json does and as the planner assumes).
    key = (zero, "none", precision) if (zero, "none", precision) in files else (zero, "none", "fp32")
    overrides: dict[str, Any] = {} if key[2] == precision else dict(bf16)
    if offload != "none":
        target: dict[str, Any] = {"device": offload, "pin_memory": False}
        if offload == "nvme":
            target["nvme_path"] = "auto"  # the trainer fills it from --nvme_dir
        zero_changes = {"offload_optimizer": target}
        if zero == 3:
            zero_changes["offload_param"] = dict(target)
        overrides["zero_optimization"] = zero_changes
    return DsConfigChoice(files.get(key, f"ds_configs/zero{zero}.json"), overrides)


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    counts: ModelCounts
    setup: Setup
    estimate: MemoryEstimate
    ds_config: DsConfigChoice

    def fitted_bytes(self) -> int:
        """What --memory_gb is compared with: host memory per node on CPU, the per-device total on GPU."""
        return self.estimate.node_host if self.setup.on_cpu else self.estimate.total

    def fits(self, memory_gb: float, margin: float, disk_gb: float | None = None) -> bool:
        """Memory within ``memory_gb`` less the margin; NVMe swap files (per node) within ``disk_gb`` (no margin:
        their size is exact). An NVMe plan never fits without ``disk_gb``."""
        if self.setup.offload == "nvme" and (disk_gb is None or self.estimate.node_disk > disk_gb * GIB):
            return False
        return self.fitted_bytes() <= memory_gb * GIB * (1 - margin)


def plan(request: PlanRequest) -> Plan:
    counts = request.counts()
    choice = ds_config_for(request.zero_stage, request.offload, request.precision)
    setup = request.setup(counts, ZeroKnobs.from_ds_config(choice.load()))
    return Plan(request, counts, setup, estimate(counts, setup), choice)


@dataclass(frozen=True)
class Recommendation:
    chosen: Plan | None
    """The first candidate that fits, or None when even ZeRO-3 + offload at micro batch 1 does not."""
    tried: tuple[Plan, ...]
    grad_accum_factor: int
    """Multiply the gradient accumulation by this to keep the requested global batch."""


def candidates(request: PlanRequest):
    """Requests in escalation order (see the module docstring)."""
    micro = request.batch_size
    while True:
        for checkpointing in (False, True):
            for zero, offload in SHARDING_LADDER:
                if offload == "nvme" and request.disk_gb is None:
                    continue  # no disk given: ZeRO-Infinity is not a candidate
                yield dataclasses.replace(request, zero_stage=zero, offload=offload, batch_size=micro,
                                          activation_checkpointing=checkpointing or request.activation_checkpointing)
        if micro == 1:
            return
        micro = max(1, micro // 2)


def recommend(request: PlanRequest, memory_gb: float | None = None) -> Recommendation:
    """The least-sharded configuration that fits ``memory_gb`` (default: the request's) with the request's safety
    margin: per device on GPU, per node (the node's ranks together) on CPU; NVMe plans must also fit --disk_gb."""
    memory_gb = memory_gb if memory_gb is not None else request.memory_gb
    if memory_gb is None:
        raise ConfigError("recommend() needs --memory_gb")
    tried = []
    for candidate in candidates(request):
        option_plan = plan(candidate)
        tried.append(option_plan)
        if option_plan.fits(memory_gb, request.margin, request.disk_gb):
            return Recommendation(option_plan, tuple(tried), request.batch_size // candidate.batch_size)
    return Recommendation(None, tuple(tried), 1)
