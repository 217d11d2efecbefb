"""Per-rank memory of one training configuration: model states (parameters, gradients, optimizer states) and
activations, in bytes: ``estimate`` adds the model states (here), the activations (``plan.activations``) and the
rank process's host and disk terms (``plan.process``).

Model states come from DeepSpeed's own estimators where it ships them (ZeRO-2/3, bf16), and otherwise from the
same byte convention applied here; activations are counted from what autograd saves in this code's layers. The
per-stage table, with the reasons, is in ``docs/memory_planner.md``.

Under ``--finetune lora`` (``counts.trained_params`` < ``counts.total_params``) every parameter is held at the
training precision as before, but gradients, fp32 masters and AdamW moments exist for the trained (adapter)
parameters only; DeepSpeed's estimators are then given the trained count and the frozen parameters are added at
the training precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ds_kronos.plan.activations import activation_bytes, logits_bytes, tokenizer_bytes
from ds_kronos.plan.counts import ModelCounts
from ds_kronos.plan.process import (
    BASELINE_PROCESS_BYTES,
    LAUNCHER_PROCESSES_PER_NODE,
    LORA_IMPORT_BYTES,
    build_terms,
    rank_terms,
    zero3_disk_terms,
    zero3_host_terms,
)
from ds_kronos.plan.setup import ADAM, BYTES, FP32, Setup


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank unless a name says node. ``params``/``grads``/``optimizer``/``activations``/``logits``/
    ``tokenizer`` are what the accelerator holds (``total``: the per-device figure that GPU plans are fitted to).
    The ``rank_*`` fields are the rank *process* (host memory), term by term, from DeepSpeed's source; on
    ``--device cpu`` the accelerator is host memory, so they include the device terms too. Summaries:
    ``rank_peak`` (peak resident memory of one rank), ``node_host`` (host memory of one node: its ranks plus the
    launcher processes) and ``node_disk`` (NVMe swap files of one node)."""

    params: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    tokenizer: int
    host_offload: int
    """Host (CPU) memory per rank for offloaded states; 0 without offload."""
    model_states_source: str
    deepspeed_model_states: int | None
    """DeepSpeed's own device figure for the model states when its estimator applies (bf16 ZeRO-2/3)."""
    ranks_per_node: int = 1
    on_cpu: bool = False
    rank_baseline: int = BASELINE_PROCESS_BYTES
    """torch + deepspeed + gloo group (BASELINE_PROCESS_BYTES), + peft under LoRA (LORA_IMPORT_BYTES)."""
    rank_states: dict[str, int] = field(default_factory=dict)
    """Resident model-state terms of the rank process while training (name -> bytes); see docs/memory_planner.md."""
    rank_step_transient: int = 0
    """Extra bytes alive only while gradients are reduced (ZeRO-3's reduce-scatter copies)."""
    rank_init_transient: int = 0
    """Extra bytes alive only inside deepspeed.initialize (the fp32 master built from a converted copy)."""
    rank_build: dict[str, int] = field(default_factory=dict)
    """Terms of building/loading the model and entering deepspeed.initialize (name -> bytes)."""
    rank_disk: dict[str, int] = field(default_factory=dict)
    """NVMe swap files of one rank (name -> bytes)."""
    export_state: int = 0
    """The fp32 state dict rank 0 holds while it writes best_model/ or final_model/ (train/training_state.
    export_fp32_state_dict keeps it on the writing rank only; write_folder adds no copy). Under LoRA the frozen
    part of it is ``rank0_frozen_copy`` (the same tensors), and the merged layers are new copies."""
    rank0_frozen_copy: int = 0
    """Exact fp32 values of the frozen parameters, which rank 0 (the exporter) keeps for the whole run under bf16
    (train/engine/masters.py: the engine holds them in bf16 only): the base model under LoRA."""

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.logits + self.tokenizer

    # ----------------------------------------------------------------------------- the rank process (host memory)
    @property
    def rank_train(self) -> int:
        """Peak of a training step: baseline, tokenizer, resident states, and on CPU the activations."""
        compute = self.activations + self.logits + self.tokenizer if self.on_cpu else 0
        return self.rank_baseline + compute + sum(self.rank_states.values()) + self.rank_step_transient

    @property
    def rank_build_peak(self) -> int:
        """Peak while the model is built, loaded and handed to deepspeed.initialize (see ``build_terms``)."""
        b = self.rank_build
        tokenizer = self.tokenizer if self.on_cpu else 0
        loading = b.get("model", 0) + b.get("gathered_module", 0) + b.get("checkpoint", 0)
        # Inside initialize: the exact fp32 copy is held while the engine's states are allocated (the fp32 model
        # is cast down first, so the larger of the two is alive next to the copy).
        states = sum(v for k, v in self.rank_states.items() if k not in _STEP_ONLY)
        engine = b.get("fp32_copy", 0) + max(b.get("model", 0), states + self.rank_init_transient)
        return self.rank_baseline + tokenizer + max(loading, engine)

    @property
    def rank_export_peak(self) -> int:
        """Rank 0 while it exports: its resident states (not the step's transients) plus the fp32 state dict (whose
        frozen part is the frozen copy rank 0 keeps anyway)."""
        compute = self.tokenizer if self.on_cpu else 0
        states = sum(v for k, v in self.rank_states.items() if k not in _BACKWARD_ONLY)
        return self.rank_baseline + compute + states + max(self.export_state, self.rank0_frozen_copy)

    @property
    def other_rank_peak(self) -> int:
        """Peak of a rank that does not write exports (bytes)."""
        return max(self.rank_build_peak, self.rank_train)

    @property
    def rank_peak(self) -> int:
        """Peak resident memory of the busiest rank process, rank 0 (bytes): building/initialising, training, or
        holding the exported state dict, whichever is largest."""
        return max(self.other_rank_peak + self.rank0_frozen_copy, self.rank_export_peak)

    @property
    def node_host(self) -> int:
        """Host memory of the node of rank 0 (bytes): rank 0's peak, the others' (they peak in the same phases),
        and the launcher processes."""
        return (self.rank_peak + (self.ranks_per_node - 1) * self.other_rank_peak
                + LAUNCHER_PROCESSES_PER_NODE * BASELINE_PROCESS_BYTES)

    @property
    def rank_disk_total(self) -> int:
        return sum(self.rank_disk.values())

    @property
    def node_disk(self) -> int:
        """NVMe swap files of one node (bytes); 0 unless offload is nvme."""
        return self.ranks_per_node * self.rank_disk_total


