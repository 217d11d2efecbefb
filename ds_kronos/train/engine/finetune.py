"""What a predictor run trains: every parameter (``full``), low-rank adapters through peft (``lora``), or every
parameter but those ``--freeze`` names (``freeze``).

- ``lora``: peft's ``get_peft_model`` wraps the predictor; each targeted ``nn.Linear`` (or ``nn.Embedding``) keeps
  its weight frozen and gains ``lora_A`` (rank x in) and ``lora_B`` (out x rank, zero at the start), so the layer
  computes ``W x + (alpha / rank) B A x``. Only A and B are trained, so only they reach the optimizer (and have
  fp32 masters, gradients and AdamW moments). The engine's module is the ``PeftModel``; its parameter names carry
  peft's prefix (``base_model.model.``) and a wrapped layer's own weight becomes ``...q_proj.base_layer.weight``.
- ``freeze``: ``requires_grad_(False)`` on the parameters the patterns name; names are unchanged.

Exports (:meth:`Finetuning.publish`) are always an ordinary published folder with the base model's names (for
LoRA: the merged weights ``W + (alpha / rank) B A``, computed by peft's ``get_delta_weight``), which upstream's
``Kronos.from_pretrained`` loads unchanged; with LoRA also the adapter alone in peft's own format
(``adapter/adapter_config.json`` + ``adapter/adapter_model.safetensors``, written by peft's ``save_pretrained``),
which ``peft.PeftModel.from_pretrained(base, "best_model/adapter")`` loads over the start model.

Which modules ``--lora_targets`` adapts and which parameters ``--freeze`` freezes, and what is wrong with either,
is decided in :mod:`ds_kronos.adapters` (shared with the planner). The checks that need the model run on a
meta-device copy of the predictor before any process group exists (:func:`finetune_problems`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ds_kronos.adapters import DEFAULT_LORA_TARGETS, freeze_problems, frozen_by, lora_problems

if TYPE_CHECKING:  # torch is imported where a model is at hand: the option checks run before it is loaded
    import torch
    from torch import nn

FINETUNE_MODES = ("full", "lora", "freeze")
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0
ADAPTER_FOLDER = "adapter"
"""The LoRA adapter in peft's format, inside each exported model folder (best_model/adapter/ ...)."""


@dataclass(frozen=True)
class FinetuneSpec:
    """The options of ``--finetune`` (ds_kronos.train.config.TrainConfig)."""

    mode: str = "full"
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float = DEFAULT_LORA_ALPHA
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    freeze: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.mode == "lora":
            return (f"LoRA rank {self.lora_rank}, alpha {self.lora_alpha:g}, dropout {self.lora_dropout:g} on "
                    f"{', '.join(self.lora_targets)}")
        if self.mode == "freeze":
            return f"all but --freeze {','.join(self.freeze)}"
        return "every parameter"

    def signature(self) -> str:
        """What the training state depends on (the dropout does not change it): recorded in each checkpoint, so
        that a resume with other options is refused by name rather than failing in DeepSpeed's load."""
        if self.mode == "lora":
            return (f"LoRA rank {self.lora_rank} (alpha {self.lora_alpha:g}) on {','.join(self.lora_targets)}")
        return self.describe()

    def option_problems(self) -> list[str]:
        """The checks that need no model."""
        problems = []
        if self.freeze and self.mode != "freeze":
            problems.append(f"--freeze applies to --finetune freeze (this run has --finetune {self.mode})")
        if self.mode == "freeze" and not self.freeze:
            problems.append("--finetune freeze needs --freeze PATTERNS (globs over parameter names, e.g. "
                            "'embedding.*,transformer.[0-3].*'; see --help)")
        if self.mode == "lora" and not self.lora_targets:
            problems.append("--lora_targets is empty: name the modules to adapt (default: "
                            f"{','.join(DEFAULT_LORA_TARGETS)})")
        return problems

    def model_problems(self, model: nn.Module) -> list[str]:
        """The checks against the predictor (a meta-device copy will do)."""
        if self.mode == "lora":
            return lora_problems(model, self.lora_targets, self.lora_rank)
        if self.mode == "freeze":
            return freeze_problems([name for name, _ in model.named_parameters()], self.freeze)
        return []

    def lora_config(self):
        """peft's ``LoraConfig`` for these options."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.lora_targets), bias="none")


def finetune_problems(spec: FinetuneSpec, predictor: str) -> list[str]:
    """The model checks of ``spec`` on a meta-device copy of ``predictor`` (a preset or a folder whose config.json
    was already checked): no memory, no weights read."""
    if spec.mode == "full":
        return []
    import torch

    from ds_kronos.model import Kronos
    from ds_kronos.model.published import names_model_folder, read_config, resolve_folder

    if names_model_folder(predictor):
        config = Kronos.config_class.from_dict(read_config(resolve_folder(predictor)))
    else:
        config = Kronos.preset_config(predictor)
    with torch.device("meta"):
        model = Kronos(config)
    return spec.model_problems(model)


# ---------------------------------------------------------------------------------------------- the run's model
def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trained, all) parameters of ``model`` (whole counts under ZeRO-3 partitioning too)."""
    trained = total = 0
    for param in model.parameters():
        count = getattr(param, "ds_numel", param.numel())
        total += count
        trained += count if param.requires_grad else 0
    return trained, total


def _low_precision(model: nn.Module) -> bool:
    import torch

    return any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters())


