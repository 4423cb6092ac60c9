"""The install scripts. ``tools/install_system_packages.sh`` (run by ``tools/install.sh``): apt is not run
when every package is installed, and when one is missing apt is asked to wait for a dpkg lock held by
another process. The package database is the machine's own (``dpkg-query``); only ``apt-get`` itself is
replaced by a script that records how it was called, since a test must not install packages.

``tools/install.sh`` makes one environment, ``.venv``, with the test extras (the web app included), and
takes ``--web`` as a no-op: it runs on a copy of the scripts with a ``python3`` that records its pip calls
instead of installing (a test must not download torch), so what is asserted is the script's own logic.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "install_system_packages.sh"

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


# --- tools/install.sh

# A stand-in python3: `-m venv DIR` makes DIR/bin/python (itself); any other call is logged as
# "<how it was called> <arguments>" and succeeds, printing a prefix for install.sh's closing line. The
# network probe fails, so no extra index is added.
FAKE_PYTHON = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0; fi
echo "$0 $*" >> "{log}"
case "$*" in *getaddrinfo*) exit 1;; *sys.prefix*) echo /fake/prefix;; esac
exit 0
"""


def _install(tmp_path: Path, *args: str, venv_web: bool = False, env_extra: dict | None = None):
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    for name in ("install.sh", "install_system_packages.sh"):
        shutil.copy(ROOT / "tools" / name, repo / "tools" / name)
    if venv_web:
        (repo / ".venv-web" / "bin").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "python.log"
    for name, text in (("python3", FAKE_PYTHON.format(log=log)), ("apt-get", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update(env_extra or {})
    run = subprocess.run(["bash", str(repo / "tools" / "install.sh"), *args], env=env, capture_output=True,
                         text=True, timeout=120)
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return run, repo, [c for c in calls if " -m pip " in c]


def test_install_makes_one_venv_with_the_test_extras(tmp_path):
    run, repo, pip_calls = _install(tmp_path)
    assert run.returncode == 0, run.stderr
    assert (repo / ".venv" / "bin" / "python").is_file() and not (repo / ".venv-web").exists()
    assert pip_calls == [".venv/bin/python -m pip install -q torch==2.13.0",
                         ".venv/bin/python -m pip install -q -e .[test]"]
    assert "Activate it in your shell with:  . .venv/bin/activate" in run.stdout and "--web" not in run.stdout


def test_install_web_option_is_a_no_op_that_says_so(tmp_path):
    run, repo, pip_calls = _install(tmp_path, "--web", venv_web=True)
    assert run.returncode == 0, run.stderr
    assert "--web is no longer needed" in run.stdout and "rm -rf .venv-web" in run.stdout
    assert pip_calls[-1] == ".venv/bin/python -m pip install -q -e .[test]" and len(pip_calls) == 2
    assert not (repo / ".venv-web" / "bin" / "python").exists()  # nothing installed into the old one


def test_install_refuses_an_unknown_option_before_installing(tmp_path):
    run, repo, pip_calls = _install(tmp_path, "--gpu")
    assert run.returncode == 2 and "unknown option '--gpu'" in run.stderr
    assert pip_calls == [] and not (repo / ".venv").exists()


def test_the_test_extras_hold_the_web_app_on_one_slicer_core():
    """One environment is possible only while every extra pins the same slicer-core (trame-slicer's)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project also runs on 3.10
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert "lumbarseg[web]" in extras["test"]
    assert any(r.startswith("trame-slicer") for r in extras["web"])
    pins = {r for reqs in extras.values() for r in reqs if r.startswith("slicer-core")}
    assert pins == {"slicer-core==5.11.0.6"}


def test_install_makes_venv_even_inside_another_environment(tmp_path):
    # conda's base is active in many shells: the README's first command activates .venv right after install.sh
    other = tmp_path / "other_env"
    run, repo, pip_calls = _install(tmp_path, env_extra={"VIRTUAL_ENV": str(other), "CONDA_PREFIX": str(other)})
    assert run.returncode == 0, run.stderr
    assert (repo / ".venv" / "bin" / "python").is_file()
    assert pip_calls == [".venv/bin/python -m pip install -q torch==2.13.0",
                         ".venv/bin/python -m pip install -q -e .[test]"]