# Allocated lazily at the first step or during backward, not inside deepspeed.initialize.
_STEP_ONLY = ("adam_moments", "reduce_bucket", "gathered_params")
# Alive only during forward/backward, not while an export gathers the masters.
_BACKWARD_ONLY = ("reduce_bucket", "gathered_params")


# ------------------------------------------------------------------------------------------------- model states
def _deepspeed_zero2(counts: ModelCounts, setup: Setup) -> tuple[int, int]:
    """(cpu bytes per node, device bytes per rank) from DeepSpeed's ZeRO-2 estimator, for the trained parameters
    (it assumes every parameter trains)."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    return estimate_zero2_model_states_mem_needs(
        total_params=counts.trained_params, num_gpus_per_node=setup.gpus_per_node, num_nodes=setup.nodes,
        cpu_offload=setup.offloaded)


def _deepspeed_zero3(counts: ModelCounts, setup: Setup) -> tuple[int, int]:
    """(cpu bytes per node, device bytes per rank) from DeepSpeed's ZeRO-3 estimator, for the trained parameters.
    ``zero_init=True``: under ZeRO-3 the trainer builds the model inside ``deepspeed.zero.Init`` (each rank
    materialises only its shard)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cpu, device, _ = estimate_zero3_model_states_mem_needs(
        total_params=counts.trained_params, largest_layer_params=counts.largest_layer_params,
        num_gpus_per_node=setup.gpus_per_node, num_nodes=setup.nodes, cpu_offload=setup.offloaded,
        cpu_offload_params=setup.offloaded, zero_init=True)
    return cpu, device


