"""Per-rank memory of one training configuration: model states (parameters, gradients, optimizer states) and
activations, in bytes.

Model states come from DeepSpeed's own estimators where it ships them (ZeRO-2/3, bf16), and otherwise from the
same byte convention applied here; activations are counted from what autograd saves in this code's layers. The
per-stage table, with the reasons, is in ``docs/memory_planner.md``.

Under ``--finetune lora`` (``counts.trained_params`` < ``counts.total_params``) every parameter is held at the
training precision as before, but gradients, fp32 masters and AdamW moments exist for the trained (adapter)
parameters only; DeepSpeed's estimators are then given the trained count and the frozen parameters are added at
the training precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ds_kronos.plan.counts import ModelCounts

BYTES = {"fp32": 4, "bf16": 2}
FP32 = 4
ADAM = 8  # two fp32 moments

# Resident memory of one training process before any model exists: torch + deepspeed imported and a gloo process
# group of 1 (DS_ACCELERATOR=cpu, torch 2.13 CPU, deepspeed 0.19.8, Linux x86-64), measured as VmRSS after
# ``deepspeed.init_distributed("gloo")`` and ``import ds_kronos.train.trainer``: 374,916-375,172 KiB over 4 runs
# (RssAnon ~254 MB, RssFile ~121 MB; the file-backed part is the shared libraries, which the ranks of a node share
# in reality but which each rank's RSS counts). The frozen tokenizer and the activations are separate terms.
BASELINE_PROCESS_BYTES = 375_000 * 1024
# What importing peft (and the transformers it imports) adds to a --finetune lora rank, on top of the baseline:
# VmRSS before and after ``import peft`` in a process set up as for BASELINE_PROCESS_BYTES, 154.3-154.6 MiB over 3
# runs (peft 0.21.2, transformers 5.25.0). Without it the plan was 1.30-1.33x under base's measured rank peak
# (benchmarks/finetune_memory.py; docs/performance.md, "Full fine-tuning against LoRA").
LORA_IMPORT_BYTES = 155 * 1024 ** 2
# Processes a ``deepspeed`` launch adds on each node besides the ranks: the runner (``deepspeed`` CLI) and
# ``deepspeed.launcher.launch`` both import torch and deepspeed (measured: ~385 MB VmRSS each next to a 2-rank run).
LAUNCHER_PROCESSES_PER_NODE = 2
# Resident memory of an offloading ZeRO-3 rank on the CPU that no term below accounts for: measured, not derived.
# benchmarks/scale_run.py (2 CPU ranks, bf16, micro batch 2, 100 tokens) left 2.15-2.35 GiB per rank unexplained
# for large with CPU offload and 2.17-2.90 GiB for 1b with NVMe offload (both ranks, training and export peaks),
# and 0.1 GiB for base without offload. Likely the allocator keeping freed blocks of the step's large transients
# (glibc; see ds_kronos.plan.measure.fix_mmap_threshold). A calibration from those very runs, so it is checked
# by them only; the README's scale table shows the planner with and without it.
OFFLOAD_UNATTRIBUTED_BYTES = int(2.4 * 1024 ** 3)


@dataclass(frozen=True)
class ZeroKnobs:
    """The DeepSpeed settings that size ZeRO-3's buffers, read from the planned JSON through DeepSpeed's own config
    model (``deepspeed.runtime.zero.config.DeepSpeedZeroConfig``), so its defaults apply where the file is silent.
    The defaults below are DeepSpeed 0.19's (used when no JSON is at hand)."""

    reduce_bucket_size: int = 500_000_000
    sub_group_size: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    param_buffer_count: int = 5
    param_buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000
    optimizer_buffer_count: int = 4

    @classmethod
    def from_ds_config(cls, config: dict) -> "ZeroKnobs":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        zero = DeepSpeedZeroConfig(**config.get("zero_optimization", {}))
        param = zero.offload_param
        optimizer = zero.offload_optimizer
        return cls(reduce_bucket_size=int(zero.reduce_bucket_size), sub_group_size=int(zero.sub_group_size),
                   max_reuse_distance=int(zero.max_reuse_distance),
                   param_buffer_count=int(param.buffer_count) if param else cls.param_buffer_count,
                   param_buffer_size=int(param.buffer_size) if param else cls.param_buffer_size,
                   max_in_cpu=int(param.max_in_cpu) if param else cls.max_in_cpu,
                   optimizer_buffer_count=int(optimizer.buffer_count) if optimizer else cls.optimizer_buffer_count)


