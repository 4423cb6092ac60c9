#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine: system libraries (EGL/Mesa for offscreen rendering,
# a font with Chinese/Japanese glyphs for preview titles, python3-venv), the CPU build of PyTorch, then
# LumbarSeg itself with its test extras: the web app (trame-slicer on slicer-core 5.11), slicer-core for
# the MRML tests, pytest and playwright - one environment for everything, `lumbarseg serve` included.
#
# Where it installs:
#   * into a virtual environment .venv in the repository, created if missing - afterwards run
#     `. .venv/bin/activate` (or call .venv/bin/lumbarseg directly). Also when another virtual or conda
#     environment is active (conda's base often is, in every shell): the README's first command activates
#     .venv next, so it must exist;
#   * PYTHON=/path/to/python bash tools/install.sh: into that interpreter, as it is.
#
# --web is still accepted and changes nothing: the web app used to need its own environment .venv-web
# (slicer-core 5.11 beside the main one's 5.13); now everything is on 5.11 and .venv has the web app too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--web" ]; then
  echo "install.sh: note: --web is no longer needed: the one environment has the web app too (lumbarseg serve)."
elif [ -n "${1:-}" ]; then
  echo "install.sh: error: unknown option '$1' (tools/install.sh takes none)" >&2; exit 2
fi

# System libraries (EGL/Mesa, dicom3tools, a CJK font, python3-venv, chromium for the browser tests): apt runs
# only when one is missing, and waits for a dpkg lock another process holds.
bash tools/install_system_packages.sh

CREATED=""
VENV=.venv
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  if [ ! -x $VENV/bin/python ]; then
    python3 -m venv $VENV
    CREATED=yes
  fi
  PY=$VENV/bin/python
fi
if [ -d .venv-web ]; then  # left by an older install.sh --web
  echo "Note: .venv-web is no longer used (.venv has the web app); remove it with: rm -rf .venv-web"
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
if [ "$PY" = "$VENV/bin/python" ]; then
  echo "Activate it in your shell with:  . $VENV/bin/activate   (the web app: lumbarseg serve --sample)"
fi
