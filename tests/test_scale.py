"""Scale-out: 2 nodes x 1 process over loopback; Kronos-base under ZeRO-3 built partitioned with NVMe offload;
activation checkpointing."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from ds_kronos.model import Kronos
from helpers import LAUNCHER, REPO, common_args, env, free_port, run_job


@pytest.mark.processes
def test_two_nodes_over_loopback_match_one_node_with_two_processes(config_runs, demo_prepared_dir,
                                                                     tiny_checkpoints, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    save_dir = tmp_path / "two_nodes"
    port = str(free_port())
    nodes = []
    for node_rank in (0, 1):
        command = [str(LAUNCHER), "--hostfile", str(hostfile), "--no_ssh", "--num_nodes", "2", "--num_gpus", "1",
                   "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", port,
                   str(REPO / "launch" / "train.py"), *common_args(demo_prepared_dir, tiny_checkpoints, save_dir),
                   "--deepspeed_config", "ds_configs/zero2.json", "--threads", "1"]
        nodes.append(subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    two_nodes = json.loads((save_dir / "summary.json").read_text())
    one_node = json.loads((config_runs["zero2"] / "summary.json").read_text())
    assert two_nodes["world_size"] == 2
    np.testing.assert_allclose([v for _, v in two_nodes["history"]["train"]],
                               [v for _, v in one_node["history"]["train"]], rtol=0, atol=1e-4)
    np.testing.assert_allclose([v for _, v in two_nodes["history"]["val"]],
                               [v for _, v in one_node["history"]["val"]], rtol=0, atol=1e-4)


@pytest.mark.processes
def test_zero3_nvme_trains_base_built_partitioned_and_exports_loadable_weights(demo_prepared_dir, tmp_path):
    """Kronos-base (102M, 250x tiny) on 2 ranks: partitioned construction (zero.Init), parameters and optimizer
    states swapped to an NVMe folder (ZeRO-Infinity, async I/O), activation checkpointing, bf16. Two steps, then
    the exports load in a plain process and the swap files are gone."""
    save_dir, swap = tmp_path / "base_nvme", tmp_path / "swap"
    swap.mkdir()  # the user's own folder: emptied at the end, not removed (tests/test_nvme.py: one a run creates is)
    result = run_job("train.py", [
        "--data", str(demo_prepared_dir), "--tokenizer", "base", "--predictor", "base", "--deepspeed_config",
        "ds_configs/zero3_nvme_bf16.json", "--nvme_dir", str(swap), "--activation_checkpointing", "--save_dir",
        str(save_dir), "--max_steps", "2", "--n_train_iter", "8", "--n_val_iter", "2", "--batch_size", "1",
        "--eval_at_start", "false", "--log_every", "1"], processes=2, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((save_dir / "summary.json").read_text())
    zero = summary["deepspeed_config"]["zero_optimization"]
    assert summary["steps"] == 2 and zero["stage"] == 3 and summary["partitioned_construction"] is True
    assert zero["offload_param"]["nvme_path"] == zero["offload_optimizer"]["nvme_path"] == str(swap)
    assert all(np.isfinite(v) for _, v in summary["history"]["train"])
    base_params = sum(p.numel() for p in Kronos.from_preset("base").parameters())
    assert base_params > 100e6
    # The swap files held the fp32 masters and Adam moments (12 bytes per parameter) at least, and are removed.
    assert summary["memory"]["nvme_swap_bytes"] >= 12 * base_params
    assert swap.is_dir() and not any(swap.iterdir())
    trained = Kronos.from_pretrained(save_dir / "final_model")
    initial = Kronos.from_pretrained(save_dir / "initial_model")
    assert trained.config == Kronos.from_preset("base").config
    after, before = trained.state_dict(), initial.state_dict()
    changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
    assert len(changed) > 150 and all(torch.isfinite(v).all() for v in after.values())


def test_activation_checkpointing_gives_identical_gradients():
    """Recomputing blocks in backward must not change the gradients, dropout included (mini has 0.2)."""
    s1 = torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(0))
    s2 = torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(1))
    stamp = torch.randint(0, 7, (2, 40, 5)).float()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(5)
        model = Kronos.from_preset("mini").train()
        model.gradient_checkpointing = checkpointing
        torch.manual_seed(6)  # the same dropout masks and s1 samples in both runs
        s1_logits, s2_logits = model(s1[:, :-1], s2[:, :-1], stamp[:, :-1])
        loss, _, _ = model.head.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 50
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-6)


def test_checkpointing_really_recomputes(monkeypatch):
    """Guard against a no-op: with checkpointing on, each block's forward runs twice per step."""
    model = Kronos.from_preset("tiny").train()
    model.gradient_checkpointing = True
    calls = []
    block = model.transformer[0]
    original = block.forward
    monkeypatch.setattr(block, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    s1 = torch.randint(0, 1024, (1, 12))
    s1_logits, s2_logits = model(s1, s1, use_teacher_forcing=True, s1_targets=s1)
    (s1_logits.sum() + s2_logits.sum()).backward()
    assert len(calls) == 2
