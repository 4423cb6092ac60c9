#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine: system libraries for offscreen rendering, the CPU
# build of PyTorch, then LumbarSeg itself with its test extras (slicer-core for the MRML tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  # EGL + Mesa let VTK render the 3D view without a display (tests and the README screenshot);
  # dicom3tools' dciodvfy validates the DICOM SEG files the tests write.
  PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri dicom3tools"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $PACKAGES >/dev/null; }
fi

PY=${PYTHON:-python3}
# Pinned CPU build: an unpinned torch pulls a multi-GB CUDA build.
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q -e ".[test]"
