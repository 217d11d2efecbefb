"""ZeRO-0's gradient all-reduce started during backward, as torch DDP does, instead of after it.

At ZeRO stage 0 DeepSpeed all-reduces the gradients once backward has finished (``engine.allreduce_gradients``:
flatten every gradient, one blocking all-reduce, copy back). DDP starts each bucket's all-reduce as soon as backward
has produced its gradients, and the transfer runs while the rest of backward computes. No DeepSpeed setting does that
at stage 0: ``overlap_comm`` belongs to ZeRO-1/2 (and on the CPU accelerator its reduction stream is synchronous).
Waiting for that one transfer after backward is what puts ZeRO-0 behind DDP; the paired measurement is in
docs/performance.md (`benchmarks/grad_overlap_ab.py`).

:class:`OverlappedGradientReduction` turns the engine's own post-backward all-reduce off
(``engine.enable_backward_allreduce``, DeepSpeed's switch for engines whose caller reduces) and reduces the same
gradients with the same arithmetic: a sum over the data-parallel group, then a scale by 1 / world size. Each bucket's
sum is computed by the same collective, so a run with it gives DeepSpeed's weights (bit for bit on 2 ranks, where a
sum of two numbers does not depend on the order).

The gradients are views into the buckets' buffers, as torch DDP's ``gradient_as_bucket_view``: the buckets hold the
gradients rather than a second copy of them, and the averaged sums are the gradients once the all-reduces end.
DeepSpeed sets ``.grad`` to None after each step; the first gradient hook of the next step copies the fresh gradient
into its slice and points ``.grad`` back at the slice (DDP's way too), so accumulation micro-steps add in place.

The engine's switch is also what DeepSpeed's bf16/fp16 optimizer at ZeRO-0 (``FP16_Optimizer`` /
``FP16_UnfusedOptimizer``, the ``DDP_BFLOAT16`` and ``FP16`` wrappers) reads when it checks the gradients for
overflow: ``CheckOverflow.has_overflow`` (runtime/utils.py) adds an all-reduce of the overflow flag over the world
whenever ``enable_backward_allreduce`` is False, since the gradients would then differ between ranks. Here they are
already reduced when the optimizer steps, so :meth:`~OverlappedGradientReduction.step` runs ``engine.step()`` with
the switch on (nothing reads it there to reduce: the engine's own all-reduce happens at the end of backward), which
spares every step that blocking all-reduce.

It applies only where it is DeepSpeed's plain path: stage 0 with the gradients on the parameters (fp32, and
bf16/fp16 without DeepSpeed's BF16_Optimizer, which reduces separate fp32 master gradients), more than one rank,
DeepSpeed's default gradient averaging, managed gradient accumulation, no MoE, no pipeline or sequence parallelism.
The communication data type is DeepSpeed's (``communication_data_type``), cast to and back as DeepSpeed does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

BUCKET_BYTES = 25 * 2 ** 20
"""Gradient bytes per all-reduce: torch DDP's default ``bucket_cap_mb``."""


@dataclass
class _Bucket:
    params: list[torch.nn.Parameter]
    ready: int = 0
    # One buffer for the bucket's gradients, kept from step to step (a fresh one each step pays its page faults
    # again, every step); the parameters' .grad are views into it.
    flat: torch.Tensor | None = None
    views: list[torch.Tensor] = field(default_factory=list)  # each parameter's slice of ``flat``, shaped like it
    sent: torch.Tensor | None = None  # ``flat`` in the communication data type
    work: Any = None


def overlap_unsupported(engine) -> str | None:
    """Why DeepSpeed's own post-backward all-reduce must stay (None when the overlapped one gives its result)."""
    import deepspeed.comm as dist

    if engine.zero_optimization_stage() != 0:
        return "ZeRO stage above 0 (DeepSpeed's ZeRO optimizer reduces)"
    if hasattr(engine.optimizer, "get_grads_for_reduction"):
        return "DeepSpeed's BF16_Optimizer (it reduces its own fp32 master gradients)"
    if dist.get_world_size() < 2:
        return "one rank"
    if engine.pipeline_parallelism or engine.has_moe_layers or getattr(engine, "sequence_parallel_size", 1) != 1:
        return "pipeline, MoE or sequence parallelism"
    if not engine.managed_gradient_accumulation() or engine.zenflow:
        return "caller-managed gradient accumulation or ZenFlow"
    if not engine.gradient_average or not engine.postscale_gradients() or engine.gradient_predivide_factor() != 1.0:
        return "non-default gradient communication settings"
    if engine.is_deepcompile_active():
        return "DeepCompile (it reduces in its compiled graph)"
    return None


