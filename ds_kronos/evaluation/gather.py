"""Collect every rank's forecasts on rank 0 as plain tensors (pad to a common length, all_gather; no pickling)."""

from __future__ import annotations

import numpy as np
import torch


def gather_forecasts(rows: np.ndarray, preds: np.ndarray, seconds: float, rank: int, world_size: int,
                     device: torch.device) -> tuple[np.ndarray, np.ndarray, float] | None:
    """All ranks' ``rows`` int64 [n_r] and ``preds`` float32 [n_r, ...] on rank 0, sorted by row, plus the slowest
    rank's forecasting seconds; None on the other ranks. Every rank must call it (it is a collective)."""
    if world_size == 1:
        order = np.argsort(rows, kind="stable")
        return rows[order], preds[order], seconds
    import deepspeed.comm as dist

    def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor)
        return [part.cpu() for part in parts]

    # Counts and timings travel together as float64 (exact for any realistic count).
    header = all_gather(torch.tensor([float(len(rows)), float(seconds)], dtype=torch.float64, device=device))
    counts = [int(h[0].item()) for h in header]
    width = max(max(counts), 1)
    padded_rows = torch.full((width,), -1, dtype=torch.int64)
    padded_rows[:len(rows)] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    padded_preds = torch.zeros((width,) + preds.shape[1:], dtype=torch.float32)
    padded_preds[:len(preds)] = torch.from_numpy(np.ascontiguousarray(preds, dtype=np.float32))
    all_rows = all_gather(padded_rows.to(device))
    all_preds = all_gather(padded_preds.to(device))
    if rank != 0:
        return None
    rows_out = np.concatenate([r[:n].numpy() for r, n in zip(all_rows, counts)])
    preds_out = np.concatenate([p[:n].numpy() for p, n in zip(all_preds, counts)])
    order = np.argsort(rows_out, kind="stable")  # a canonical order, whatever the number of ranks
    return rows_out[order], preds_out[order], max(float(h[1].item()) for h in header)


def broadcast_choice(index: int, world_size: int, device: torch.device) -> int:
    """Rank 0's ``index`` on every rank (the other ranks pass anything). Every rank must call it."""
    if world_size == 1:
        return index
    import deepspeed.comm as dist

    value = torch.tensor([index], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())
