#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine: system libraries (EGL/Mesa for offscreen rendering,
# a font with Chinese/Japanese glyphs for preview titles, python3-venv), the CPU build of PyTorch, then
# LumbarSeg itself with its test extras (slicer-core for the MRML tests).
#
# Where it installs:
#   * inside an active virtual environment (or conda environment): into that one;
#   * otherwise: into a virtual environment .venv in the repository, created if missing -
#     afterwards run `. .venv/bin/activate` (or call .venv/bin/lumbarseg directly);
#   * PYTHON=/path/to/python bash tools/install.sh: into that interpreter, as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries (EGL/Mesa, dicom3tools, a CJK font, python3-venv): apt runs only when one is missing, and
# waits for a dpkg lock another process holds.
bash tools/install_system_packages.sh

CREATED=""
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
  PY=python3
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    CREATED=yes
  fi
  PY=.venv/bin/python
fi

# The CPU build of torch 2.13. PyPI's torch for Linux is the CUDA build (several GB of CUDA libraries), so
# PyTorch's CPU index is added when this machine can reach it: its 2.13.0+cpu sorts above PyPI's 2.13.0.
# Without it, a 2.13.0+cpu wheel in a local wheel cache (pip's find-links) is used when there is one.
TORCH_CPU_INDEX=""
if $PY -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" >/dev/null 2>&1; then
  TORCH_CPU_INDEX="--extra-index-url https://download.pytorch.org/whl/cpu"
fi
$PY -m pip install -q torch==2.13.0 $TORCH_CPU_INDEX
$PY -c "import importlib.metadata as m, sys; sys.exit(sys.platform == 'linux' and '+cpu' not in m.version('torch'))" \
  || echo "Note: PyPI's CUDA build of torch was installed (PyTorch's CPU index was not reachable); it runs on the CPU too."
$PY -m pip install -q -e ".[test]"

echo "LumbarSeg is installed in $($PY -c 'import sys; print(sys.prefix)')${CREATED:+ (a new virtual environment)}."
if [ "$PY" = ".venv/bin/python" ]; then
  echo "Activate it in your shell with:  . .venv/bin/activate"
fi
