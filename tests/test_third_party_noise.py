"""Third-party notices a user cannot act on stay out of a run's output, and only those (the backtest's gym notice
is checked in test_backtest's end-to-end run)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as tdist

from ds_kronos.runtime import hide_deepspeed_collective_deprecations


def test_only_the_collectives_deepspeed_calls_lose_their_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hide_deepspeed_collective_deprecations()
        # torch warns before it looks for a process group; there is none here, so each call then fails.
        for collective in (tdist.all_gather_into_tensor, tdist.reduce_scatter_tensor, tdist._all_gather_base):
            with pytest.raises(ValueError):
                collective(torch.zeros(2), torch.zeros(2))
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not [m for m in messages if "all_gather_into_tensor` is" in m or "reduce_scatter_tensor` is" in m]
    assert any("_all_gather_base" in m for m in messages), messages  # any other deprecation still shows
