"""Shared test fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ds_kronos.model import Kronos, KronosTokenizer
from helpers import CONFIGS, EXTRA, SEED, common_args, deepspeed_train, two_at_a_time


@pytest.fixture
def one_torch_thread():
    """Small tensors: on a shared 2-core machine a second torch thread only waits for the first."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def shm_left_as_found():
    """The suite starts dozens of 2-rank jobs: none may leave a DeepSpeed buffer behind in /dev/shm (issue 15)."""
    from ds_kronos.shm_buffers import BUFFER_PREFIX, SHM_DIR

    def buffers() -> set[str]:
        return {p.name for p in SHM_DIR.iterdir() if p.name.startswith(BUFFER_PREFIX)}

    before = buffers()
    yield
    from ds_kronos.shm_buffers import held_shm_names

    left = sorted(buffers() - before - held_shm_names())  # one held by a live process is another job's
    assert not left, f"the test suite left {len(left)} DeepSpeed shm buffer(s) in /dev/shm: {left[:4]}"


BUILD_ASYNC_IO = """
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("AsyncIOBuilder")
if builder is not None and builder.is_compatible(verbose=False):
    builder.load(verbose=False)
"""


@pytest.fixture(scope="session", autouse=True)
def async_io_op_built_in_the_background():
    """The NVMe test needs DeepSpeed's async I/O op, which a fresh machine compiles when it is first loaded (about
    3 minutes on 2 cores). Compile it at the lowest priority while the other tests run: they leave about a core idle
    on average (the launcher's start and end are single-threaded). A rank that loads the op meanwhile waits on torch's
    build lock, so no run sees a half-built op; on a machine that has it, this only loads it."""
    build = subprocess.Popen([sys.executable, "-c", BUILD_ASYNC_IO], env={**os.environ, "DS_ACCELERATOR": "cpu"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.nice(19))
    yield
    build.wait()  # never kill it: a killed build leaves torch's lock file behind, and every later load waits on it

# ---------------------------------------------------------------------------------------------------------------------
# Data pipeline fixtures (tests/test_data_*.py): one small demo market and its prepared dataset per test session.
# ---------------------------------------------------------------------------------------------------------------------


DEMO_SYMBOLS = 8
DEMO_LOOKBACK = 30
DEMO_PREDICT = 5


@pytest.fixture(scope="session")
def demo_qlib_dir(tmp_path_factory) -> Path:
    from ds_kronos.data import write_demo_market

    return write_demo_market(tmp_path_factory.mktemp("demo") / "qlib", symbols=DEMO_SYMBOLS, seed=0)


@pytest.fixture(scope="session")
def demo_prepared_dir(demo_qlib_dir, tmp_path_factory) -> Path:
    from ds_kronos.data import PrepareConfig, prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "demo"
    config = PrepareConfig(qlib_dir=str(demo_qlib_dir), instrument="all", out=str(out), lookback=DEMO_LOOKBACK,
                           predict=DEMO_PREDICT)
    prepare_dataset(config, log=lambda line: None)
    return out


# --- Training fixtures (tests/test_train*.py, tests/test_scale.py) -------------------------------------------------
@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A seeded tiny tokenizer and predictor saved as checkpoint folders (the runs' starting point)."""
    folder = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(SEED)
    KronosTokenizer.from_preset("tiny").save_pretrained(folder / "tokenizer")
    Kronos.from_preset("tiny").save_pretrained(folder / "predictor")
    return folder / "tokenizer", folder / "predictor"


@pytest.fixture(scope="session")
def config_runs(demo_prepared_dir, tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """One short 2-rank run per ds_configs/zero*.json, made once and inspected by several tests."""
    root = tmp_path_factory.mktemp("config_runs")
    two_at_a_time(lambda name: deepspeed_train(common_args(demo_prepared_dir, tiny_checkpoints, root / name)
                                               + ["--deepspeed_config", f"ds_configs/{name}.json",
                                                  *EXTRA.get(name, [])]), CONFIGS)
    return {name: root / name for name in CONFIGS}