@dataclass(frozen=True)
class Setup:
    """One training configuration to size."""

    world_size: int = 1
    gpus_per_node: int = 1
    zero: int = 0
    offload: str = "none"
    """none, cpu or nvme (ZeRO-Infinity)."""
    micro_batch: int = 16
    context: int = 512
    precision: str = "fp32"
    activation_checkpointing: bool = False
    math_attention: bool = False
    """True where the attention scores are materialised (torch's math SDPA kernel, which CPU training takes when
    attention dropout is on). The flash/efficient kernels keep O(1) per query instead of O(T)."""
    teacher_forcing: bool = False
    on_cpu: bool = False
    """The ranks train on the CPU accelerator: the "device" is host memory, shared by the ranks of a node."""
    from_model_folder: bool = False
    """The predictor is loaded from a model folder (its safetensors state dict is read) rather than built from
    a preset's random init."""
    knobs: ZeroKnobs = ZeroKnobs()

    @property
    def nodes(self) -> int:
        return max(1, math.ceil(self.world_size / self.gpus_per_node))

    @property
    def offloaded(self) -> bool:
        return self.offload != "none"


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
    (train/masters.py: the engine holds them in bf16 only): the base model under LoRA."""

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


# ---------------------------------------------------------------------- ZeRO-3 / ZeRO-Infinity, from DeepSpeed's source
def _sub_group_numel(counts: ModelCounts, setup: Setup) -> int:
    """Elements of the largest optimizer sub-group of a rank: stage3._create_fp16_sub_groups closes a sub-group
    once it reaches sub_group_size, so one can overshoot by one parameter's partition."""
    N = setup.world_size
    per_rank = math.ceil(counts.trained_params / N)
    return min(per_rank, setup.knobs.sub_group_size + math.ceil(counts.largest_tensor_params / N))


def zero3_host_terms(counts: ModelCounts, setup: Setup) -> dict[str, int]:
    """Host-memory terms of a ZeRO-3 rank with offload (cpu or nvme), bytes. Names match docs/memory_planner.md.
    ``part``: this rank's partition of every parameter; ``trained``: of the trained ones (optimizer side)."""
    P, N, c, k = counts.total_params, setup.world_size, BYTES[setup.precision], setup.knobs
    part, trained = math.ceil(P / N), math.ceil(counts.trained_params / N)
    sub = _sub_group_numel(counts, setup)
    terms = {
        # stage3._create_param_groups_fp16_flat_cpu_memory: the rank's compute-precision partition, flat on the
        # host; with nvme only up to offload_param.max_in_cpu elements (the rest stays in the swap files).
        "lp_partition": c * (part if setup.offload == "cpu" else min(part, k.max_in_cpu)),
        # stage3._setup_for_real_optimizer: grad_partitions_flat_buffer, on the host when the optimizer is
        # offloaded, at the gradient-accumulation dtype (engine.get_data_types: the model dtype by default).
        "grad_partition_buffer": c * trained,
    }
    if setup.offload == "cpu":
        terms.update(
            fp32_master=FP32 * trained,  # stage3._create_fp32_partitions: fp16 partition .to(fp32).clone()
            fp32_grads=FP32 * trained,  # stage3.initialize_optimizer_states: subgroup_gradient_buffer
            adam_moments=ADAM * trained)  # DeepSpeedCPUAdam: exp_avg + exp_avg_sq, fp32, at the first step
    else:  # nvme: master, moments and fp32 grads live in swap files; only one sub-group is in memory at a time
        terms.update(
            # stage3.initialize_optimizer_states: gradient_buffer (largest sub-group, fp32) kept as .grad
            fp32_grads=FP32 * sub,
            # swap_tensor/optimizer_utils.OptimizerSwapper: SwapBufferManager(buffer_count x largest sub-group,
            # fp32), page-locked (aio new_cpu_locked_tensor, zeroed)
            optimizer_swap_buffers=k.optimizer_buffer_count * FP32 * sub,
            # swap_tensor/partitioned_param_swapper.AsyncPartitionedParameterSwapper._configure_aio:
            # buffer_count x buffer_size elements at the model dtype, page-locked
            param_swap_buffers=k.param_buffer_count * k.param_buffer_size * c)
        if part > k.max_in_cpu:  # stage3: reserve_partitioned_swap_space for sub-groups without a host buffer
            terms["param_swap_reserve"] = c * sub
    return terms


