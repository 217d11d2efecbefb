"""Option groups and renamed options (ds_kronos.option_groups): what --help shows, old spellings, config files."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from ds_kronos.config import option_types, parse_config
from ds_kronos.errors import ConfigError
from ds_kronos.plan import PlanRequest
from ds_kronos.sweep.config import SweepConfig
from ds_kronos.train.config import TokenizerTrainConfig, TrainConfig
from tests.helpers import script_help

TRAINING_GROUPS = ["data", "model", "schedule", "evaluation and selection", "checkpointing and reliability", "logging",
                   "performance"]
SCRIPTS = {
    "train.py": (TrainConfig, TRAINING_GROUPS + ["fine-tuning", "processes"]),
    "train_tokenizer.py": (TokenizerTrainConfig, TRAINING_GROUPS + ["processes"]),
    "plan.py": (PlanRequest, ["data", "model", "schedule", "performance", "fine-tuning", "hardware to fit", "output"]),
    "sweep.py": (SweepConfig, ["study", "sampling and pruning", "each trial's launch"]),
}
RENAMED = {"plan.py": {"variant": "predictor", "micro_batch": "batch_size", "zero": "zero_stage",
                       "gpus_per_node": "num_gpus"},
           "sweep.py": {"seed": "sampler_seed"}}


def help_sections(text: str) -> dict[str, list[str]]:
    """``--help`` as {group title: the flags listed under it}, from the first group heading on."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        heading = re.fullmatch(r"(\S.*):", line)
        if heading:
            current = heading.group(1)
            sections[current] = []
        elif current is not None:
            flag = re.match(r"  (?:-\w, )?(--\w+)", line)
            if flag:
                sections[current].append(flag.group(1))
    return sections


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_shows_every_option_once_in_its_group(script, capsys):
    cls, groups = SCRIPTS[script]
    text = script_help(script, capsys)
    sections = help_sections(text)
    assert list(sections) == ["options", *groups]
    assert sections["options"] == ["--help", "--config"]  # nothing of the job's own left out of a group
    listed = [flag for title in groups for flag in sections[title]]
    assert sorted(listed) == sorted(f"--{name}" for name in option_types(cls))
    assert all(sections[title] for title in groups)
    for old in RENAMED.get(script, {}):
        assert f"--{old} " not in text and f"--{old}\n" not in text  # hidden


def test_old_planner_names_still_work_and_say_so(capsys):
    request = parse_config(PlanRequest, ["--variant", "tiny", "--micro_batch", "4", "--zero", "2",
                                         "--gpus_per_node", "1", "--world_size", "2"])
    assert (request.predictor, request.batch_size, request.zero_stage, request.num_gpus) == ("tiny", 4, 2, 1)
    assert request == parse_config(PlanRequest, ["--predictor", "tiny", "--batch_size", "4", "--zero_stage", "2",
                                                 "--num_gpus", "1", "--world_size", "2"])
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"deprecated: --{old} is now --{new}; the old name will be removed in the next release"
                     for old, new in RENAMED["plan.py"].items()]


def test_an_old_name_is_checked_as_the_new_one(capsys):
    with pytest.raises(ConfigError, match="--batch_size must be >= 1, got 0"):
        parse_config(PlanRequest, ["--variant", "tiny", "--micro_batch", "0"])
    with pytest.raises(ConfigError, match="--zero: invalid choice: 4"):
        parse_config(PlanRequest, ["--variant", "tiny", "--zero", "4"])


def test_old_sweep_seed_is_the_sampler_seed(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 1.0e-4, high: 1.0e-3, log: true}\n")
    config = parse_config(SweepConfig, ["--space", str(space), "--sweep_dir", str(tmp_path), "--seed", "7"])
    assert config.sampler_seed == 7
    assert "deprecated: --seed is now --sampler_seed" in capsys.readouterr().err


def test_a_config_file_with_old_flat_keys_loads(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"variant": "tiny", "micro_batch": 8, "zero": 2, "precision": "bf16"}))
    request = parse_config(PlanRequest, ["--config", str(old)])
    assert (request.predictor, request.batch_size, request.zero_stage, request.precision) == ("tiny", 8, 2, "bf16")
    assert f"deprecated: {old}: micro_batch is now batch_size" in capsys.readouterr().err
    # The command line wins over the file under either name.
    assert parse_config(PlanRequest, ["--config", str(old), "--batch_size", "2"]).batch_size == 2
    assert parse_config(PlanRequest, ["--config", str(old), "--micro_batch", "3"]).batch_size == 3

    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"variant": "tiny", "micro_batch": 8, "batch_size": 4}))
    with pytest.raises(ConfigError, match="option batch_size is given twice"):
        parse_config(PlanRequest, ["--config", str(twice)])


def test_training_config_file_flat_or_in_group_sections(demo_prepared_dir, tmp_path):
    flat = {"data": str(demo_prepared_dir), "n_train_iter": 64, "epochs": 2, "batch_size": 4, "eval_every": 3,
            "save_every": 5, "log_every": 2, "threads": 1, "finetune": "lora", "lora_rank": 4}
    sections = {"data": {"data": str(demo_prepared_dir), "n_train_iter": 64},
                "schedule": {"epochs": 2, "batch_size": 4}, "evaluation": {"eval_every": 3},
                "checkpointing": {"save_every": 5}, "logging": {"log_every": 2}, "processes": {"threads": 1},
                "finetuning": {"finetune": "lora", "lora_rank": 4}}
    configs = []
    for name, values in (("flat.yaml", flat), ("sections.yaml", sections)):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(values))
        configs.append(parse_config(TrainConfig, ["--config", str(path)]))
    assert configs[0] == configs[1]
    assert (configs[0].save_every, configs[0].lora_rank, configs[0].keep_last) == (5, 4, 2)  # flat attributes
    with pytest.raises(ConfigError, match="unknown option"):
        parse_config(TrainConfig, ["--config", str(_write(tmp_path / "bad.yaml", {"schedule": {"epoch": 2}}))])


def _write(path, values):
    path.write_text(yaml.safe_dump(values))
    return path
