#!/usr/bin/env bash
# The GPU acceptance check (benchmarks/gpu_check.py, docs/gpu_check.md): golden parity, tokenizer precision, ZeRO-2
# resume, ZeRO-3 offload, KV-cache forecasts, throughput/MFU and the NaN guard, in at most 8 minutes on one GPU,
# reported as ONE JSON line (also written to $OUT/gpu_check.json when $OUT is set, with each section's log in
# $OUT/gpu_check_logs/).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run       # the same sections at tiny size on the CPU (a few minutes)
#   bash benchmarks/gpu_check.sh --sections golden,kv_cache
#
# Python: with wheels in $WHEELS (default benchmarks/gpu_wheels, made by benchmarks/gpu_wheels.sh), a bare machine's
# system python3 (its own torch) with the wheels installed into a temporary folder (no venv, no network); without
# wheels, $PYTHON or the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=${WHEELS-benchmarks/gpu_wheels}  # WHEELS= (empty): the venv path even where wheels exist
DRY_RUN=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DRY_RUN=1; done

if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    PYTHON=${PYTHON:-python3}
    SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    trap 'rm -rf "$SITE"' EXIT
    echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE for $("$PYTHON" -V)" >&2
    if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
            --target "$SITE" "$WHEELS"/*.whl >&2; then
        # No pip (or one that refuses): a wheel is a zip archive of its files (their scripts are not needed
        # here, except ninja's).
        echo "gpu_check: pip could not install them; unpacking the wheels instead" >&2
        "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
            "$SITE" "$WHEELS"/*.whl
        mkdir -p "$SITE/bin" && install -m 755 "$SITE"/ninja-*.data/scripts/ninja "$SITE/bin/ninja"
    fi
    export PYTHONPATH="$SITE:$REPO" PATH="$SITE/bin:$PATH"
else
    PYTHON=${PYTHON:-.venv/bin/python}
    [ -x "$PYTHON" ] || PYTHON=python3
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c 'import torch' 2>/dev/null || { echo "gpu_check: $PYTHON has no torch" >&2; exit 1; }

if [ "$DRY_RUN" = 1 ]; then
    export DS_ACCELERATOR=cpu
else
    unset DS_ACCELERATOR  # a CPU setting left in the environment would hide the GPU from DeepSpeed
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >&2 || echo "gpu_check: no nvidia-smi here" >&2
fi

ARGS=()
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    ARGS=(--out "$OUT/gpu_check.json" --logs "$OUT/gpu_check_logs")
fi
# The sections share a 420 s budget (benchmarks/gpu_check.py); this only stops a runner that hangs outside them.
timeout 470 "$PYTHON" benchmarks/gpu_check.py "${ARGS[@]}" "$@"
