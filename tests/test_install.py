"""A non-editable install (``pip install .``) works from any folder: the package carries its DeepSpeed JSON files
and the planner and the training defaults find them there, not in the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.processes  # every test here starts processes

# Runs in the installed copy, from a folder that is neither the repository nor the install target.
PROBE = """
import json, sys
from pathlib import Path

import pytest
import ds_kronos
from ds_kronos.deepspeed_json.files import locate_ds_config, shipped_names
from ds_kronos.plan import ds_config_for
from ds_kronos.train.config import TokenizerTrainConfig, TrainConfig

target = Path(sys.argv[1]).resolve()
located = {name: locate_ds_config(f"ds_configs/{name}.json") for name in shipped_names()}
located.update({f"default:{cls.__name__}": locate_ds_config(cls().deepspeed_config)
                for cls in (TrainConfig, TokenizerTrainConfig)})
exact, merged = ds_config_for(2, "none", "bf16"), ds_config_for(1, "none", "bf16")
exact.write("planned.json")
print(json.dumps({
    "package": str(Path(ds_kronos.__file__).resolve()),
    "inside_target": {key: Path(path).resolve().is_relative_to(target) for key, path in located.items()},
    "contents": {key: json.loads(Path(path).read_text()) for key, path in located.items()},
    "planned": [exact.path, json.loads(Path("planned.json").read_text())],
    "merged": [merged.path, merged.load()],
}))
"""


def test_installed_package_finds_its_configs_from_another_folder(tmp_path):
    # Build from a copy: building in the repository would leave build/ and *.egg-info in the working tree.
    source, target, elsewhere = tmp_path / "source", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(REPO / "ds_kronos", source / "ds_kronos", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                              "--no-index", "--quiet", "--target", str(target), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "DS_ACCELERATOR": "cpu"}
    probe = subprocess.run([sys.executable, "-c", PROBE, str(target)], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])

    assert Path(found["package"]).is_relative_to(target.resolve()), found["package"]
    repo_files = {path.stem: json.loads(path.read_text()) for path in (REPO / "ds_configs").glob("*.json")}
    shipped = {key: value for key, value in found["contents"].items() if not key.startswith("default:")}
    assert shipped == repo_files  # every file, unchanged
    assert all(found["inside_target"].values()), found["inside_target"]
    assert found["contents"]["default:TrainConfig"] == repo_files["zero2"]
    assert found["contents"]["default:TokenizerTrainConfig"] == repo_files["tokenizer_zero2"]
    assert found["planned"] == ["ds_configs/zero2_bf16.json", repo_files["zero2_bf16"]]
    path, merged = found["merged"]
    assert path == "ds_configs/zero1.json" and merged == {**repo_files["zero1"], "bf16": {"enabled": True}}
