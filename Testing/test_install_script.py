"""``tools/install_system_packages.sh`` (run by ``tools/install.sh``): apt is not run when every package is
installed, and when one is missing apt is asked to wait for a dpkg lock held by another process.

The package database is the machine's own (``dpkg-query``); only ``apt-get`` itself is replaced by a script
that records how it was called, since a test must not install packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "install_system_packages.sh"

pytestmark = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian/Ubuntu machine")


def _run(tmp_path: Path, *packages: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "apt-get.log"
    fake = bin_dir / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexit 0\n', encoding="utf-8")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", LUMBARSEG_APT_LOCK_TIMEOUT="7")
    run = subprocess.run(["bash", str(SCRIPT), *packages], env=env, capture_output=True, text=True, timeout=60)
    return run, log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def _installed(package: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return status.stdout.strip() == "install ok installed"


def test_nothing_is_run_when_every_package_is_installed(tmp_path):
    present = [p for p in ("bash", "coreutils", "dpkg") if _installed(p)]
    assert present, "a Debian machine has these"
    run, calls = _run(tmp_path, *present)
    assert run.returncode == 0, run.stderr
    assert calls == []  # no apt-get at all: no root, no lock, no network


def test_missing_packages_are_installed_waiting_for_the_dpkg_lock(tmp_path):
    if os.geteuid() != 0 and shutil.which("sudo"):
        pytest.skip("the script would ask sudo for a password")
    missing = "lumbarseg-test-no-such-package"
    run, calls = _run(tmp_path, "bash", missing)
    assert run.returncode == 0, run.stderr
    assert calls == [f"-o DPkg::Lock::Timeout=7 -q install -y {missing}"]  # only the missing one
