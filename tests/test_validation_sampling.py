"""Validation with teacher forcing off, in process: the sampled s1 conditioning of each validation window comes from
the window's own stream, so its loss is the same whichever batch (and so rank, and world size) scores it. The runs
through the deepspeed launcher that check it on 1, 2 and 3 ranks are in tests/test_scale_correctness.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ds_kronos.data import PreparedDataset, WindowDataset
from ds_kronos.train.tasks import PredictorTask
from ds_kronos.train.validation.loss import batch_sums, sample_keys
from helpers import SEED

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Engine(nn.Module):
    """What the task calls: the model's forward, with the model as ``module`` (as DeepSpeed's engine)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_a_windows_sampled_loss_does_not_depend_on_its_batch(demo_prepared_dir, tiny_checkpoints):
    tokenizer, predictor = (str(path) for path in tiny_checkpoints)
    task = PredictorTask(tokenizer=tokenizer, predictor=predictor, teacher_forcing=False, tokenizer_dtype="fp32",
                         device=torch.device("cpu"), activation_checkpointing=False)
    engine = Engine(task.model).eval()
    dataset = WindowDataset(PreparedDataset.open(demo_prepared_dir), "val", max_samples=6, seed=SEED, shuffle=False)
    positions = list(range(6))

    def sums(chosen: list[int], seed: int = SEED) -> torch.Tensor:
        x, stamp = dataset.get_batch(chosen)
        torch.manual_seed(len(chosen))  # torch's own generator plays no part
        with torch.no_grad():
            return batch_sums(task.validation_losses(engine, x, stamp, sample_keys(seed, chosen)))

    one_rank = sums(positions)
    two_ranks = sums(positions[0::2]) + sums(positions[1::2])  # what 2 ranks sum, in batches of 3
    torch.testing.assert_close(two_ranks, one_rank, rtol=0, atol=1e-5)
    for single in positions:  # and one window at a time
        two_ranks -= sums([single])
    torch.testing.assert_close(two_ranks, torch.zeros_like(two_ranks), rtol=0, atol=1e-5)
    # The draws matter: other streams give another s2 loss, and teacher forcing another again.
    assert abs(sums(positions, seed=SEED + 1)[2] - one_rank[2]) > 1e-4
    task.teacher_forcing = True
    assert abs(sums(positions)[2] - one_rank[2]) > 1e-4
