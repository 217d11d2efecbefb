"""Which parts of a Kronos predictor LoRA adapts (``--lora_targets``) and ``--freeze`` freezes: the rules, their
checks and the adapter's size. Shared by the trainer (ds_kronos.train.engine.finetune) and the planner (ds_kronos.plan);
torch-free at import (the functions take a model, e.g. one built on the meta device).

LoRA targets follow peft's rule for a list of names: a module is adapted when its full name is a target or ends
with ``.`` + a target (``q_proj`` adapts every block's ``self_attn.q_proj`` and the dependency layer's
``cross_attn.q_proj``). peft adapts Linear and Embedding modules here; an adapted layer of ``out x in`` gains
``rank x (in + out)`` parameters (A: rank x in, B: out x rank).

``--freeze`` patterns are shell globs (``fnmatch``) over parameter names as in the published ``model.safetensors``
(``embedding.emb_s1.weight``, ``transformer.3.ffn.w1.weight``, ``head.proj_s1.bias`` ...). A parameter is frozen
when the last pattern that matches it is a plain one; a pattern starting with ``!`` exempts what it matches (read in
order, the last match wins, as in .gitignore): ``*,!head.*`` trains the heads only.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "w1", "w2", "w3")
"""The attention projections (every block's self-attention and the dependency layer's cross-attention) and the
SwiGLU feed-forward of every block (ds_kronos.model.layers)."""


def adaptable(module: nn.Module) -> bool:
    """A module type peft's LoRA adapts in this model (Linear, Embedding)."""
    from torch import nn

    return isinstance(module, (nn.Linear, nn.Embedding))


def target_matches(module_name: str, target: str) -> bool:
    """peft's rule for a list of target names: the module's full name is the target or ends with ``.target``."""
    return module_name == target or module_name.endswith("." + target)


def targeted_modules(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[tuple[str, nn.Module]]:
    """The adaptable modules the targets name, in model order."""
    return [(name, module) for name, module in model.named_modules()
            if adaptable(module) and any(target_matches(name, target) for target in targets)]


def lora_parameter_count(model: nn.Module, targets: tuple[str, ...] | list[str], rank: int) -> int:
    """Parameters LoRA adds (and trains): rank x (rows + columns) for every targeted layer."""
    return sum(rank * sum(_dims(module)) for _, module in targeted_modules(model, targets))


def lora_problems(model: nn.Module, targets: tuple[str, ...], rank: int) -> list[str]:
    problems = []
    targeted: list[tuple[str, nn.Module]] = []
    for target in targets:
        matched = [(name, module) for name, module in model.named_modules() if target_matches(name, target)]
        if not matched:
            problems.append(f"--lora_targets: {target!r} matches no module of the predictor (adaptable: "
                            f"{', '.join(adaptable_names(model))})")
            continue
        other = sorted({type(m).__name__ for _, m in matched if not adaptable(m)})
        if other:
            problems.append(f"--lora_targets: {target!r} matches {'/'.join(other)} modules, which LoRA cannot "
                            f"adapt (Linear and Embedding only; adaptable: {', '.join(adaptable_names(model))})")
            continue
        targeted += matched
    if targeted:
        name, module = min(targeted, key=lambda item: min(_dims(item[1])))
        if rank > min(_dims(module)):
            rows, columns = _dims(module)
            problems.append(f"--lora_rank {rank} is larger than the targeted layer {name} ({rows} x {columns}): "
                            f"choose at most {min(rows, columns)}")
    return problems


def _dims(module: nn.Module) -> tuple[int, int]:
    if hasattr(module, "num_embeddings"):
        return module.num_embeddings, module.embedding_dim
    return module.out_features, module.in_features


def adaptable_names(model: nn.Module) -> list[str]:
    """The last name part of every module LoRA can adapt (what --lora_targets takes), in model order."""
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if adaptable(module):
            names[name.rpartition(".")[2]] = None
    return list(names)


def frozen_by(patterns: tuple[str, ...] | list[str], name: str) -> bool:
    """True when the last pattern matching ``name`` is a plain glob (``!glob`` exempts; no match: trained)."""
    frozen = False
    for pattern in patterns:
        exempt = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, pattern[1:] if exempt else pattern):
            frozen = not exempt
    return frozen


def freeze_problems(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    problems = []
    for pattern in patterns:
        glob = pattern.removeprefix("!")
        if not any(fnmatch.fnmatchcase(name, glob) for name in names):
            problems.append(f"--freeze: {pattern!r} matches no parameter of the predictor (names as in "
                            f"model.safetensors, e.g. {', '.join(names[:3])})")
    if not problems and all(frozen_by(patterns, name) for name in names):
        problems.append(f"--freeze {','.join(patterns)} freezes every parameter of the predictor: nothing would "
                        f"train (exempt some with '!PATTERN', e.g. '*,!head.*' trains the heads only)")
    return problems
