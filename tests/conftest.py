"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------------------------------
# Data pipeline fixtures (tests/test_data_*.py): one small demo market and its prepared dataset per test session.
# ---------------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
DEMO_SYMBOLS = 8
DEMO_LOOKBACK = 30
DEMO_PREDICT = 5


def shared_dir() -> Path:
    """The project's shared/ folder: the repo's sibling (as CI lays it out), or $DS_KRONOS_SHARED."""
    return Path(os.environ.get("DS_KRONOS_SHARED", REPO.parent / "shared"))


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