def fp32_adapter_draw(spec: FinetuneSpec, base: nn.Module, drawn_from: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adapters ``get_peft_model`` drew over ``base`` from the CPU generator state ``drawn_from``, drawn again
    in fp32 over a weightless copy of ``base`` (built on the meta device, each parameter an empty fp32 CPU tensor:
    peft reads a layer's sizes from the module and the adapters' dtype and device from its weight). The same draws
    in the same order; the generator is left where it was."""
    import torch
    from peft import get_peft_model
    from torch import nn

    with torch.device("meta"):
        shell = type(base)(base.config)
    for module in shell.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(0), requires_grad=param.requires_grad))
    after = torch.get_rng_state()
    torch.set_rng_state(drawn_from)
    try:
        drawn = get_peft_model(shell, spec.lora_config())
    finally:
        torch.set_rng_state(after)
    return {name: p.detach().clone() for name, p in drawn.named_parameters() if p.requires_grad}


class RenamedTensors(Mapping):
    """A mapping keyed by the engine module's names over one keyed by the base model's (a checkpoint file read one
    tensor at a time), plus tensors of its own (the adapters' start values)."""

    def __init__(self, source: Mapping[str, torch.Tensor], base_names: Mapping[str, str],
                 own: Mapping[str, torch.Tensor]):
        self.source, self.own = source, own
        self.base_names = {name: base for name, base in base_names.items() if base in source}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.own:
            return self.own[name]
        return self.source[self.base_names[name]]

    def __contains__(self, name: object) -> bool:  # without reading the tensor (Mapping's default would)
        return name in self.own or name in self.base_names

    def __iter__(self) -> Iterator[str]:
        yield from self.base_names
        yield from self.own

    def __len__(self) -> int:
        return len(self.base_names) + len(self.own)


class Finetuning:
    """The predictor as the engine trains it (wrapped by peft, partly frozen, or as built), and how it is
    published. Build it before ``deepspeed.initialize``, on every rank alike (LoRA's A is drawn from the torch
    generator, which every rank has seeded the same)."""

    def __init__(self, spec: FinetuneSpec, base: nn.Module):
        self.spec = spec
        self.base = base
        names = {id(t): name for name, t in (*base.named_parameters(), *base.named_buffers())}
        if spec.mode == "lora":
            import torch
            from peft import get_peft_model

            drawn_from = torch.get_rng_state()
            self.model = get_peft_model(base, spec.lora_config())
        else:
            self.model = base
            if spec.mode == "freeze":
                for name, param in base.named_parameters():
                    if frozen_by(spec.freeze, name):
                        param.requires_grad_(False)
        self.base_names = {name: names[id(t)] for name, t in (*self.model.named_parameters(),
                                                               *self.model.named_buffers()) if id(t) in names}
        """The engine module's name -> the base model's name, for every tensor of the base model."""
        self.adapter_start = {name: p.detach().float().cpu().clone() for name, p in self.model.named_parameters()
                              if name not in self.base_names}
        """The adapters' start values (exact fp32, before DeepSpeed casts or partitions them)."""
        if spec.mode == "lora" and _low_precision(base):
            # peft casts new adapters to their base layer's dtype (a ZeRO-3 base is built cast to bf16/fp16): the
            # start is the fp32 draw, as over the fp32 base of the other stages, and the module holds it too.
            self.adapter_start = fp32_adapter_draw(spec, base, drawn_from)
            with torch.no_grad():
                for name, param in self.model.named_parameters():
                    if name in self.adapter_start:
                        param.copy_(self.adapter_start[name])

    def exact_values(self, weights: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
        """``weights`` (keyed by the base model's names; None for a preset) under the engine module's names, the
        adapters' start values included; None without adapters and weights."""
        if self.model is self.base:
            return weights
        return RenamedTensors(weights or {}, self.base_names, self.adapter_start)

    def publish(self, folder: Path, state: Mapping[str, torch.Tensor],
                extra: Callable[[Path], None] | None = None) -> None:
        """Write ``state`` (the engine module's full fp32 state dict) as a published folder with the base model's
        names: with LoRA the merged weights, and the adapter alone in ``folder/adapter/``; ``extra(staging)`` adds
        more files before the folder is swapped into place. Rank 0 only."""
        if self.model is self.base:
            self.base.save_pretrained(folder, state_dict=state, extra=extra)
            return
        import torch

        replica = self._replica(state)
        merged = {base: state[name] for name, base in self.base_names.items() if name in state}
        with torch.no_grad():
            for module_name, module in replica.named_modules():
                if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
                    weight = self.base_names[f"{module_name}.base_layer.weight"]
                    # The weight is added into peft's fresh delta in place: one new tensor per layer. (W + delta
                    # allocates a second one and frees the delta, a hole per layer that the allocator keeps.)
                    delta = None
                    for adapter in module.active_adapters:
                        part = module.get_delta_weight(adapter)
                        delta = part if delta is None else delta.add_(part)
                    if delta is not None:
                        merged[weight] = delta.add_(merged[weight])

        def write_adapter(staging: Path) -> None:
            replica.save_pretrained(str(staging / ADAPTER_FOLDER), state_dict=dict(state),
                                    save_embedding_layers=False)
            if extra is not None:
                extra(staging)
        self.base.save_pretrained(folder, state_dict=merged, extra=write_adapter)

    def _replica(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """A peft model over ``state``'s tensors (built on the meta device, the tensors assigned: no copy)."""
        import torch
        from peft import get_peft_model

        with torch.device("meta"):
            replica = get_peft_model(type(self.base)(self.base.config), self.spec.lora_config())
        replica.load_state_dict(dict(state), strict=True, assign=True)
        return replica.eval()