class OverlappedGradientReduction:
    """Reduces a ZeRO-0 engine's gradients in buckets launched from gradient hooks during backward.

    Call :meth:`step` after ``engine.backward(loss)``, in place of ``engine.step()``.
    """

    def __init__(self, engine, bucket_bytes: int = BUCKET_BYTES) -> None:
        import deepspeed.comm as dist

        reason = overlap_unsupported(engine)
        if reason is not None:
            raise ValueError(f"overlapped gradient all-reduce does not apply: {reason}")
        self.engine = engine
        self.group = engine.seq_data_parallel_group
        self.scale = 1.0 / float(dist.get_world_size(group=self.group))  # DeepSpeed's post-scale, same rounding
        # Backward produces gradients roughly in reverse order of definition: bucket them in that order (as DDP).
        params = [p for p in engine.module.parameters() if p.requires_grad and p.numel() > 0]
        self.buckets: list[_Bucket] = []
        size = 0
        for param in reversed(params):
            nbytes = param.numel() * param.element_size()
            if (not self.buckets or param.dtype != self.buckets[-1].params[0].dtype  # one dtype per buffer
                    or param.device != self.buckets[-1].params[0].device or size + nbytes > bucket_bytes):
                self.buckets.append(_Bucket([]))
                size = 0
            self.buckets[-1].params.append(param)
            size += nbytes
        self._slot = {}  # parameter -> (its bucket, its view)
        for bucket in self.buckets:
            first = bucket.params[0]
            bucket.flat = torch.zeros(sum(p.numel() for p in bucket.params), dtype=first.dtype, device=first.device)
            bucket.views = [view.view(p.shape) for p, view in
                            zip(bucket.params, bucket.flat.split([p.numel() for p in bucket.params]))]
            self._slot.update({p: (bucket, view) for p, view in zip(bucket.params, bucket.views)})
        self._next = 0  # the next bucket to launch: launched strictly in order, so every rank issues the same sequence
        for param in params:
            param.register_post_accumulate_grad_hook(self._grad_ready)
        self.set_active(True)

    def set_active(self, active: bool) -> None:
        """From the next backward on: reduce here (True) or leave it to DeepSpeed's own all-reduce (False). Lets a
        benchmark alternate the two step by step in one engine."""
        self.active = active
        self.engine.enable_backward_allreduce = not active

    def _reducing(self) -> bool:
        return (self.active and self.engine.is_gradient_accumulation_boundary()
                and not self.engine.inside_no_sync_ctxt)

    def _bind(self, param: torch.nn.Parameter) -> None:
        """Make ``param.grad`` its view into the bucket, holding the gradient accumulated so far (zero if none)."""
        _, view = self._slot[param]
        grad = param.grad
        if grad is not None and grad.data_ptr() == view.data_ptr():
            return
        if grad is None:  # unused this step on this rank: every rank must still send the same sizes
            view.zero_()
        else:
            view.copy_(grad.data)
        param.grad = view

    def _grad_ready(self, param: torch.nn.Parameter) -> None:
        if not self.active:
            return
        self._bind(param)  # on accumulation micro-steps too, so that the next ones add into the bucket in place
        if not self._reducing():
            return
        bucket = self._slot[param][0]
        bucket.ready += 1
        while self._next < len(self.buckets) and self.buckets[self._next].ready == len(self.buckets[self._next].params):
            self._launch(self.buckets[self._next])
            self._next += 1

    def _launch(self, bucket: _Bucket) -> None:
        import deepspeed.comm as dist

        for param in bucket.params:
            self._bind(param)
        comm_dtype = self.engine.communication_data_type
        bucket.sent = bucket.flat if bucket.flat.dtype == comm_dtype else bucket.flat.to(comm_dtype)
        bucket.work = dist.all_reduce(bucket.sent, group=self.group, async_op=True)

    def finish(self) -> None:
        """Wait for every bucket (launching those whose gradients never became ready) and average: the gradients,
        views into the buckets, then hold DeepSpeed's reduced values."""
        if not self._reducing():
            return
        while self._next < len(self.buckets):
            self._launch(self.buckets[self._next])
            self._next += 1
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.sent.mul_(self.scale)
            if bucket.sent is not bucket.flat:
                bucket.flat.copy_(bucket.sent)
            bucket.ready, bucket.sent, bucket.work = 0, None, None
        self._next = 0

    def step(self) -> None:
        """:meth:`finish`, then ``engine.step()`` with DeepSpeed told that the gradients are reduced (see the module
        docstring: its bf16/fp16 overflow check would otherwise all-reduce its flag at every step)."""
        self.finish()
        self.engine.enable_backward_allreduce = True
        try:
            self.engine.step()
        finally:
            self.engine.enable_backward_allreduce = not self.active


def overlap_gradient_reduction(engine, bucket_bytes: int = BUCKET_BYTES) -> OverlappedGradientReduction | None:
    """The overlapped reduction for ``engine`` where it applies, else None (DeepSpeed reduces as usual)."""
    return None if overlap_unsupported(engine) is not None else OverlappedGradientReduction(engine, bucket_bytes)
