"""NVMe offload plumbing (ds_kronos.train.checkpoint.nvme): where the swap folder is, the one-line refusal where the
async I/O
op cannot work, and the clean-up. The real NVMe training run is in tests/test_scale.py."""

from __future__ import annotations

import copy
import os
import time

import pytest

from ds_kronos.deepspeed_json.resolve import load_ds_config
from ds_kronos.errors import ConfigError, UserError
from ds_kronos.train.checkpoint import nvme


@pytest.fixture
def nvme_json() -> dict:
    return load_ds_config("ds_configs/zero3_nvme_bf16.json")


def test_auto_nvme_path_becomes_the_option_or_a_folder_in_save_dir(nvme_json, tmp_path):
    config = copy.deepcopy(nvme_json)
    assert nvme.fill_nvme_path(config, None, str(tmp_path / "run")) == tmp_path / "run" / "nvme_swap"
    zero = config["zero_optimization"]
    assert zero["offload_param"]["nvme_path"] == zero["offload_optimizer"]["nvme_path"] == str(
        tmp_path / "run" / "nvme_swap")
    config = copy.deepcopy(nvme_json)
    assert nvme.fill_nvme_path(config, str(tmp_path / "fast"), str(tmp_path / "run")) == tmp_path / "fast"
    assert nvme.fill_nvme_path(load_ds_config("ds_configs/zero3_offload.json"), None, str(tmp_path)) is None
    with pytest.raises(ConfigError, match="offloads nothing to NVMe"):
        nvme.fill_nvme_path(load_ds_config("ds_configs/zero3_offload.json"), str(tmp_path / "fast"), str(tmp_path))


def test_explicit_nvme_paths_are_kept_but_must_agree(nvme_json, tmp_path):
    config = copy.deepcopy(nvme_json)
    config["zero_optimization"]["offload_param"]["nvme_path"] = str(tmp_path / "a")
    config["zero_optimization"]["offload_optimizer"]["nvme_path"] = str(tmp_path / "a")
    assert nvme.fill_nvme_path(config, str(tmp_path / "ignored"), str(tmp_path)) == tmp_path / "a"
    config["zero_optimization"]["offload_optimizer"]["nvme_path"] = str(tmp_path / "b")
    with pytest.raises(ConfigError, match="different nvme_path"):
        nvme.fill_nvme_path(config, None, str(tmp_path))


def test_missing_libaio_is_one_line_that_says_what_to_install(monkeypatch, tmp_path):
    from deepspeed.accelerator import get_accelerator

    class NoAio:
        def is_compatible(self, verbose: bool = False) -> bool:
            return False

    monkeypatch.setattr(get_accelerator(), "create_op_builder", lambda name: NoAio())
    with pytest.raises(UserError) as raised:
        nvme.check_nvme_ready(tmp_path / "swap")
    message = str(raised.value)
    assert "\n" not in message and "libaio-dev" in message and "zero3_offload.json" in message


def test_unwritable_swap_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="--nvme_dir .*cannot write there"):
        nvme.check_nvme_ready(blocker / "swap")


class FakeOp:
    """An op builder whose load is recorded, not compiled: torch's build folder rule still applies to its name."""
    name = "ds_kronos_test_op"

    def __init__(self):
        self.loads = 0

    def load(self, verbose: bool = False):
        self.loads += 1


