#!/usr/bin/env bash
# Create .venv with MSKSeg and its test dependencies. Safe to re-run (only installs what is missing).
# TORCH_SPEC chooses the torch build (default torch==2.13.0; on a CUDA machine e.g. "torch --index-url ...").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first: otherwise a dependency resolver may pull a multi-GB CUDA build for a CPU-only machine.
log=.venv/pip-install.log
python -c "import torch" 2>/dev/null || python -m pip install ${TORCH_SPEC:-torch==2.13.0} >"$log" 2>&1 \
  || { cat "$log"; echo "installing torch failed (log above)"; exit 1; }
python -m pip install -e ".[test]" >"$log" 2>&1 || { cat "$log"; echo "installing MSKSeg failed (log above)"; exit 1; }
python -c "import mskseg, torch, monai, slicer; print('mskseg', mskseg.__version__, '| torch', torch.__version__, '| monai', monai.__version__)"
