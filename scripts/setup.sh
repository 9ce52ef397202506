#!/usr/bin/env bash
# Create .venv with MSKSeg and its test dependencies. Safe to re-run (only installs what is missing).
#
# torch is installed first, in the build that fits this machine, so that no dependency resolver pulls a
# multi-GB CUDA build onto a machine without a GPU:
#   * TORCH_SPEC set: exactly that (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128");
#   * an NVIDIA GPU visible (nvidia-smi lists one): torch==2.13.0 from the default index (its Linux wheels are
#     the CUDA build);
#   * otherwise the CPU build: a local wheel when pip's find-links hold one (no network needed), else the CPU
#     wheel index of PyTorch (https://download.pytorch.org/whl/cpu).
# PYTHON chooses the interpreter (Python 3.10 to 3.13; default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

if ! "$PY" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
  echo "MSKSeg needs Python 3.10 to 3.13; $PY is $("$PY" -V 2>&1 || echo missing). Set PYTHON=python3.11 (for example)." >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
log=.venv/pip-install.log

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; }

install_torch() {
  if [ -n "${TORCH_SPEC:-}" ]; then
    echo "installing torch: $TORCH_SPEC (TORCH_SPEC)"
    # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
    python -m pip install --progress-bar on $TORCH_SPEC
  elif has_cuda_gpu; then
    echo "installing torch $TORCH_VERSION, CUDA build (an NVIDIA GPU is present; about 3 GB with its CUDA libraries)"
    python -m pip install --progress-bar on "torch==$TORCH_VERSION"
  else
    echo "installing torch $TORCH_VERSION, CPU build (no NVIDIA GPU found; about 200 MB)"
    # "+cpu" first: found where pip's find-links or a mirror hold the CPU wheel (offline machines, CI), and
    # refused at once by the default index, which has no CPU build for Linux; then PyTorch's CPU index.
    # Never plain torch==X from the default index: on Linux that is the CUDA build.
    python -m pip install --progress-bar on "torch==$TORCH_VERSION+cpu" 2>"$log" \
      || python -m pip install --progress-bar on --timeout 60 --retries 2 "torch==$TORCH_VERSION" \
           --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
  fi
}

python -c "import torch" 2>/dev/null || install_torch || { echo "installing torch failed (see above)" >&2; exit 1; }
echo "installing MSKSeg and its test dependencies (log: $log)"
python -m pip install -e ".[test]" >"$log" 2>&1 || { cat "$log"; echo "installing MSKSeg failed (log above)" >&2; exit 1; }
python -c "import mskseg, torch, monai, slicer; print('mskseg', mskseg.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| monai', monai.__version__)"
