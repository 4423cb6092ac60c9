#!/usr/bin/env bash
# The Debian/Ubuntu packages LumbarSeg needs (tools/install.sh runs this first), installed only when one is
# missing: on a machine that has them all, apt is not run at all (no root, no lock, no network needed).
#
#   bash tools/install_system_packages.sh            # the packages below
#   bash tools/install_system_packages.sh PKG ...    # these instead
#
# When another process holds the dpkg lock (unattended-upgrades, a second install), apt waits for it for up
# to LUMBARSEG_APT_LOCK_TIMEOUT seconds (default 300) instead of failing at once. apt before 1.9.11 ignores
# the option.
set -euo pipefail

# EGL + Mesa let VTK render the 3D view without a display (tests and the README screenshot); dicom3tools'
# dciodvfy validates the DICOM files the tests write; fonts-droid-fallback has the Chinese/Japanese glyphs
# for file names in preview titles; python3-venv makes tools/install.sh's .venv; chromium is the browser the
# web app's tests drive (Playwright's own browser download is not needed).
PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri dicom3tools fonts-droid-fallback python3-venv chromium"
[ "$#" -gt 0 ] && PACKAGES="$*"

command -v apt-get >/dev/null 2>&1 || exit 0  # not Debian/Ubuntu: install the equivalents yourself

MISSING=""
for package in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || MISSING="$MISSING $package"
done
[ -z "$MISSING" ] && exit 0

SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
APT_GET="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=${LUMBARSEG_APT_LOCK_TIMEOUT:-300} -q"
echo "Installing system packages:$MISSING"
# shellcheck disable=SC2086
$APT_GET install -y $MISSING >/dev/null || { $APT_GET update >/dev/null && $APT_GET install -y $MISSING >/dev/null; }
