#!/usr/bin/env bash
# Short follow-up on a CUDA machine: hand-written loop vs the Trainer with the sync-free guard
# (train.nan_check_every=50, fused SGD), 3 seeds each. Data as in benchmarks/gpu_run.sh.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
python3 tools/pack_image_tree.py unpack .gpudata/cifar10-jpeg.safetensors /tmp/cifar10-jpeg
bench() { python3 benchmarks/cifar10_gpu.py --data-dir /tmp/cifar10-jpeg "$@"; }
bench --seeds 3 --loop hand --out "$OUT/hand" 2>&1 | tee "$OUT/hand.log"
bench --seeds 3 --loop trainer --nan-check-every 50 --out "$OUT/trainer50" 2>&1 | tee "$OUT/trainer50.log"
