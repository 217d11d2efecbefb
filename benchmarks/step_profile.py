"""Where a training step's time goes: torch.profiler's per-operator self time, grouped by kind of work.

Used by ``train_throughput.py --profile`` (rank 0 of the DeepSpeed phase records its timed steps). The groups are a
reading aid; the per-operator table under them is the measurement. Self time is the time spent in an operator itself,
not in the operators it calls, so nothing is counted twice; time outside any operator (Python, the autograd engine's
own work, waiting) is what is left of the step's wall time.
"""

from __future__ import annotations

from typing import Any

# First match wins: (group, substrings of the lower-cased operator name).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matrix multiply", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn", "mkldnn_",
                         "aten::matmul", "aten::linear")),
    ("attention kernel", ("scaled_dot_product", "flash_attention")),
    ("communication", ("all_reduce", "allreduce", "gloo", "c10d::", "broadcast", "barrier", "all_gather",
                       "reduce_scatter", "record_param_comms")),
    ("optimizer", ("adam", "multi_tensor", "optimizer.")),
    ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy")),
    ("normalisation", ("norm",)),
    ("embedding", ("embedding",)),
    ("dropout / sampling", ("dropout", "bernoulli", "multinomial", "uniform_", "random_", "exponential_")),
    ("casts / copies / layout", ("copy", "aten::to", "clone", "aten::cat", "contiguous", "flatten", "unflatten",
                                 "aten::view", "transpose", "permute", "reshape", "aten::t", "expand", "aten::stack",
                                 "aten::split", "aten::slice", "select", "index", "gather", "scatter", "aten::empty",
                                 "aten::zeros", "aten::ones", "aten::full")),
    ("elementwise", ("aten::add", "aten::sub", "aten::mul", "aten::div", "silu", "gelu", "sigmoid", "tanh", "aten::exp",
                     "aten::log", "aten::sqrt", "rsqrt", "aten::pow", "aten::where", "fill_", "zero_", "aten::neg",
                     "aten::abs", "clamp", "aten::sum", "aten::mean", "aten::max", "aten::min", "threshold", "aten::eq",
                     "aten::ne", "aten::lt", "aten::gt", "aten::le", "aten::ge", "masked_fill", "aten::sign")),
)


OUTSIDE = "outside operators (Python, autograd engine, waiting)"


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, needles in GROUPS:
        if any(needle in lowered for needle in needles):
            return group
    return "other operators"


def summarise(events, steps: int, step_seconds: list[float], top: int = 20) -> dict[str, Any]:
    """Milliseconds per step by group and for the ``top`` operators, from ``profiler.key_averages()``."""
    per_op = {}
    for event in events:
        self_us = event.self_cpu_time_total
        if self_us > 0:
            per_op[event.key] = per_op.get(event.key, 0.0) + self_us / 1000 / steps
    wall_ms = 1000 * sum(step_seconds) / len(step_seconds)
    # The profiler's step marker spans the step: its self time is the time outside every operator.
    outside = per_op.pop("ProfilerStep*", 0.0) + max(wall_ms - sum(per_op.values()), 0.0)
    groups: dict[str, float] = {OUTSIDE: outside}
    for name, ms in per_op.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + ms
    ranked = sorted(per_op.items(), key=lambda item: -item[1])[:top]
    return {"wall_ms_per_step": wall_ms, "groups_ms": dict(sorted(groups.items(), key=lambda item: -item[1])),
            "top_ops_ms": [[name, ms, group_of(name)] for name, ms in ranked]}


def print_summary(profile: dict[str, Any]) -> None:
    wall = profile["wall_ms_per_step"]
    print(f"profile of rank 0 (torch.profiler, self CPU time; the profiler adds overhead): {wall:.1f} ms per step")
    for group, ms in profile["groups_ms"].items():
        print(f"  {group:<54} {ms:8.1f} ms  {ms / wall:6.1%}")
    print("  top operators:")
    for name, ms, group in profile["top_ops_ms"]:
        print(f"    {name[:60]:<60} {ms:8.1f} ms  {ms / wall:6.1%}  ({group})")
