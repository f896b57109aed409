#!/usr/bin/env bash
# One prepared pass on a CUDA machine with no network, inside a fixed time budget:
#   1. CIFAR-10, the cifar10-accurate recipe's parts through torchsmith's Trainer, 5 seeds;
#   2. the speed benchmarks on the GPU: overhead, mnist99, loader;
#   3. the same CIFAR-10 recipe in a hand-written loop (2 seeds) for the Trainer / hand ratio;
#   4. `torchsmith train --recipe cifar10-accurate` through the CLI, then the GPU-marked tests.
# Each step gets at most its own budget and what is left of the whole (BUDGET_S, default 560 s);
# a step that would get under 20 s is skipped and says so. Data travel xz-compressed:
#   python tools/pack_image_tree.py pack ../shared/data/cifar10-jpeg /tmp/c.safetensors
#   xz -6 -c /tmp/c.safetensors > .gpudata/cifar10-jpeg.safetensors.xz
#   (cd ../shared/data && tar cf - mnist/MNIST/raw | xz -6 -c) > .gpudata/mnist.tar.xz
# Usage: OUT=results bash benchmarks/gpu_run.sh   (writes gpu.log and a few JSON files there)
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
WORK=${WORK:-/tmp/torchsmith-gpu}
BUDGET_S=${BUDGET_S:-560}
DEADLINE=$(($(date +%s) + BUDGET_S))
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu.log") 2>&1

step() { # step NAME SECONDS COMMAND...: run with a timeout of min(SECONDS, time left - 5)
    local name=$1 budget=$2 left
    shift 2
    left=$((DEADLINE - $(date +%s) - 5))
    ((budget > left)) && budget=$left
    if ((budget < 20)); then
        echo "=== $name: skipped, ${left}s left"
        return
    fi
    echo "=== $name (at most ${budget}s)"
    local start=$(date +%s)
    timeout "$budget" bash -c '"$@"' step "$@"  # through bash, so shell functions run too
    echo "=== $name: exit $?, $(($(date +%s) - start))s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 - <<'EOF'
import lzma, shutil
with lzma.open(".gpudata/cifar10-jpeg.safetensors.xz") as src, open("/tmp/cifar10-jpeg.safetensors", "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
python3 tools/pack_image_tree.py unpack /tmp/cifar10-jpeg.safetensors /tmp/cifar10-jpeg
mkdir -p /tmp/data && tar xJf .gpudata/mnist.tar.xz -C /tmp/data
CIFAR=/tmp/cifar10-jpeg
MNIST=/tmp/data/mnist

export CIFAR MNIST WORK
bench() { python3 benchmarks/cifar10_gpu.py --data-dir "$CIFAR" --variant 96 "$@"; }
export -f bench
step "cifar10-accurate, Trainer, 5 seeds" 230 bench --loop trainer --nan-check-every 50 --seeds 5 --out "$WORK/trainer"
cp "$WORK/trainer/results.json" "$OUT/cifar96-trainer.json" 2>/dev/null
step "overhead on the GPU" 90 python3 benchmarks/overhead.py --device cuda --data-dir "$MNIST" --repeats 5
step "mnist99 on the GPU" 120 python3 benchmarks/mnist99.py --device cuda --data-dir "$MNIST" --repeats 2
step "cifar10-accurate, hand-written loop, 2 seeds" 100 bench --loop hand --seeds 2 --out "$WORK/hand"
cp "$WORK/hand/results.json" "$OUT/cifar96-hand.json" 2>/dev/null
step "loader, torchsmith's batches on the GPU" 100 python3 benchmarks/loader.py --device cuda --data-dir "$CIFAR" --repeats 3
cli() {
    local start=$(date +%s.%N)
    python3 -m torchsmith train --recipe cifar10-accurate --data-dir "$CIFAR" --precision bf16 \
        --run-dir "$WORK/cli-run" --quiet
    python3 -c "import sys, time; print(f'whole command {time.time() - float(sys.argv[1]):.1f} s')" "$start"
}
export -f cli
step "torchsmith train --recipe cifar10-accurate" 100 cli
cp "$WORK/cli-run/summary.json" "$OUT/cli-summary.json" 2>/dev/null
step "GPU tests" 60 python3 -m pytest tests -m gpu -q -p no:cacheprovider
echo "=== done, $((DEADLINE - $(date +%s)))s of the budget left"
