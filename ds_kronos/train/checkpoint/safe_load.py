"""Loading DeepSpeed's training state without running code from the files.

DeepSpeed reads its checkpoint files with torch's full unpickler (``weights_only`` off), which runs arbitrary objects: a
payload planted in a ``*_model_states.pt`` would run on ``--resume``. Inside :func:`weights_only_loading` every
``torch.load`` (DeepSpeed's checkpoint engine and ``ds_to_universal`` included) is forced through torch's
restricted unpickler (torch's own ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch), which builds only tensors, containers,
numbers and strings, plus the few plain state classes DeepSpeed stores, allowed by name below. A file that holds
anything else is refused with one line and not loaded.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ds_kronos.errors import UserError

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
"""torch refuses every load when both switches are set: a user's own ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is lifted
inside :func:`weights_only_loading` (and put back after)."""


def deepspeed_state_classes() -> list[type]:
    """The classes DeepSpeed 0.19 pickles into checkpoints: loss-scaler state, the ZeRO stage enum and the
    optimizer-fragment addresses (all plain data holders, constructed without running their own code)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` inside uses the restricted unpickler with DeepSpeed's state classes allowed."""
    previous = {name: os.environ.get(name) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
    try:
        with torch.serialization.safe_globals(deepspeed_state_classes()):
            yield
    except pickle.UnpicklingError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "GLOBAL" in line),
                     str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise UserError(f"--resume: a checkpoint file holds objects that are not plain training state, so it is not "
                        f"loaded ({first})") from None
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
