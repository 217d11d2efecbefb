"""ds_kronos package metadata. Install with `make setup` (creates .venv/ and picks a suitable torch)."""

from setuptools import find_packages, setup

setup(
    name="ds_kronos",
    version="0.1.0",
    description="DeepSpeed-backed, scalable fine-tuning for the Kronos financial foundation models",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ds_kronos", "ds_kronos.*"]),
    # The DeepSpeed JSON files ship inside the package (the top-level ds_configs/ is a link to them), so an
    # installed ds_kronos finds them from any working directory.
    package_data={"ds_kronos": ["ds_configs/*.json"]},
    install_requires=[
        # torch is not pinned here: `make setup` installs the CPU build 2.13.0 when no torch is present and no GPU
        # is visible, and keeps a torch the user already has (e.g. a CUDA build).
        "torch>=2.4",
        "deepspeed>=0.19,<0.20",
        "comet_ml>=3.40",
        "pyqlib>=0.9.7",
        "numpy>=1.26",
        "pandas>=2.2",
        # Parquet input and the out-of-core preparation of a store (docs/data_format.md).
        # Already pulled in by pyqlib's mlflow; named because ds_kronos.data.store uses it directly.
        "pyarrow>=14",
        "safetensors>=0.4",
        "huggingface_hub>=0.33",
        "matplotlib>=3.8",
        "pyyaml>=6",
        # Evaluation: proper scoring rules of the sampled paths (0.11 needs Python >= 3.12; 0.10 has the same API)
        # and the Newey-West (HAC) t-statistic of the daily IC.
        "scoringrules>=0.10",
        "statsmodels>=0.14",
        # Evaluation: the volatility baselines a quant desk uses (GARCH/GJR-t, EWMA, HAR) and the model confidence set.
        "arch>=8,<9",
        # Parameter-efficient fine-tuning (--finetune lora): LoRA layers, their merge and the adapter format.
        "peft>=0.21,<0.22",
        # Hyper-parameter sweeps (launch/sweep.py): the study, its storage (SQLite, a database server or a journal
        # file), the samplers, pruners and plots. A requirement rather than an extra: its own dependencies
        # (SQLAlchemy, alembic) already come with pyqlib's mlflow, so it adds two small packages, and every launch/
        # script then works after one install.
        "optuna>=5.0,<6",
    ],
    # ruff is pinned to a minor version: its rules change between minors, and `make test` runs it. setuptools:
    # tests/test_install.py builds the package offline (--no-build-isolation), and venvs of Python >= 3.12 lack it.
    # tensorboard: DeepSpeed's TensorBoard monitor (a "tensorboard" section in the DeepSpeed JSON) writes through
    # torch.utils.tensorboard, which needs it; the tests read its events back with its own reader. wandb: DeepSpeed's
    # wandb monitor; the tests read an offline run's log back with wandb's own reader (wandb.sdk.internal.datastore),
    # which wandb 0.30 removed without a released successor, hence the tests' bound below 0.30.
    extras_require={"dev": ["pytest>=8", "ruff>=0.17,<0.18", "setuptools>=70.1", "tensorboard>=2.14",
                            "wandb>=0.19,<0.30"],
                    "tensorboard": ["tensorboard>=2.14"],
                    "wandb": ["wandb>=0.19"]},
    license="MIT",
)
