#!/usr/bin/env bash
# The main job on the built-in demo data (called by `make demo`).
set -euo pipefail
OUT=${1:-demo_runs}
mkdir -p "$OUT"
.venv/bin/python launch/smoke.py --preset small
