"""Host memory of a rank *process* and the NVMe swap files of ZeRO-Infinity, term by term from DeepSpeed's source:
the process baseline, building and loading the model, ZeRO-3's host buffers with and without offload. Names match
``docs/memory_planner.md``."""

from __future__ import annotations

import math

from ds_kronos.plan.counts import ModelCounts
from ds_kronos.plan.setup import ADAM, BYTES, FP32, Setup

# The calibrations below were measured on the CPU; how, and the figures: docs/memory_planner.md, "Calibrations".
# Resident memory of one training process before any model exists (torch + deepspeed imported, a gloo group of 1).
# The frozen tokenizer and the activations are separate terms.
BASELINE_PROCESS_BYTES = 375_000 * 1024
# What importing peft (and the transformers it imports) adds to a --finetune lora rank, on top of the baseline.
LORA_IMPORT_BYTES = 155 * 1024 ** 2
# Processes a ``deepspeed`` launch adds on each node besides the ranks: the runner (``deepspeed`` CLI) and
# ``deepspeed.launcher.launch``, each importing torch and deepspeed (about one baseline each).
LAUNCHER_PROCESSES_PER_NODE = 2
# Resident memory of an offloading ZeRO-3 rank on the CPU that no term below accounts for: measured, not derived
# (likely the allocator keeping freed blocks of the step's large transients; see plan.measure.fix_mmap_threshold).
OFFLOAD_UNATTRIBUTED_BYTES = int(2.4 * 1024 ** 3)


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
        # train/engine/masters.capture_fp32 (bf16): exact fp32 copy of the trained params until initialize is done
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