def test_a_lock_left_by_an_interrupted_compile_is_one_line_not_an_endless_wait(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    op = FakeOp()
    folder = nvme.async_io_build_folder(op)
    assert folder == tmp_path / "extensions" / op.name
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "lock"
    lock.touch()
    (folder / "build.ninja").touch()
    nvme.load_async_io(op, announce=False)  # a compile in progress (files just changed): wait on it, as torch does
    assert op.loads == 1
    old = time.time() - nvme.STALE_BUILD_LOCK_S - 60
    for path in (folder, lock, folder / "build.ninja"):
        os.utime(path, (old, old))
    with pytest.raises(UserError) as raised:
        nvme.load_async_io(op, announce=False)
    message = str(raised.value)
    assert "\n" not in message and str(lock) in message and "remove the file" in message and op.loads == 1


def test_the_first_compile_is_announced_once_built_it_is_not(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    op = FakeOp()
    nvme.load_async_io(op)
    assert "compiling DeepSpeed's async I/O op" in capsys.readouterr().out
    (nvme.async_io_build_folder(op) / f"{op.name}.so").touch()
    nvme.load_async_io(op)
    nvme.load_async_io(op, announce=False)
    assert capsys.readouterr().out == "" and op.loads == 3


def _swap_tree(root, ranks=(0, 1)):
    for kind in ("optimizer", "bf16params"):
        for rank in ranks:
            folder = root / "zero_stage_3" / kind / f"rank{rank}"
            folder.mkdir(parents=True)
            (folder / "0_param.tensor.swp").write_bytes(b"x" * 1000)


def test_each_rank_removes_its_own_swap_files_and_a_users_files_stay(tmp_path):
    swap = tmp_path / "swap"
    _swap_tree(swap)
    (swap / "notes.txt").write_text("the user's")
    assert nvme.remove_swap_files(swap, rank=0) == 2000
    assert sorted(p.name for p in swap.rglob("*.swp")) == ["0_param.tensor.swp"] * 2  # rank 1's are untouched
    assert nvme.remove_swap_files(swap, rank=1, remove_dir=True) == 2000
    assert [p.name for p in swap.iterdir()] == ["notes.txt"]  # not empty: kept


def test_start_up_sweep_removes_every_rank_and_the_default_folder(tmp_path):
    swap = tmp_path / "nvme_swap"
    _swap_tree(swap, ranks=(0, 1, 2))
    assert nvme.remove_swap_files(swap, remove_dir=True) == 6000
    assert not swap.exists()


@pytest.fixture
def prepare(monkeypatch, nvme_json):
    """``prepare_swap_folder`` on one rank of a ``world_size``-rank run with ``local`` ranks per node (the async I/O
    check kept to its folder creation, the barriers to this process); returns the folder, the verdict and what
    rank 0 printed."""
    from ds_kronos.runtime import Runtime

    said: list[str] = []
    monkeypatch.setattr(nvme, "barrier", lambda: None)
    monkeypatch.setattr(nvme, "check_nvme_ready", lambda folder, announce: folder.mkdir(parents=True, exist_ok=True))
    monkeypatch.setattr(nvme, "say", said.append)

    def run(save_dir, nvme_dir=None, nvme_path=None, world_size=1, local=1):
        config = copy.deepcopy(nvme_json)
        if nvme_path is not None:
            for key in nvme.OFFLOAD_SECTIONS:
                config["zero_optimization"][key]["nvme_path"] = str(nvme_path)
        runtime = Runtime(rank=0, local_rank=0, world_size=world_size, device=None, local_world_size=local)
        said.clear()
        return (*nvme.prepare_swap_folder(config, nvme_dir, str(save_dir), runtime), list(said))
    return run


def test_an_explicit_nvme_path_that_existed_is_never_removed(prepare, tmp_path):
    users = tmp_path / "users_swap"
    users.mkdir()
    swap, removes, _ = prepare(tmp_path / "run", nvme_path=users)
    assert swap == users and not removes
    _swap_tree(users, ranks=(0,))
    nvme.remove_swap_files(users, rank=0, remove_dir=removes)
    assert users.is_dir() and not any(users.iterdir())  # its swap files gone, the folder the user made kept
    created, removes, _ = prepare(tmp_path / "run", nvme_path=tmp_path / "made_by_this_run")
    assert removes
    nvme.remove_swap_files(created, rank=0, remove_dir=removes)
    assert not created.exists()
    assert prepare(tmp_path / "run", nvme_dir=str(users))[1] is False
    assert prepare(tmp_path / "run")[:2] == (tmp_path / "run" / "nvme_swap", True)
    assert prepare(tmp_path / "run")[1] is True  # the default folder, even when a killed run left it


def test_a_multi_node_run_is_warned_off_the_default_swap_folder_in_save_dir(prepare, tmp_path):
    *_, said = prepare(tmp_path / "run", world_size=16, local=8)
    assert len(said) == 1 and said[0].startswith("warning: this run spans 2 nodes") and "--nvme_dir" in said[0]
    assert prepare(tmp_path / "run", world_size=8, local=8)[2] == []  # one node
    assert prepare(tmp_path / "run", nvme_dir=str(tmp_path / "local"), world_size=16, local=8)[2] == []
    assert prepare(tmp_path / "run", nvme_path=tmp_path / "local", world_size=16, local=8)[2] == []
