#!/usr/bin/env bash
# The GPU measurements docs/speed.md asks for, in one go on one CUDA device (about 10-15 minutes); every
# number lands in benchmarks/results/*_cuda.{json,md} with the device named. MNIST must be under
# $CLBENCH_DATA/MNIST/raw (default: ./data). Usage: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CLBENCH_DATA="${CLBENCH_DATA:-$PWD/data}"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: these are the GPU measurements"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
# clbench vs Avalanche vs a bare loop (split-MNIST, replay), then at length (permuted MNIST, 20 tasks)
python benchmarks/speed.py --device cuda --seeds 0 1 2
python benchmarks/speed.py --device cuda --protocol pmnist20 --seeds 0 --methods clbench clbench_seen_next bare
# seed-parallel vs separate runs, and whether batched products round as single ones on this device
python benchmarks/seed_parallel.py --device cuda --benchmarks split-mnist permuted-mnist
# mixed precision and torch.compile (compilation time included)
python benchmarks/amp_compile.py --device cuda --variants fp32 bf16 fp16 compile compile-reduce-overhead
