"""Building and loading a model whose parameters are partitioned across ranks (DeepSpeed ZeRO-3).

Under ``deepspeed.zero.Init`` each module's parameters are split across the ranks as soon as the module is built,
so no rank ever holds the whole model. Two things then need care:

- initialisation that runs after the submodules exist (``Kronos._init_weights``) must gather a module's
  parameters to write them (:func:`modifiable`);
- a model folder is loaded one module at a time: rank 0 reads each tensor from the safetensors file (memory
  mapped: only that tensor is materialised) into the gathered module, and DeepSpeed re-partitions it on exit
  (:func:`load_partitioned`). Every rank holds at most one module in full at any moment.

:class:`SafetensorsTensors` reads one tensor at a time on demand; the trainer uses it to set the exact fp32 masters
of a bf16 run from the file without building a full fp32 state dict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ds_kronos.errors import ModelFolderError


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a parameter DeepSpeed ZeRO-3 has partitioned (it carries a ``ds_id``)."""
    return hasattr(param, "ds_id")


def modifiable(module: nn.Module, modifier_rank: int | None = 0) -> contextlib.AbstractContextManager:
    """Context in which ``module``'s own parameters are whole and writable: DeepSpeed's ``GatheredParameters``
    when they are partitioned (the values of ``modifier_rank`` are kept on exit), else nothing."""
    params = [p for p in module.parameters(recurse=False) if is_partitioned(p)]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


REMAP_BYTES = 256 * 1024 ** 2
"""safetensors reads through a memory map, and every page read stays in the process's resident set until the map
is closed (clean file pages: reclaimable, but counted, and for a 1b checkpoint that is 4.2 GB per reading rank).
The file is reopened after this many bytes, so a streamed load holds at most this much of it."""


class SafetensorsTensors(Mapping[str, torch.Tensor]):
    """A read-only mapping over a safetensors file: ``reader[name]`` loads that one tensor as a copy (fp32 for
    floating tensors), nothing else. Shapes come from the header without reading data."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._open()
        self._names = list(self._file.keys())
        self._known = frozenset(self._names)

    def _open(self) -> None:
        try:
            self._file = safe_open(self.path, framework="pt")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFolderError(f"{self.path}: unreadable safetensors file ({exc})") from None
        self._mapped = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        tensor = self._file.get_tensor(name)
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        self._mapped += tensor.numel() * tensor.element_size()
        if self._mapped > REMAP_BYTES:
            self._open()  # the previous map (and the pages it kept resident) goes with the previous handle
        return tensor

    def __contains__(self, name: object) -> bool:  # from the header: Mapping's default would read the tensor
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shapes(self) -> dict[str, torch.Size]:
        return {name: torch.Size(self._file.get_slice(name).get_shape()) for name in self._names}


def _shapes_only(shapes: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Meta tensors with the given shapes, for ``check_state_dict``, which compares names and shapes only."""
    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


def expected_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Full (unpartitioned) shape of every state-dict entry of ``model`` (a partitioned parameter keeps its
    full shape in ``ds_shape``)."""
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return {name: getattr(tensors[name], "ds_shape", tensors[name].shape) for name in model.state_dict()}


def load_partitioned(model: nn.Module, weights: SafetensorsTensors, rank: int) -> None:
    """Load every tensor of ``weights`` into ``model`` (partitioned or not), one module at a time.

    Names and shapes are checked against the file's header first, so a mismatch is one ModelFolderError naming the
    tensors, raised on every rank before any collective. Collective under ZeRO-3: call on every rank.
    """
    from ds_kronos.model.published import check_state_dict

    check_state_dict(_shapes_only(expected_shapes(model)), _shapes_only(weights.shapes()), weights.path)
    with torch.no_grad():
        for prefix, module in model.named_modules():
            prefix = f"{prefix}." if prefix else ""
            own = list(module.named_parameters(recurse=False))
            if own:
                with modifiable(module):
                    if rank == 0 or not any(is_partitioned(p) for _, p in own):
                        for name, param in own:
                            param.data.copy_(weights[prefix + name])
            for name, buffer in module.named_buffers(recurse=False):
                if name not in module._non_persistent_buffers_set:
                    buffer.copy_(weights[prefix + name])


def build_partitioned(cls: type[nn.Module], name_or_path: str, ds_config: dict, rank: int
                      ) -> tuple[nn.Module, SafetensorsTensors | None]:
    """``cls`` (Kronos) built under ``deepspeed.zero.Init`` from a model folder or a preset name, and the
    folder's weights reader (None for a preset). Collective: call on every rank with the same arguments.

    A preset is initialised as in a plain build (same seed, same values: the init gathers each module); a folder's
    config is read first and its tensors are then streamed in by :func:`load_partitioned`.
    """
    import deepspeed

    from ds_kronos.model.published import names_model_folder, read_config, resolve_folder, weights_file

    weights = None
    if names_model_folder(name_or_path):
        folder = resolve_folder(name_or_path)
        config = cls.config_class.from_dict(read_config(folder), source=str(folder / "config.json"))
        weights = SafetensorsTensors(weights_file(folder))
    else:
        config = cls.preset_config(name_or_path)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = cls(config)
    if weights is not None:
        load_partitioned(model, weights, rank)
    return model, weights
