#!/usr/bin/env bash
# The wheels that benchmarks/gpu_check.sh installs on a bare CUDA machine (a system python3 with a CUDA torch and no
# network): every package the check imports beyond torch and the standard library, one pinned version each, binary
# wheels for CPython 3.12 on manylinux x86-64 (--python-version picks another CPython), DeepSpeed built here as a
# pure-Python wheel (DS_BUILD_OPS=0: its CUDA ops are compiled on the GPU machine when first used).
#
#   bash benchmarks/gpu_wheels.sh [--python-version 3.12] [OUT]     # OUT: benchmarks/gpu_wheels (git-ignored)
#
# Then run(carry=["benchmarks/gpu_wheels"], command="bash benchmarks/gpu_check.sh") (docs/gpu_check.md). The pins
# are the versions the project's venv tests with; the total must stay under 60 MiB (a device call carries at most
# 64 MiB of ignored files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=3.12
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PY_VERSION=$2; shift 2 ;;
        -*) echo "gpu_wheels: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
OUT=${1:-benchmarks/gpu_wheels}
# A Python with pip, torch and setuptools >= 70.1 (DeepSpeed's setup imports torch; the build is not isolated):
# the project's venv.
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
LIMIT_MIB=60
DEEPSPEED=deepspeed==0.19.8
# Why each: numpy (the golden arrays, DeepSpeed; a bare torch has none), pandas + python-dateutil + six (preparing
# the CSV fixture, the forecast calendar), safetensors (model folders), matplotlib and its own dependencies (the
# trainer's loss-curve PNG), DeepSpeed's runtime dependencies (einops, hjson, msgpack, ninja for its JIT-compiled
# CUDA ops, packaging, psutil, py-cpuinfo, pydantic + pydantic-core + annotated-types + typing-inspection, tqdm)
# and typing-extensions (pydantic needs >= 4.16, newer than a system torch may bring).
PACKAGES=(
    numpy==2.4.6 pandas==3.1.2 python-dateutil==2.9.0.post0 six==1.17.0 safetensors==0.8.0
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.69.1 kiwisolver==1.5.1 pillow==13.0.0
    pyparsing==3.3.3
    einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 packaging==26.4 psutil==7.2.2 py-cpuinfo==9.0.0
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 tqdm==4.70.1
    typing-extensions==4.16.0
)

mkdir -p "$OUT"
rm -f "$OUT"/*.whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --dest "$OUT" "${PACKAGES[@]}"

# DeepSpeed publishes a source archive only: build a wheel without its ops (pure Python, any CPython 3).
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: --dest "$BUILD" "$DEEPSPEED"
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$OUT" \
    "$BUILD"/deepspeed-* >"$BUILD/build.log" 2>&1 || {
    tail -5 "$BUILD/build.log" >&2
    echo "gpu_wheels: building DeepSpeed's wheel failed with $PYTHON (it needs torch and setuptools >= 70.1:" \
         "PYTHON=path/to/the/project/.venv/bin/python)" >&2
    exit 1
}
ls "$OUT"/deepspeed-*-py3-none-any.whl >/dev/null || { echo "gpu_wheels: DeepSpeed's wheel is not pure Python" >&2
                                                      exit 1; }

ls -l "$OUT"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5 / 1048576, $NF}'
TOTAL=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
printf "gpu_wheels: %d wheels for CPython %s, %.1f MiB in %s\n" "$(ls "$OUT"/*.whl | wc -l)" "$PY_VERSION" \
    "$(echo "$TOTAL / 1048576" | bc -l)" "$OUT"
if [ "$TOTAL" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_wheels: over the ${LIMIT_MIB} MiB limit: a device call could not carry them" >&2
    exit 1
fi
