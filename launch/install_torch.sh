#!/usr/bin/env bash
# Install torch into the given interpreter's environment only when it has none:
#   - a torch already importable there is kept (a user's CUDA build, say);
#   - with a visible NVIDIA GPU, the default PyPI build (CUDA) is installed;
#   - otherwise the CPU build torch==2.13.0.
# TORCH_SPEC=... overrides the choice (e.g. TORCH_SPEC="torch==2.14.1").
set -euo pipefail
PY=${1:?usage: install_torch.sh PYTHON}
if "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)') already present: keeping it"
  exit 0
fi
if [ -n "${TORCH_SPEC:-}" ]; then
  spec="$TORCH_SPEC"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  spec="torch"
else
  spec="torch==2.13.0"
fi
echo "installing $spec"
"$PY" -m pip install --quiet "$spec"
