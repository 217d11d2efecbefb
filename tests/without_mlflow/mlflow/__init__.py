"""First on the import path of the processes the tests start (helpers.env): DeepSpeed does not get mlflow.

``import deepspeed`` imports mlflow (installed: pyqlib needs it) only to offer it to its autotuner, which no test uses,
and that import costs each process about a second: a launcher run pays it in the ``deepspeed`` command, in launch.py
and in every rank (docs/testing.md). Any other importer (qlib's recorder, which ``qlib.init`` registers) gets the
real package: this module puts it in its own place.
"""

import sys
from pathlib import Path


def _importer() -> str:
    """The module whose ``import mlflow`` runs this (the first frame outside the import machinery)."""
    frame = sys._getframe(2)  # 0: here, 1: this module's body
    while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "")


if _importer().startswith("deepspeed."):
    del sys.modules[__name__]
    raise ImportError("mlflow is kept from DeepSpeed in the processes the tests start (tests/without_mlflow)")

_here = str(Path(__file__).resolve().parents[1])
sys.path[:] = [entry for entry in sys.path if str(Path(entry or ".").resolve()) != _here]
del sys.modules[__name__]
import mlflow as _real  # noqa: E402 - the installed package, now that this folder is off the path

sys.modules[__name__] = _real
