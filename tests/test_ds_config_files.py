"""Finding a --deepspeed_config value: the user's file as typed, else the JSON shipped inside the package."""

from __future__ import annotations

import json

import pytest

from ds_kronos.deepspeed_json.files import SHIPPED_DIR, config_path, locate_ds_config, shipped_names
from ds_kronos.errors import ConfigError
from helpers import REPO


def test_the_package_ships_the_files_the_repository_links_to():
    assert (REPO / "ds_configs").resolve() == SHIPPED_DIR
    assert SHIPPED_DIR.is_relative_to(REPO / "ds_kronos")
    assert {"zero0", "zero1", "zero2", "zero2_bf16", "zero3", "zero3_offload", "tokenizer_zero2"} <= set(
        shipped_names())


@pytest.mark.parametrize("value", ["zero2", "zero2.json", "ds_configs/zero2.json", "./ds_configs/zero2.json"])
def test_shipped_names_resolve_from_a_folder_without_them(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate_ds_config(value) == str(SHIPPED_DIR / "zero2.json")
    assert config_path(value) == SHIPPED_DIR / "zero2.json"


def test_a_file_that_exists_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2.json").write_text(json.dumps({"optimizer": {}}))
    (tmp_path / "zero1.json").write_text("{}")
    assert locate_ds_config("ds_configs/zero2.json") == "ds_configs/zero2.json"
    assert locate_ds_config("zero1.json") == "zero1.json"


@pytest.mark.parametrize("value", ["", "nope.json", "ds_configs/nope.json", "other/zero2.json", "/abs/zero2.json"])
def test_anything_else_is_returned_as_typed(value, tmp_path, monkeypatch):
    """So the loader's "file not found" names what the user typed, not a path inside the package."""
    monkeypatch.chdir(tmp_path)
    assert locate_ds_config(value) == value


def test_config_path_names_the_shipped_files_when_it_finds_none():
    with pytest.raises(ConfigError) as err:
        config_path("zero9")
    assert "no shipped DeepSpeed config 'zero9'" in str(err.value) and "zero2_bf16" in str(err.value)


def test_muon_passes_the_checks_and_zero3_needs_reduce_scatter_off():
    from ds_kronos.deepspeed_json.checks import ds_config_problems

    muon = json.loads((SHIPPED_DIR / "zero2_muon.json").read_text())
    assert ds_config_problems(muon) == []
    zero3 = {**muon, "zero_optimization": json.loads((SHIPPED_DIR / "zero3.json").read_text())["zero_optimization"]}
    problems = ds_config_problems(zero3)
    assert len(problems) == 1 and '"reduce_scatter": false' in problems[0], problems
    zero3["zero_optimization"] = {**zero3["zero_optimization"], "reduce_scatter": False}
    assert ds_config_problems(zero3) == []
