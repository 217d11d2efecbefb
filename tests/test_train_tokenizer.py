"""Tokenizer fine-tuning on the shared trainer, and the two stages chained (tokenizer folder -> predictor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ds_kronos.model import Kronos, KronosTokenizer, KronosTokenizerConfig
from ds_kronos.train.tasks import TokenizerTask
from helpers import deepspeed_train, fixtures_dir, run_job


class _Direct:
    """Stands in for the engine: calls the module directly (no DeepSpeed needed for a loss check)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_tokenizer_task_reproduces_upstream_training_loss():
    folder = fixtures_dir() / "golden"
    values = np.load(folder / "vectors.npz")
    task = TokenizerTask(tokenizer=str(folder / "tokenizer"), device=torch.device("cpu"))
    task.model.train()
    losses = task.train_losses(_Direct(task.model), torch.tensor(values["x"], dtype=torch.float32), None)
    expected = [values[k] for k in ("tok_train_loss", "tok_train_recon_loss_pre", "tok_train_recon_loss_all",
                                    "tok_train_bsq_loss")]
    np.testing.assert_allclose(losses.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.processes
def test_tokenizer_training_lowers_reconstruction_and_feeds_the_predictor(demo_prepared_dir, tmp_path):
    tokenizer_dir = tmp_path / "tok"
    deepspeed_train(["--data", str(demo_prepared_dir), "--tokenizer", "tiny", "--save_dir", str(tokenizer_dir),
                     "--epochs", "2", "--n_train_iter", "256", "--n_val_iter", "64", "--batch_size", "16",
                     "--log_every", "2", "--seed", "3"], script="train_tokenizer.py")
    summary = json.loads((tokenizer_dir / "summary.json").read_text())
    assert summary["task"] == "tokenizer" and summary["deepspeed_config"]["gradient_clipping"] == 2.0
    assert summary["deepspeed_config"]["optimizer"]["params"]["lr"] == 2e-4
    val = [loss for _, loss in summary["history"]["val"]]
    assert val[-1] < val[0]  # full-reconstruction MSE on the validation split fell
    tokenizer = KronosTokenizer.from_pretrained(tokenizer_dir / "best_model")
    assert tokenizer.config == KronosTokenizer.from_preset("tiny").config
    # Started from a preset: the random starting point is kept, and training moved away from it.
    initial = KronosTokenizer.from_pretrained(tokenizer_dir / "initial_model").state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in tokenizer.state_dict().items())
    predictor_dir = tmp_path / "pred"
    result = deepspeed_train(["--data", str(demo_prepared_dir), "--tokenizer", str(tokenizer_dir / "best_model"),
                              "--predictor", "tiny", "--save_dir", str(predictor_dir), "--epochs", "1",
                              "--n_train_iter", "64", "--n_val_iter", "32", "--batch_size", "16"])
    assert f"tokenizer {tokenizer_dir / 'best_model'}" in result.stdout
    Kronos.from_pretrained(predictor_dir / "best_model")


@pytest.mark.processes
def test_mismatched_tokenizer_and_predictor_are_refused(demo_prepared_dir, tmp_path):
    KronosTokenizer(KronosTokenizerConfig(d_model=16, n_heads=2, ff_dim=32, n_enc_layers=2, n_dec_layers=2,
                                          s1_bits=8, s2_bits=8)).save_pretrained(tmp_path / "tok8")
    result = run_job("train.py", ["--data", str(demo_prepared_dir), "--tokenizer", str(tmp_path / "tok8"),
                                  "--predictor", "tiny", "--save_dir", str(tmp_path / "out"), "--batch_size", "8"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "s1/s2 bits 8/8, predictor 10/10" in lines[0], result.stderr
