"""Shared test fixtures."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ds_kronos.model import Kronos, KronosTokenizer
from helpers import (
    CONFIGS,
    EXTRA,
    SEED,
    common_args,
    config_run_env,
    config_run_json,
    deepspeed_train,
    two_at_a_time,
)


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


# --- Two lanes: tests that start processes are marked ------------------------------------------------------------
# `make test-fast` runs `-m "not processes"`; `make test` (CI) runs everything. The mark is enforced: an unmarked
# test (its fixtures included) that starts a process fails, so the fast lane never hides a launcher run.
PROCESSES = "processes"


def pytest_configure(config):
    config.addinivalue_line("markers", f"{PROCESSES}: starts processes (the deepspeed launcher, a launch/ script, "
                                       "a Python subprocess); left out of `make test-fast`")


@contextmanager
def _processes_refused(item):
    if item.get_closest_marker(PROCESSES) is not None:
        yield
        return
    original = subprocess.Popen._execute_child  # every subprocess.run/Popen/check_output goes through it

    def refuse(self, args, executable, *rest, **kwargs):
        program = Path(str(executable or (args if isinstance(args, (str, bytes, os.PathLike)) else args[0]))).name
        # A Python interpreter or the deepspeed launcher is what costs seconds; libraries run small tools
        # (platform runs `uname`), which are allowed.
        if program.startswith("python") or program in ("deepspeed", "ds", "torchrun"):
            raise AssertionError(f"{item.nodeid} starts a process ({str(args)[:100]}) but is not marked "
                                 f"@pytest.mark.{PROCESSES}")
        return original(self, args, executable, *rest, **kwargs)

    subprocess.Popen._execute_child = refuse
    try:
        yield
    finally:
        subprocess.Popen._execute_child = original


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _processes_refused(item):  # fixtures (session ones too) are set up here
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _processes_refused(item):
        return (yield)


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
    """A seeded tiny tokenizer and predictor saved as model folders (the runs' starting point)."""
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
                                               + ["--deepspeed_config", config_run_json(name, root),
                                                  *EXTRA.get(name, [])], **config_run_env(name, root)), CONFIGS)
    return {name: root / name for name in CONFIGS}
