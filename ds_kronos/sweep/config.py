"""Options of the sweep job (``launch/sweep.py``): those before ``--``; the options after it are train.py's, given
to every trial."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

from ds_kronos.config import option, output_dir_problems, parse_config
from ds_kronos.errors import ConfigError
from ds_kronos.option_groups import OptionGroup
from ds_kronos.sweep.storage import default_storage_url, storage_problems

SEPARATOR = "--"
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


STUDY = OptionGroup("study", "study")
SAMPLING = OptionGroup("sampling", "sampling and pruning")
TRIAL_LAUNCH = OptionGroup("trials", "each trial's launch")


@dataclass(kw_only=True)
class StudyOptions:
    """What is searched, how long, and where the study is stored."""

    GROUP = STUDY

    space: str = option(None, help="YAML/JSON search space: train.py options with a range {low, high, log, step} "
                                   "or choices [...] (docs/sweeps.md)")
    trials: int = option(20, ge=1, help="trials to finish (complete or pruned) in the study, over all its workers; "
                                        "failed trials do not count")
    study: str = option("sweep", help="study name: a second worker, or the same command after a kill, joins it")
    sweep_dir: str = option("runs/sweep", help="output folder: study.db (the default storage) and STUDY/ with a "
                                               "folder per trial, trials.csv, the plots and summary.json")
    storage: str | None = option(None, help="the study's storage: sqlite:///FILE (default SWEEP_DIR/study.db), "
                                            "postgresql://... or mysql://... (a database server several machines "
                                            "share), journal:///FILE (Optuna's journal file on a shared file "
                                            "system)")


@dataclass(kw_only=True)
class SamplingOptions:
    """How trials draw their values and when a trial is stopped early."""

    GROUP = SAMPLING

    sampler: str = option("tpe", choices=("tpe", "random"), help="Optuna sampler: tree-structured Parzen "
                                                                 "estimator, or uniform random draws")
    sampler_seed: int = option(0, renamed_from=("seed",),
                               help="sampler seed (train.py's --seed, after --, seeds each trial's run): trial k "
                                    "draws with the seed (sampler_seed, k), so that workers never repeat each "
                                    "other's draws and a one-worker sweep repeats exactly")
    pruner: str = option("median", choices=("median", "none"), help="Optuna pruner: stop a trial whose evaluation "
                                                                     "is worse than the median of the finished "
                                                                     "trials' at the same step")
    pruner_startup_trials: int = option(5, ge=0, help="median pruner: no pruning until this many trials finished")
    pruner_warmup_steps: int = option(0, ge=0, help="median pruner: no pruning at evaluations before this step")


@dataclass(kw_only=True)
class TrialLaunchOptions:
    """How each trial's deepspeed launch of train.py is started."""

    GROUP = TRIAL_LAUNCH

    num_gpus: int = option(1, ge=1, help="processes per trial on each node: the deepspeed launcher's --num_gpus "
                                         "(CPU processes with DS_ACCELERATOR=cpu)")
    hostfile: str | None = option(None, help="the deepspeed launcher's --hostfile: each trial on its nodes")


@dataclass(kw_only=True)
class SweepConfig(TrialLaunchOptions, SamplingOptions, StudyOptions):
    """Hyper-parameter sweep of launch/train.py on Optuna: launch/sweep.py --space FILE [options] -- TRAIN_OPTIONS

    The options after -- go to every trial's train.py."""

    @property
    def storage_url(self) -> str:
        return self.storage or default_storage_url(self.sweep_dir)

    def problems(self) -> list[str]:
        problems = []
        if not self.space:
            problems.append("--space is required: a YAML/JSON file of the train.py options to sweep")
        elif not os.path.isfile(self.space):
            problems.append(f"--space {self.space}: file not found")
        if not STUDY_NAME.fullmatch(self.study):
            problems.append(f"--study {self.study!r}: letters, digits, '.', '_' and '-' only (it names a folder)")
        if self.hostfile and not os.path.isfile(self.hostfile):
            problems.append(f"--hostfile {self.hostfile}: file not found")
        problems += output_dir_problems("--sweep_dir", self.sweep_dir)
        return problems + (storage_problems(self.storage) if self.storage else [])


def parse_sweep_arguments(argv: Sequence[str]) -> tuple[SweepConfig, list[str]]:
    """The sweep's options (before ``--``) and train.py's (after it)."""
    argv = list(argv)
    split = argv.index(SEPARATOR) if SEPARATOR in argv else len(argv)
    own, train = argv[:split], argv[split + 1:]
    if SEPARATOR not in argv and not {"-h", "--help"} & set(own):
        raise ConfigError("give train.py's options after --, e.g. launch/sweep.py --space sweep.yaml -- --data "
                          "PREPARED --deepspeed_config CONFIG.json (see --help)")
    return parse_config(SweepConfig, own), train  # --help prints the options and exits here
