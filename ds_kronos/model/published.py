"""The published model format: a folder (a "model folder") with ``config.json`` and ``model.safetensors``.

This is what huggingface_hub's ``PyTorchModelHubMixin`` writes for the upstream Kronos classes: the config holds
the constructor arguments (sorted keys), the safetensors file every state-dict entry in float32 (buffers
included). Folders written here load unchanged in upstream's ``Kronos.from_pretrained`` and vice versa.

Loading is strict: missing, unexpected or mis-shaped tensors are reported by name. Nothing is downloaded: a hub
id is looked up in the local Hugging Face cache only, and otherwise the error says how to fetch the folder.
No pickle is involved at any point (``pytorch_model.bin`` files are refused).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ds_kronos.atomic import replace_folder, temporary_sibling
from ds_kronos.errors import ModelFolderError

if TYPE_CHECKING:
    from torch import nn

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
MODEL_CARD_NAME = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MODEL_CARD = """---
tags:
- model_hub_mixin
- pytorch_model_hub_mixin
- kronos
- ds_kronos
---

Kronos checkpoint in the published format (config.json + model.safetensors), written by ds_kronos.
It loads with ds_kronos (`{cls}.from_pretrained(folder)`) and with the upstream Kronos code.
"""

M = TypeVar("M", bound="PretrainedMixin")


def resolve_folder(name_or_path: str | os.PathLike) -> Path:
    """Local model folder for a path, or for a hub id already in the local Hugging Face cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelFolderError(f"{path}: expected a model folder (config.json + model.safetensors), got a file")
    text = str(name_or_path)
    if _HUB_ID.match(text):
        cached = _cached_snapshot(text)
        if cached is not None:
            return cached
        local = text.split("/")[-1]
        raise ModelFolderError(
            f"{text!r} is not a local folder and ds_kronos never downloads at run time. Fetch it once where there "
            f"is network: `huggingface-cli download {text} --local-dir ./{local}` (or "
            f"huggingface_hub.snapshot_download('{text}', local_dir='./{local}')), then pass ./{local}")
    raise ModelFolderError(f"model folder {path} does not exist")


def names_model_folder(name_or_path: str) -> bool:
    """True for an existing path or a hub id ("org/name"); False for a bare preset name like "small"."""
    return Path(name_or_path).expanduser().exists() or "/" in str(name_or_path)


def is_model_folder(folder: Path) -> bool:
    """Whether ``folder`` holds both files of the published format (what :func:`write_folder` writes)."""
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def _cached_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any miss (not cached, offline errors) just means "not available locally"
        return None
    return folder if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file() else None


def read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ModelFolderError(f"{folder}: no {CONFIG_NAME} (is this a Kronos model folder?)")
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFolderError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ModelFolderError(f"{config_path}: expected a JSON object")
    return values


def weights_file(folder: Path) -> Path:
    """The folder's safetensors file; pickled weights are refused."""
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        if (folder / "pytorch_model.bin").is_file():
            raise ModelFolderError(f"{folder}: only pytorch_model.bin (pickle) found; ds_kronos loads "
                                  f"{WEIGHTS_NAME} only. Convert it once with safetensors where you trust the file.")
        raise ModelFolderError(f"{folder}: no {WEIGHTS_NAME}")
    return weights_path


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights_path = weights_file(folder)
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFolderError(f"{weights_path}: unreadable safetensors file ({exc})") from None


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise one ModelFolderError naming every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = sorted(f"{k} (file {tuple(found[k].shape)}, model {tuple(expected[k].shape)})"
                        for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k].shape))
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
        if names:
            shown = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
            problems.append(f"{len(names)} {label} tensor(s): {shown}")
    if problems:
        raise ModelFolderError(f"{source}: weights do not match the model config: {'; '.join(problems)}")


def write_folder(folder: str | os.PathLike, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                 model_card: str, extra: Callable[[Path], None] | None = None) -> Path:
    """Write config + weights into a temporary sibling folder, then swap it into place. ``extra(staging)`` may add
    more to the folder before the swap (a LoRA adapter), so that it is replaced together with the weights.

    A crash leaves either the previous folder or none, never a half-written one that looks complete.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target, keep_suffix=False)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    tensors, seen = {}, set()
    for name, tensor in state_dict.items():
        saveable = _to_saveable(tensor)
        storage = saveable.untyped_storage().data_ptr()
        tensors[name] = saveable.clone() if storage in seen else saveable
        seen.add(storage)
    save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
    (staging / CONFIG_NAME).write_text(json.dumps(dict(sorted(config.items())), indent=2, sort_keys=True),
                                       encoding="utf-8")
    (staging / MODEL_CARD_NAME).write_text(model_card, encoding="utf-8")
    if extra is not None:
        extra(staging)
    return replace_folder(staging, target)


def _to_saveable(tensor: torch.Tensor) -> torch.Tensor:
    """fp32 (floating tensors), contiguous, on the CPU. ``write_folder`` copies only entries whose memory another
    entry already uses (safetensors refuses shared memory): a whole-model copy is what a large export cannot afford."""
    tensor = tensor.detach().to("cpu")
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.contiguous()


class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` in the published format for a module built from a config."""

    config_class: type
    config: Any

    @classmethod
    def from_pretrained(cls: type[M], name_or_path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                        **config_overrides: Any) -> M:
        """Load a model folder strictly. ``config_overrides`` may change dropouts (not shapes)."""
        folder = resolve_folder(name_or_path)
        values = read_config(folder)
        config = cls.config_class.from_dict(values, source=str(folder / CONFIG_NAME))
        if config_overrides:
            config = config.replace(**config_overrides)
        model = cls(config)
        state = read_weights(folder)
        check_state_dict(model.state_dict(), state, str(folder / WEIGHTS_NAME))
        model.load_state_dict(state, strict=True)
        return model.to(map_location)

    @classmethod
    def from_folder_or_preset(cls: type[M], name_or_path: str) -> M:
        """A model folder (or hub id), else a preset name (random init: seed torch first for identical weights
        on every rank)."""
        if names_model_folder(name_or_path):
            return cls.from_pretrained(name_or_path)
        return cls.from_preset(name_or_path)  # type: ignore[attr-defined]

    def save_pretrained(self, folder: str | os.PathLike, state_dict: Mapping[str, torch.Tensor] | None = None,
                        extra: Callable[[Path], None] | None = None) -> Path:
        """Write the folder (fp32). ``state_dict`` overrides the module's own (e.g. gathered fp32 master weights);
        ``extra`` adds to the folder before it is published (see :func:`write_folder`)."""
        module: nn.Module = self  # type: ignore[assignment]
        state = dict(module.state_dict() if state_dict is None else state_dict)
        # Shapes come from the config, not from the module, whose parameters may be partitioned (ZeRO-3).
        with torch.device("meta"):
            reference = type(self)(self.config)
        check_state_dict(reference.state_dict(), state, f"save_pretrained({folder})")
        return write_folder(folder, self.config.to_dict(), state, _MODEL_CARD.format(cls=type(self).__name__), extra)
