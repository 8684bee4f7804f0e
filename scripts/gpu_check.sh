#!/usr/bin/env bash
# On a machine with a CUDA GPU: the engine's device tests (CUDA fp32 and fp16 beside the CPU), then
# speculative against plain decoding by batch size on the GPU, beside transformers on the same GPU.
#   scripts/gpu_check.sh [bench_device.py options, e.g. --json results.json --record docs/benchmarks.md]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
"$python" -m pytest -q -p no:cacheprovider tests/unit/test_devices.py
"$python" scripts/bench_device.py --device cuda --precision fp32 fp16 --skip 40 --clips 32 \
  --batch 1 2 4 8 16 "$@"
