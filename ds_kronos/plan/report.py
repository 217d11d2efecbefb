"""Text tables for ``launch/plan.py``."""

from __future__ import annotations

from ds_kronos.plan.planner import GIB, Plan, Recommendation


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:9.2f}"


def _label(p: Plan) -> str:
    s = p.setup
    return (f"ZeRO-{s.zero}{' + offload' if s.offload else ''}, micro batch {s.micro_batch}"
            f"{', activation checkpointing' if s.activation_checkpointing else ''}")


def breakdown(p: Plan) -> str:
    s, e, c = p.setup, p.estimate, p.counts
    lines = [
        f"Kronos-{c.variant}: {c.total_params:,} trainable params (largest layer {c.largest_layer_params:,}); "
        f"frozen tokenizer {c.tokenizer_params:,} params",
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
    lines.append(f"DeepSpeed config: {p.ds_config.describe()}")
    return "\n".join(lines)


def ladder(rec: Recommendation, memory_gb: float, margin: float) -> str:
    budget = memory_gb * (1 - margin)
    lines = [f"Fitting {memory_gb:g} GiB per device with a {margin:.0%} margin (budget {budget:.2f} GiB):",
             f"  {'configuration':<62}{'model st.':>10}{'activ.':>10}{'total':>10}  fits"]
    for p in rec.tried:
        e = p.estimate
        lines.append(f"  {_label(p):<62}{gib(e.model_states)[1:]:>10}{gib(e.activations + e.logits)[1:]:>10}"
                     f"{gib(e.total)[1:]:>10}  {'yes' if p is rec.chosen else 'no'}")
    if rec.chosen is None:
        lines.append("No configuration fits: more devices, more memory per device or a shorter context are needed.")
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
