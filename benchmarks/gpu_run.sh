#!/usr/bin/env bash
# One prepared pass on a CUDA machine with no network: CIFAR-10 speed (hand-written loop vs
# torchsmith's Trainer, 5 seeds each), the cifar10-fast recipe end to end through the CLI,
# and the GPU-marked tests. The CIFAR-10 JPEG tree travels packed in one file:
#   python tools/pack_image_tree.py pack ../shared/data/cifar10-jpeg .gpudata/cifar10-jpeg.safetensors
# Usage: OUT=results bash benchmarks/gpu_run.sh
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 tools/pack_image_tree.py unpack .gpudata/cifar10-jpeg.safetensors /tmp/cifar10-jpeg
bench() { python3 benchmarks/cifar10_gpu.py --data-dir /tmp/cifar10-jpeg "$@"; }
bench --seeds 5 --loop hand --out "$OUT/hand" 2>&1 | tee "$OUT/hand.log"
bench --seeds 5 --loop trainer --out "$OUT/trainer" 2>&1 | tee "$OUT/trainer.log"
bench --seeds 3 --loop trainer-no-guard --out "$OUT/noguard" 2>&1 | tee "$OUT/noguard.log"
bench --seeds 2 --loop hand --epochs 30 --warmup-runs 0 --out "$OUT/hand30" 2>&1 | tee "$OUT/hand30.log"
start=$(date +%s.%N)
python3 -m torchsmith train --recipe cifar10-fast --data-dir /tmp/cifar10-jpeg --precision bf16 \
    --run-dir "$OUT/cli-run" --quiet 2>&1 | tail -3 | tee "$OUT/cli.log"
python3 -c "import sys, time; print(f'whole command {time.time() - float(sys.argv[1]):.1f} s')" "$start" | tee -a "$OUT/cli.log"
python3 -m pytest tests -m gpu -q -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/gpu-tests.log"