def zero3_rank_terms(counts: ModelCounts, setup: Setup) -> tuple[dict[str, int], int, int]:
    """(resident terms, step transient, init transient) of a ZeRO-3 rank process on the CPU accelerator, where
    "device" and host are the same memory. Without offload the same buffers exist on the device."""
    P, N, c, k = counts.total_params, setup.world_size, BYTES[setup.precision], setup.knobs
    part, trained = math.ceil(P / N), math.ceil(counts.trained_params / N)
    if setup.offloaded:
        terms = zero3_host_terms(counts, setup)
    else:
        terms = {
            "lp_partition": c * part,  # stage3._create_fp16_partitions_with_defragmentation: lp_param_buffer
            "grad_partition_buffer": c * trained,  # stage3._setup_for_real_optimizer
            "fp32_master": FP32 * trained,  # stage3._create_fp32_partitions
            # stage3._prepare_fp32_grad_for_sub_group: one sub-group's fp32 grad at a time
            "fp32_grads": FP32 * _sub_group_numel(counts, setup),
            "adam_moments": ADAM * trained,
        }
    bucket = c * min(k.reduce_bucket_size, counts.trained_params)
    # stage3._setup_for_real_optimizer: ipg bucket of reduce_bucket_size elements (torch.empty: only the part
    # that gradients fill becomes resident; a model smaller than the bucket fills it to P).
    terms["reduce_bucket"] = bucket
    # partitioned_param_coordinator.__params_to_release: a module is not released when it is used again within
    # max_reuse_distance elements. Forward then backward visits each module twice, so (from the second step, when
    # the trace is complete) about max_reuse_distance / 2 elements of the model stay gathered at the turn from
    # forward to backward, plus the module being gathered.
    terms["gathered_params"] = c * min(P, k.max_reuse_distance // 2 + counts.largest_layer_params)
    # runtime/comm/coalesced_collectives.reduce_scatter_coalesced: torch.cat of the padded bucket, then
    # comm.reduce_scatter_fn's chunked reduce-scatter (gloo on CPU has no reduce_scatter_tensor): ~2 copies of the
    # bucket while it is reduced. Calibrated: base, ZeRO-3 + cpu offload, bf16, 2 CPU ranks: step peak minus
    # steady RSS 0.39 GB = 1.9 x the 205 MB bucket.
    step = 2 * bucket
    # stage3._create_fp32_partitions: ``.to(fp32)`` then ``.clone()``: two fp32 copies briefly (not with nvme,
    # where the conversion goes through the swap buffers).
    init = FP32 * trained if setup.offload != "nvme" else 0
    return terms, step, init


def zero3_disk_terms(counts: ModelCounts, setup: Setup) -> dict[str, int]:
    """NVMe swap files of one rank (ZeRO-Infinity), bytes."""
    if setup.offload != "nvme":
        return {}
    N = setup.world_size
    part, trained = math.ceil(counts.total_params / N), math.ceil(counts.trained_params / N)
    return {
        # partition_parameters.Init._partition_param -> AsyncPartitionedParameterSwapper.swap_out_and_release:
        # every parameter partition is written once at the model dtype (zero_stage_3/<dtype>params/rank<r>)
        "param_swap_files": BYTES[setup.precision] * part,
        # swap_tensor/optimizer_utils: per sub-group the fp32 master, exp_avg and exp_avg_sq
        # (OptimizerSwapper._initialize_parameters / swap_out_optimizer_state) and the fp32 gradients
        # (_swap_out_gradients, '<id>_gradient_<offset>_<length>.tensor.swp')
        "optimizer_swap_files": (FP32 + ADAM) * trained,
        "gradient_swap_files": FP32 * trained,
    }


def build_terms(counts: ModelCounts, setup: Setup) -> dict[str, int]:
    """Bytes of building and loading the model in one rank, before and while entering deepspeed.initialize."""
    P, c = counts.total_params, BYTES[setup.precision]
    if setup.zero == 3:
        # deepspeed.zero.Init: each module is built in fp32, then partitioned at the config dtype; loading goes one
        # module at a time through GatheredParameters, reading one tensor of the state dict at a time.
        return {"model": c * math.ceil(P / setup.world_size), "gathered_module": FP32 * counts.largest_layer_params,
                "checkpoint": FP32 * counts.largest_tensor_params if setup.from_model_folder else 0}
    return {
        "model": FP32 * P,  # every rank builds the whole fp32 model
        # checkpoint.load reads the whole safetensors state dict (fp32) next to the model
        "checkpoint": FP32 * P if setup.from_model_folder else 0,
        # train/masters.capture_fp32 (bf16): exact fp32 copy of the trained params until initialize is done
        "fp32_copy": FP32 * counts.trained_params if setup.precision != "fp32" else 0,
    }


def rank_terms(counts: ModelCounts, setup: Setup, params: int, grads: int, optimizer: int,
               host: int) -> tuple[dict[str, int], int, int]:
    """(resident model-state terms, step transient, init transient) of a rank process."""
    if setup.zero == 3 and (setup.on_cpu or setup.offloaded):
        terms, step, init = zero3_rank_terms(counts, setup)
        if not setup.on_cpu:  # on a GPU only the offloaded buffers are in host memory
            terms = zero3_host_terms(counts, setup)
            step = 0
        if setup.offloaded and setup.on_cpu:
            terms["unattributed (measured)"] = OFFLOAD_UNATTRIBUTED_BYTES
        return terms, step, init
    if setup.on_cpu:
        return {"params": params, "grads": grads, "optimizer": optimizer, "host_offload": host}, 0, 0
    return ({"host_offload": host} if host else {}), 0, 0


# -------------------------------------------------------------------------------------------------- activations
def _mask(b: int) -> int:
    """Bytes per element of a dropout mask: torch's CPU dropout keeps a noise tensor at the activation dtype (the
    fused CUDA kernel keeps a 1-byte mask; the larger figure is used for both)."""
    return b


def norm_bytes(d: int, b: int) -> int:
    """RMSNorm computes in fp32: it saves the fp32 input (the input itself in fp32) and the normalised value at
    the activation precision."""
    return FP32 * d + b * d


def attention_bytes(d: int, b: int, dropout: bool) -> int:
    """Self- or cross-attention per token: the projections' input, rotated q and k and v (what SDPA saves), SDPA's
    output (also out_proj's input, a view) and the output dropout's mask. The fp32 rotary saves only its cos/sin
    tables (they do not require grad), so nothing per token."""
    return b * d + 3 * b * d + b * d + (_mask(b) * d if dropout else 0)


def ffn_bytes(d: int, ff: int, b: int, dropout: bool) -> int:
    """SwiGLU: its input, w1 x, silu(w1 x), w3 x and their product (w2's input), and the dropout mask."""
    return b * d + 4 * b * ff + (_mask(b) * d if dropout else 0)


def block_bytes_per_token(counts: ModelCounts, setup: Setup) -> int:
    c, b = counts.config, BYTES[setup.precision]
    return (2 * norm_bytes(c.d_model, b) + attention_bytes(c.d_model, b, c.resid_dropout_p > 0)
            + ffn_bytes(c.d_model, c.ff_dim, b, c.ffn_dropout_p > 0))


def scores_bytes_per_token(heads: int, context: int, b: int, dropout: bool) -> int:
    """The math SDPA kernel's saved attention probabilities per query and, with attention dropout, the dropout
    mask and the dropped-out probabilities."""
    return heads * context * (b + (_mask(b) + b if dropout else 0))


def activation_bytes(counts: ModelCounts, setup: Setup) -> int:
    """Saved activations of the predictor per rank (blocks, embedding, final norm, dependency layer)."""
    c, b = counts.config, BYTES[setup.precision]
    tokens = setup.micro_batch * setup.context
    block = block_bytes_per_token(counts, setup)
    if setup.math_attention:
        block += scores_bytes_per_token(c.n_heads, setup.context, b, c.attn_dropout_p > 0)
    # Outside the blocks: the fused embedding's input (2d), the final norm, the s1 head's input, and the
    # dependency layer (one cross-attention, its norm, the s2 head's input and the s1-token embedding).
    other = (2 * b * c.d_model + norm_bytes(c.d_model, b) + b * c.d_model
             + attention_bytes(c.d_model, b, c.resid_dropout_p > 0) + norm_bytes(c.d_model, b) + 2 * b * c.d_model)
    if setup.activation_checkpointing:
        # Each block keeps its input; during backward one block at a time is recomputed in full.
        per_token = c.n_layers * b * c.d_model + block + other
    else:
        per_token = c.n_layers * block + other
    return tokens * per_token


def logits_bytes(counts: ModelCounts, setup: Setup) -> int:
    """The two heads' logits (2^s1_bits + 2^s2_bits per token). The loss works in fp32: alive at once are the
    logits, their fp32 log-softmax saved by cross-entropy and, when backward starts, a gradient of the same size;
    bf16 logits add their fp32 copy. Sampling the s1 token (no teacher forcing) adds the fp32 softmax briefly."""
    c, b = counts.config, BYTES[setup.precision]
    vocab = 2 ** c.s1_bits + 2 ** c.s2_bits
    per_vocab = b + FP32 + FP32 + (FP32 if b != FP32 else 0)
    return setup.micro_batch * setup.context * vocab * per_vocab


def tokenizer_bytes(counts: ModelCounts, setup: Setup) -> int:
    """The frozen tokenizer: its weights (fp32 on CPU, fp16 on GPU; fp32 assumed, the larger) and its no-grad
    forward's largest transient (the SwiGLU inner activations of one block)."""
    t = counts.tokenizer_config
    tokens = setup.micro_batch * (setup.context + 1)
    return counts.tokenizer_params * FP32 + tokens * 3 * t.ff_dim * FP32


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