def model_states(counts: ModelCounts, setup: Setup) -> tuple[int, int, int, int, str, int | None]:
    """(params, grads, optimizer, host_offload, source, deepspeed figure) per rank. Gradients and optimizer states
    exist for the T trained parameters only (all P of them, or the adapters)."""
    P, T, L, N = counts.total_params, counts.trained_params, counts.largest_layer_params, setup.world_size
    c = BYTES[setup.precision]
    shard = lambda nbytes: int(nbytes * T / N)  # noqa: E731 - bytes/trained param over the ranks
    mixed = setup.precision != "fp32"
    ours = f"ds_kronos (DeepSpeed's byte convention, {setup.precision})"
    if setup.zero == 0:
        if mixed:
            return c * P, (c + FP32) * T, (FP32 + ADAM) * T, 0, ours + ": no DeepSpeed estimator for ZeRO-0", None
        return c * P, c * T, ADAM * T, 0, ours + ": no DeepSpeed estimator for ZeRO-0", None
    if setup.zero == 1:
        return c * P, c * T + shard(FP32), shard(FP32 + ADAM), 0, ours + ": no DeepSpeed estimator for ZeRO-1", None
    if setup.zero == 2:
        cpu_node, ds_device = _deepspeed_zero2(counts, setup)
        ds_device += c * counts.frozen_params  # replicated at the training precision, no states
        if setup.offloaded:
            params, grads, optimizer, host = c * P, 0, 0, cpu_node // setup.gpus_per_node
        else:
            params, grads, optimizer, host = c * P, shard(c + FP32), shard(FP32 + ADAM), 0
        name = "estimate_zero2_model_states_mem_needs"
    else:
        cpu_node, ds_device = _deepspeed_zero3(counts, setup)
        gathered = 2 * c * L  # the largest layer's full params and grads while it is worked on
        if setup.offloaded:
            # Host side: DeepSpeed's source-derived terms (zero3_host_terms), not its estimator's 1.5x figure.
            params, grads, optimizer, host = gathered, 0, 0, sum(zero3_host_terms(counts, setup).values())
        else:
            frozen = int(c * counts.frozen_params / N)  # partitioned at the training precision, no states
            params, grads, optimizer, host = gathered + shard(c) + frozen, shard(FP32), shard(FP32 + ADAM), 0
            ds_device += frozen
        name = "estimate_zero3_model_states_mem_needs"
    if mixed:
        # DeepSpeed's figure is the total; our split is made to sum to it.
        total = params + grads + optimizer
        optimizer += ds_device - total
        return params, grads, optimizer, host, f"DeepSpeed {name} (split by ds_kronos)", ds_device
    return (params, grads, optimizer, host,
            ours + f": DeepSpeed's {name} assumes 16-bit params (its figure is shown for reference)", ds_device)


def estimate(counts: ModelCounts, setup: Setup) -> MemoryEstimate:
    params, grads, optimizer, host, source, ds_figure = model_states(counts, setup)
    states, step, init = rank_terms(counts, setup, params, grads, optimizer, host)
    return MemoryEstimate(params=params, grads=grads, optimizer=optimizer,
                          activations=activation_bytes(counts, setup), logits=logits_bytes(counts, setup),
                          tokenizer=tokenizer_bytes(counts, setup), host_offload=host,
                          model_states_source=source, deepspeed_model_states=ds_figure,
                          ranks_per_node=min(setup.gpus_per_node, setup.world_size), on_cpu=setup.on_cpu,
                          rank_baseline=BASELINE_PROCESS_BYTES + (LORA_IMPORT_BYTES if counts.lora_rank else 0),
                          rank_states=states, rank_step_transient=step, rank_init_transient=init,
                          rank_build=build_terms(counts, setup), rank_disk=zero3_disk_terms(counts, setup),
                          export_state=FP32 * (counts.total_params + counts.adapted_weight_params),
                          rank0_frozen_copy=FP32 * counts.frozen_params if setup.precision != "fp32" else 0)
