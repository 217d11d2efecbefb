#!/usr/bin/env bash
# GPU smoke benchmark: DeepSpeed ZeRO-2 bf16 training throughput and MFU for Kronos-small and Kronos-base, one
# process per visible GPU, a few steps each (under 5 minutes on a recent GPU). The DDP baseline is skipped to stay
# short; run benchmarks/train_throughput.py yourself for the DeepSpeed / DDP ratio.
#
#   bash benchmarks/gpu_check.sh                 # PYTHON=.venv/bin/python by default
#   PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh # MFU against a datasheet peak instead of the matmul probe
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found: this needs a CUDA machine (on CPU use benchmarks/train_throughput.py" \
         "with DS_ACCELERATOR=cpu)" >&2
    exit 1
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi sees no GPU (driver not loaded, or none visible to this container)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: $PYTHON has a torch without CUDA (see launch/install_torch.sh)" >&2
    exit 1
fi
unset DS_ACCELERATOR  # a CPU setting left in the environment would hide the GPUs from DeepSpeed

GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu: /'

# A datasheet peak when the GPU is known (dense bf16, the table in ds_kronos/model/flops.py that the trainer's MFU
# uses too), else the benchmark's own matmul probe.
if [ -z "${PEAK_TFLOPS:-}" ]; then
    PEAK_TFLOPS=$("$PYTHON" -c 'import torch
from ds_kronos.model.flops import device_peak
peak = device_peak(torch.cuda.get_device_name(0))
print(peak.tflops("bf16") if peak else "")')
fi
PEAK_ARGS=()
[ -n "${PEAK_TFLOPS:-}" ] && PEAK_ARGS=(--peak_tflops "$PEAK_TFLOPS")

for spec in "small 32" "base 16"; do
    set -- $spec
    echo "== Kronos-$1, ZeRO-2 bf16, $GPUS process(es), micro batch $2 x 512 tokens"
    timeout 140 "$PYTHON" benchmarks/train_throughput.py --variant "$1" --zero 2 --precision bf16 \
        --world_size "$GPUS" --micro_batch "$2" --context 512 --steps 10 --warmup 3 --baseline false \
        "${PEAK_ARGS[@]}" 2>&1 | tee /tmp/gpu_check_$1.log | grep -E "^(Kronos|model FLOPs|deepspeed )" || true
    tail -1 /tmp/gpu_check_$1.log | "$PYTHON" -c \
        'import json, sys; r = json.loads(sys.stdin.read()); print("MFU {:.1%}  ({:.1f} samples/s, peak GPU {:.0f} MiB/rank)".format(r["mfu"], r["samples_per_s"], r["peak_gpu_mb"]))' \
        || { echo "gpu_check: Kronos-$1 failed; log in /tmp/gpu_check_$1.log" >&2; exit 1; }
done
