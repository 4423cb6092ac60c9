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

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  # EGL + Mesa let VTK render the 3D view without a display (tests and the README screenshot);
  # dicom3tools' dciodvfy validates the DICOM SEG files the tests write; fonts-droid-fallback has the
  # Chinese/Japanese glyphs for file names in preview titles; python3-venv makes .venv below.
  PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri dicom3tools fonts-droid-fallback python3-venv"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null; }
fi

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

# Pinned CPU build: an unpinned torch pulls a multi-GB CUDA build.
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[test]"

echo "LumbarSeg is installed in $($PY -c 'import sys; print(sys.prefix)')${CREATED:+ (a new virtual environment)}."
if [ "$PY" = ".venv/bin/python" ]; then
  echo "Activate it in your shell with:  . .venv/bin/activate"
fi
