#!/usr/bin/env bash
# The demo (called by `make demo`): the whole pipeline on the built-in demo market, on 2 CPU processes.
#   1. make a synthetic Qlib market and prepare it (train/val/test by date, lookback 90, predict 10)
#   2. train the tiny tokenizer (launch/train_tokenizer.py, ZeRO-2)
#   3. train the tiny predictor over that frozen tokenizer (launch/train.py, ZeRO-2): the main job
#   4. forecast the test split (20 sampled paths per origin) with the trained predictor and with its untrained
#      starting point, score the paths as distributions against random-walk and bootstrap baselines, and backtest
#      the predictor's signal with pyqlib's TopkDropout strategy (launch/evaluate.py)
# Re-running reuses the market and the prepared data. NPROC=1 runs a single process per stage.
set -euo pipefail
OUT=${1:-demo_runs}
PY=.venv/bin/python
NPROC=${NPROC:-2}
SEED=100
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
mkdir -p "$OUT"
stage() { printf '\n=== %s ===\n' "$1"; }

stage "1/4 demo market and prepared dataset"
[ -d "$OUT/qlib" ] || $PY launch/make_demo_data.py --out "$OUT/qlib"
[ -d "$OUT/prepared" ] || $PY launch/prepare_data.py --qlib_dir "$OUT/qlib" --instrument csi300 --out "$OUT/prepared"

stage "2/4 tokenizer training"
.venv/bin/deepspeed --num_gpus "$NPROC" launch/train_tokenizer.py --config launch/demo/train_tokenizer.yaml \
  --data "$OUT/prepared" --save_dir "$OUT/tokenizer" --seed "$SEED"

stage "3/4 predictor training (the main job)"
.venv/bin/deepspeed --num_gpus "$NPROC" launch/train.py --config launch/demo/train_predictor.yaml \
  --data "$OUT/prepared" --tokenizer "$OUT/tokenizer/best_model" --save_dir "$OUT/predictor" --seed "$SEED"

stage "4/4 evaluation on the test split"
# The reference is stage 3's starting point (the random tiny preset it began from, saved as initial_model/).
$PY launch/evaluate.py --data "$OUT/prepared" --tokenizer "$OUT/tokenizer/best_model" \
  --predictor "$OUT/predictor/best_model" --reference_predictor "$OUT/predictor/initial_model" --seed "$SEED" --out "$OUT/evaluation" \
  --sample_count 20 --quantiles 0.05,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95 --backtest --topk 5 --n_drop 1

printf '\ndemo finished:\n  %s\n  %s\n  %s\n' "$OUT/predictor/summary.json (best_model/, loss_curve.png)" \
  "$OUT/tokenizer/summary.json (best_model/)" "$OUT/evaluation/report.json (forecast_examples.png, ic_over_time.png, probabilistic.png)"
