"""Text tables for ``launch/plan.py``."""

from __future__ import annotations

from ds_kronos.plan.planner import GIB, Plan, Recommendation
from ds_kronos.plan.process import BASELINE_PROCESS_BYTES


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:9.2f}"


def _label(p: Plan) -> str:
    s = p.setup
    offload = {"none": "", "cpu": " + CPU offload", "nvme": " + NVMe offload"}[s.offload]
    return (f"ZeRO-{s.zero}{offload}, micro batch {s.micro_batch}"
            f"{', activation checkpointing' if s.activation_checkpointing else ''}")


def breakdown(p: Plan) -> str:
    s, e, c = p.setup, p.estimate, p.counts
    lines = [
        f"Kronos-{c.variant}: {c.total_params:,} params (largest layer {c.largest_layer_params:,}), "
        + (f"{c.trained_params:,} trained (LoRA rank {c.lora_rank} adapters; gradients and optimizer states for "
           f"these only)" if c.lora_rank else "all trained")
        + f"; frozen tokenizer {c.tokenizer_params:,} params",
        f"{s.world_size} rank(s) on {s.nodes} node(s), {s.gpus_per_node} per node; {_label(p)}; context {s.context}; "
        f"{s.precision}",
        "",
        f"{'per rank':<34}{'GiB':>9}  source",
        f"{'parameters':<34}{gib(e.params)}  model states: {e.model_states_source}",
        f"{'gradients':<34}{gib(e.grads)}",
        f"{'optimizer (master + AdamW moments)':<34}{gib(e.optimizer)}",
        f"{'activations (predictor)':<34}{gib(e.activations)}  ds_kronos analytic (what autograd saves per token)",
        f"{'logits + loss (2 heads, fp32)':<34}{gib(e.logits)}  ds_kronos analytic",
        f"{'frozen tokenizer':<34}{gib(e.tokenizer)}  ds_kronos analytic (weights + largest transient)",
        f"{'total on device':<34}{gib(e.total)}",
    ]
    if e.host_offload:
        lines.append(f"{'host memory (offloaded states)':<34}{gib(e.host_offload)}  DeepSpeed estimator's CPU "
                     f"figure per node / ranks per node")
    if e.deepspeed_model_states is not None:
        lines.append(f"{'(DeepSpeed device figure)':<34}{gib(e.deepspeed_model_states)}  model states as DeepSpeed's "
                     f"estimator gives them")
    lines += _process_lines(p)
    lines.append(f"DeepSpeed config: {p.ds_config.describe()}")
    return "\n".join(lines)


def _process_lines(p: Plan) -> list[str]:
    """The rank process (host memory) term by term, and the node's memory and disk."""
    e = p.estimate
    where = "CPU accelerator: device = host memory" if e.on_cpu else "host memory of a GPU rank"
    lora = e.rank_baseline != BASELINE_PROCESS_BYTES
    lines = ["", f"{'rank process (' + where + ')':<52}",
             f"{'  baseline (torch, deepspeed, gloo)':<34}{gib(e.rank_baseline)}  "
             f"BASELINE_PROCESS_BYTES{' + LORA_IMPORT_BYTES (peft)' if lora else ''} (measured)"]
    lines += [f"{'  ' + name:<34}{gib(value)}" for name, value in e.rank_states.items()]
    if e.rank_step_transient:
        lines.append(f"{'  reduce-scatter copies (step)':<34}{gib(e.rank_step_transient)}")
    lines.append(f"{'  training peak':<34}{gib(e.rank_train)}")
    lines += [f"{'  build: ' + name:<34}{gib(value)}" for name, value in e.rank_build.items() if value]
    if e.rank_init_transient:
        lines.append(f"{'  build: initialize transient':<34}{gib(e.rank_init_transient)}")
    lines += [f"{'  build/initialize peak':<34}{gib(e.rank_build_peak)}",
              f"{'rank peak (estimate.rank_peak)':<34}{gib(e.rank_peak)}",
              f"{'node host (estimate.node_host)':<34}{gib(e.node_host)}  {e.ranks_per_node} rank(s) + launcher"]
    if e.rank_disk:
        lines += [f"{'  disk: ' + name:<34}{gib(value)}" for name, value in e.rank_disk.items()]
        lines.append(f"{'node disk (estimate.node_disk)':<34}{gib(e.node_disk)}  NVMe swap files")
    return lines


def ladder(rec: Recommendation, memory_gb: float, margin: float, disk_gb: float | None = None) -> str:
    budget = memory_gb * (1 - margin)
    on_cpu = bool(rec.tried) and rec.tried[0].setup.on_cpu
    what = "host memory per node (shared by its ranks)" if on_cpu else "per device"
    disk = f"; {disk_gb:g} GiB disk per node for NVMe swap" if disk_gb is not None else ""
    lines = [f"Fitting {memory_gb:g} GiB {what} with a {margin:.0%} margin (budget {budget:.2f} GiB){disk}:",
             f"  {'configuration':<62}{'model st.':>10}{'activ.':>10}{'device':>10}{'rank':>10}{'node host':>10}"
             f"{'node disk':>10}  fits"]
    for p in rec.tried:
        e = p.estimate
        lines.append(f"  {_label(p):<62}{gib(e.model_states)[1:]:>10}{gib(e.activations + e.logits)[1:]:>10}"
                     f"{gib(e.total)[1:]:>10}{gib(e.rank_peak)[1:]:>10}{gib(e.node_host)[1:]:>10}"
                     f"{gib(e.node_disk)[1:]:>10}  {'yes' if p is rec.chosen else 'no'}")
    if rec.chosen is None:
        lines.append("No configuration fits: more devices, more memory per device or a shorter context are needed"
                     + ("" if disk_gb is not None else " (NVMe offload was not tried: give --disk_gb)") + ".")
        return "\n".join(lines)
    s = rec.chosen.setup
    config = rec.chosen.ds_config
    config_arg = config.path if not config.overrides else "FILE (written by plan.py --write_ds_config FILE)"
    flags = f"--deepspeed_config {config_arg} --batch_size {s.micro_batch}"
    if s.activation_checkpointing:
        flags += " --activation_checkpointing"
    if rec.grad_accum_factor > 1:
        flags += f" --grad_accum <{rec.grad_accum_factor} x yours> (keeps the global batch)"
    lines += [f"Recommended: {_label(rec.chosen)} -> {rec.chosen.ds_config.describe()}",
              f"  launch/train.py {flags}"]
    return "\n".join(lines)
