"""Start-up of the ``lumbarseg`` command: ``--help`` and ``--version`` (and every subcommand's ``--help``)
build the whole parser without loading torch, SimpleITK or scipy, which take seconds to import.

Each check runs in a fresh interpreter: the test process itself has long imported torch. The time it
takes is measured by ``benchmarks/bench_startup.py``, not asserted here (a loaded CI machine is slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "SimpleITK", "scipy", "vtk")

PROBE = """
import contextlib, io, json, sys
from LumbarSegLib import cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "stdout": out.getvalue(),
                  "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY,)


def run_fresh(*argv):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_version_loads_no_torch():
    from LumbarSegLib import __version__

    result = run_fresh("--version")
    assert result["rc"] == 0
    assert result["stdout"].strip() == f"lumbarseg {__version__}"
    assert result["heavy"] == []


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["train", "--help"],
                                  ["evaluate-model", "--help"], ["phantom", "--help"], ["batch", "--help"],
                                  ["serve", "--help"]])
def test_help_loads_no_torch(argv):
    result = run_fresh(*argv)
    assert result["rc"] == 0
    assert "usage: lumbarseg" in result["stdout"]
    assert result["heavy"] == []


def test_top_level_help_lists_every_command():
    text = run_fresh("--help")["stdout"]
    for command in ("segment", "evaluate", "phantom", "demo", "train", "evaluate-model", "batch", "serve"):
        assert command in text


def test_light_copies_of_training_names_match_the_networks():
    """--config's choices and evaluate-model's default seed are written out in training.commands (no torch);
    they must stay the names of the real configurations and the data module's reserved seeds."""
    from LumbarSegLib.inference.networks import CONFIGS
    from LumbarSegLib.training import commands, data

    assert sorted(commands.CONFIG_NAMES) == sorted(CONFIGS)
    assert data.EVAL_SEED_START == commands.EVAL_SEED_START == 100_000


def test_lazy_packages_still_export_their_names():
    from LumbarSegLib import phantoms, training

    assert callable(phantoms.generate_phantom) and "tight" in phantoms.FOV_CHOICES
    assert callable(training.train_models) and training.EVAL_SEED_START == 100_000
    with pytest.raises(AttributeError):
        training.no_such_name  # noqa: B018


def test_train_refuses_an_unknown_configuration(tmp_path, capsys):
    """--config is checked by the command (no argparse choices, which would need torch for the names)."""
    from LumbarSegLib import cli

    rc = cli.main(["train", "--phantoms", "1", "-o", str(tmp_path / "m.pt"), "--epochs", "1", "--config", "huge"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--config huge: choose one of" in err and "cpu" in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()



def test_the_runtime_alone_offers_its_commands(tmp_path):
    """Slicer installs the runtime only (LumbarSeg/CMakeLists.txt): from a copy without training/, phantoms/,
    web/ and batch/, the command line (the engine subprocess runs it) still starts and offers segment and
    evaluate. ``python -S``: no site-packages, so nothing but the copy can be imported as LumbarSegLib."""
    import shutil

    left_out = ("training", "phantoms", "web", "batch")
    shutil.copytree(REPO / "LumbarSegLib", tmp_path / "LumbarSegLib",
                    ignore=lambda folder, names: [n for n in names if n in left_out or n == "__pycache__"])
    proc = subprocess.run([sys.executable, "-S", "-c", "import sys; from LumbarSegLib import cli; "
                           "sys.exit(cli.main(sys.argv[1:]))", "--help"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")}, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "segment " in proc.stdout and "evaluate " in proc.stdout
    for absent in ("train ", "batch ", "serve ", "phantom ", "demo "):
        assert absent not in proc.stdout
