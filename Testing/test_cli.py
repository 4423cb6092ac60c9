"""The ``lumbarseg`` command: clear one-line errors without tracebacks, and the end-to-end commands."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import cli
from LumbarSegLib.io import images, label_maps

from conftest import assert_clean_error, bright_box_array, run_cli, write_image


# ---------------------------------------------------------------------------------------------- bad inputs

def test_missing_file(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "segment", tmp_path / "absent.nii.gz", "-o", tmp_path / "out")
    assert_clean_error(rc, err, "absent.nii.gz: no such file")


def test_corrupt_file(capsys, tmp_path):
    path = tmp_path / "garbage.nrrd"
    path.write_bytes(b"NRRD0004\nthis is not really nrrd\n" + bytes(range(256)))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "garbage.nrrd", "could not be read")


def test_2d_image(capsys, tmp_path):
    path = write_image(tmp_path, "slice.nrrd", np.full((20, 20), -1000, np.int16))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "2D", "3D CT volume")


def test_constant_volume(capsys, tmp_path):
    path = write_image(tmp_path, "flat.nii.gz", np.zeros((8, 10, 12), np.int16))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "constant")


def test_empty_volume(capsys, tmp_path, monkeypatch):
    # A zero-voxel file cannot be written with SimpleITK; feed the reader's result directly.
    path = write_image(tmp_path, "ct.nii.gz", bright_box_array())
    monkeypatch.setattr(images, "read_image", lambda p, *_: sitk.Image([0, 0, 0], sitk.sitkInt16))
    monkeypatch.setattr(images, "image_information", lambda p, *_: ((0, 0, 0), 1))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "empty")


def test_uint8_image(capsys, tmp_path):
    arr = np.zeros((8, 10, 12), np.uint8)
    arr[3:5] = 180
    path = write_image(tmp_path, "export.nii.gz", arr)
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "8-bit", "expected a CT in Hounsfield units")


def test_mr_like_image(capsys, tmp_path):
    arr = np.random.default_rng(0).uniform(0, 1600, (8, 10, 12)).astype(np.float32)
    path = write_image(tmp_path, "t1.nii.gz", arr)
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "expected a CT in Hounsfield units", "MR")


def test_absurd_spacing(capsys, tmp_path):
    path = write_image(tmp_path, "metres.nii.gz", bright_box_array(), spacing=(0.0008, 0.0008, 0.001))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "spacing", "plausible CT range")


def test_too_large_volume(capsys, tmp_path, monkeypatch):
    path = write_image(tmp_path, "big.nii.gz", bright_box_array())
    monkeypatch.setattr(images, "available_memory_bytes", lambda: 10_000)
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "too large for the available memory", "Crop", "downsample")


def test_folder_without_dicom(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "segment", tmp_path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "no DICOM series")


def test_unavailable_device(capsys, ct_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, err = run_cli(capsys, "segment", ct_file, "-o", tmp_path / "out", "--device", "cuda")
    assert_clean_error(rc, err, "no CUDA GPU")


def test_usage_error_returns_2(capsys):
    rc, _, err = run_cli(capsys, "segment")
    assert rc == 2 and "usage:" in err and "Traceback" not in err


def test_installed_entry_point_has_no_traceback(tmp_path):
    """The real process: exit status and stderr as a user sees them."""
    proc = subprocess.run([sys.executable, "-m", "LumbarSegLib.cli", "segment", str(tmp_path / "x.nii.gz"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "lumbarseg: error:" in proc.stderr


# ---------------------------------------------------------------------------------------------- segment

@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nii.gz", "seg.nrrd"])
def test_segment_end_to_end(capsys, ct_file, synthetic_ct, tmp_path, fmt):
    ref_path = label_maps.write_labelmap(synthetic_ct[1], tmp_path / "ref.nii.gz")
    out = tmp_path / "out"
    args = ["segment", ct_file, "-o", out, "--device", "cpu", "--format", fmt, "--reference", ref_path]
    if fmt == "nii.gz":
        args += ["--stl", "--preview"]
    rc, stdout, err = run_cli(capsys, *args)
    assert rc == 0, err
    assert "Traceback" not in err

    labels_path = out / f"case01_labels.{fmt}"
    labels = sitk.ReadImage(str(labels_path))
    ct = sitk.ReadImage(str(ct_file))
    assert labels.GetSize() == ct.GetSize() and labels.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-4)

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in ("input", "found", "crop_box", "timings_s", "measurements", "metrics", "messages", "model",
                "stl_coordinate_system", "outputs"):
        assert key in report
    assert report["input"]["size"] == list(ct.GetSize())
    assert report["notice"] == "Research use only, not a medical device"
    # the stages every path runs ("postprocess" and "refine" follow where vertebrae were found)
    assert set(report["timings_s"]) >= {"read", "load", "localize", "segment", "total"}
    assert report["outputs"]["labels"] == str(labels_path)
    assert set(report["measurements"]) == set(report["found"])
    assert report["reference"]["label_scheme"] == "internal"
    assert set(report["metrics"]) >= {"L1", "L2", "L3", "L4", "L5"}  # every reference vertebra is scored
    if not report["model"]["trained"]:
        assert "RANDOM weights" in err and "MEANINGLESS" in err
    if fmt == "nii.gz":
        assert report["stl_coordinate_system"] == "LPS"
        assert sorted(p.stem for p in (out / "stl").glob("*.stl")) == sorted(report["found"])
        assert (out / "case01_preview.png").stat().st_size > 1000
    assert "Found vertebrae:" in stdout and "Agreement with the reference" in stdout


def test_segment_no_spine_found_exits_0(capsys, ct_file, tmp_path, monkeypatch):
    """'Nothing found' is a result, not an error: exit 0 with a clear message."""
    from LumbarSegLib.inference import pipeline

    def nothing(image, **kwargs):
        labels = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        labels.CopyInformation(image)
        return pipeline.SegmentationResult(labels, [], None, None, 0.01, {"load": 0.0, "localize": 0.0},
                                           ["No lumbar spine found in this image."], True)

    monkeypatch.setattr(pipeline, "segment", nothing)
    rc, stdout, err = run_cli(capsys, "segment", ct_file, "-o", tmp_path / "out", "--stl", "--preview")
    assert rc == 0
    assert "none - no lumbar spine found" in stdout and "No lumbar spine found" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["found"] == [] and report["crop_box"] is None and report["outputs"]["stl"] == {}


# ---------------------------------------------------------------------------------------------- evaluate

def test_evaluate_reproduces_hand_computed_metrics(capsys, tmp_path):
    pred = np.zeros((20, 20, 20), np.uint8)
    ref = np.zeros_like(pred)
    pred[2:12, 2:12, 2:12] = 3
    ref[2:12, 2:12, 4:14] = 3      # shifted 2 voxels along x (0.5 mm voxels -> 1 mm)
    ref[14:18, 2:6, 2:6] = 4       # L4 missed by the prediction
    p = write_image(tmp_path, "pred.nii.gz", pred, spacing=(0.5, 1.0, 2.0))
    r = write_image(tmp_path, "ref.nrrd", np.where(ref > 0, ref + 19, 0).astype(np.uint8), spacing=(0.5, 1.0, 2.0))
    rc, stdout, err = run_cli(capsys, "evaluate", p, r, "-o", tmp_path / "m.json", "--csv", tmp_path / "m.csv")
    assert rc == 0, err
    l3 = next(line for line in stdout.splitlines() if line.startswith("L3")).split()
    # |P| = |R| = 1000, overlap 800: DSC 0.8, FND = FPD = 200/2000; the x faces moved 2 x 0.5 mm.
    assert l3[:5] == ["L3", "0.8000", "0.1000", "0.1000", "1.00"]
    l4 = next(line for line in stdout.splitlines() if line.startswith("L4")).split()
    assert l4[:4] == ["L4", "0.0000", "1.0000", "0.0000"] and l4[-1] == "missed"
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert data["reference"]["label_scheme"] == "verse"
    assert data["metrics"]["L3"]["DSC"] == pytest.approx(0.8)
    assert data["metrics"]["L4"]["ASD"] is None
    assert (tmp_path / "m.csv").read_text(encoding="utf-8").startswith("vertebra,DSC,FND,FPD,MSD,ASD,HD95")


def test_evaluate_ct_as_reference_is_clean_error(capsys, tmp_path):
    p = write_image(tmp_path, "pred.nii.gz", np.zeros((8, 10, 12), np.uint8))
    r = write_image(tmp_path, "ct.nii.gz", bright_box_array())
    rc, _, err = run_cli(capsys, "evaluate", p, r)
    assert_clean_error(rc, err, "does not look like a label map")


# ---------------------------------------------------------------------------------------------- phantom / demo / training

@pytest.mark.slow
def test_phantom_command(capsys, tmp_path):
    rc, stdout, err = run_cli(capsys, "phantom", "-o", tmp_path / "ph", "--n", "1", "--seed", "3",
                          "--shape", "48", "48", "40", "--spacing", "4", "4", "5", "--fov", "lumbar")
    assert rc == 0, err
    ct = sitk.ReadImage(str(next((tmp_path / "ph").glob("*_ct.nii.gz"))))
    assert ct.GetSize() == (48, 48, 40)


@pytest.mark.slow
def test_demo_small(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEMO_SHAPE", (48, 48, 40))
    monkeypatch.setattr(cli, "DEMO_SPACING", (7.0, 7.0, 7.0))
    rc, stdout, err = run_cli(capsys, "demo", "-o", tmp_path / "demo", "--seed", "1", "--device", "cpu")
    assert rc == 0, err
    for name in ("demo_ct.nii.gz", "demo_reference.nii.gz", "demo_labels.nii.gz", "demo_preview.png", "report.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "Agreement with the reference" in stdout and "DSC" in stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    # The demo is a run_study like any other: the phantom's seed and timing, and the provenance, are in its report.
    assert report["input"]["phantom_seed"] == 1 and report["input"]["in_memory"] is True
    assert report["timings_s"]["phantom"] > 0 and report["reference"]["label_scheme"] == "verse"
    assert report["provenance"]["options"]["stl"] is True and "Made by LumbarSeg" in stdout


def test_training_commands_registered(capsys):
    rc, out, _ = run_cli(capsys, "--help")
    assert rc == 0 and "train" in out and "evaluate-model" in out


# ---------------------------------------------------------------------------------------------- NaN voxels

def _nan_ct(synthetic_ct, nan_value=np.nan):
    """The synthetic CT as float32 with NaN in the anterior air rows (padding a reformatting tool leaves),
    and the same CT with those voxels set to air: both must give the same segmentation."""
    ct = sitk.GetArrayFromImage(synthetic_ct[0]).astype(np.float32)
    with_nan, with_air = ct.copy(), ct.copy()
    with_nan[:, :3, :] = nan_value
    with_air[:, :3, :] = images.AIR_HU
    cts = []
    for arr in (with_nan, with_air):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(synthetic_ct[0])
        cts.append(img)
    return cts, int(np.count_nonzero(~np.isfinite(with_nan)))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])  # NRRD reads like MHA (test_io)
def test_nan_voxels_are_air_with_a_warning_in_console_and_report(capsys, tmp_path, synthetic_ct, suffix):
    (with_nan, with_air), n_nan = _nan_ct(synthetic_ct)
    nan_path, air_path = tmp_path / f"nan{suffix}", tmp_path / f"air{suffix}"
    sitk.WriteImage(with_nan, str(nan_path))
    sitk.WriteImage(with_air, str(air_path))
    rc, _, err = run_cli(capsys, "segment", nan_path, "-o", tmp_path / "nan_out", "--device", "cpu")
    assert rc == 0, err
    assert f"WARNING: {nan_path} has {n_nan} voxels" in err and "set to air" in err
    rc, _, err_air = run_cli(capsys, "segment", air_path, "-o", tmp_path / "air_out", "--device", "cpu")
    assert rc == 0, err_air
    report = json.loads((tmp_path / "nan_out" / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["nonfinite_voxels_set_to_air"] == n_nan
    assert any(f"has {n_nan} voxels" in m for m in report["messages"])
    air_report = json.loads((tmp_path / "air_out" / "report.json").read_text(encoding="utf-8"))
    assert report["found"] == air_report["found"]
    stem = nan_path.name[: -len(suffix)]
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nan_out" / f"{stem}_labels.nii.gz"))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "air_out" / "air_labels.nii.gz"))))


@pytest.mark.parametrize("suffix", [".mha", ".nii"])
def test_all_nan_image_is_described_as_such(capsys, tmp_path, suffix):
    path = write_image(tmp_path, f"allnan{suffix}", np.full((8, 10, 12), np.nan, np.float32))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "every voxel (960) is NaN")
    assert "every voxel is 0" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- small things

@pytest.mark.parametrize("option, values, fragment", [
    ("--shape", ["0", "0", "0"], "--shape 0 0 0: each of NX NY NZ must be at least"),
    ("--shape", ["64", "-5", "64"], "--shape 64 -5 64"),
    ("--spacing", ["-1", "1", "1"], "--spacing -1 1 1: each of SX SY SZ must be between 0.1 and 20 mm"),
    ("--spacing", ["0", "1", "1"], "--spacing 0 1 1"),
])
def test_phantom_grid_is_checked(capsys, tmp_path, option, values, fragment):
    rc, _, err = run_cli(capsys, "phantom", "-o", tmp_path / "ph", option, *values)
    assert_clean_error(rc, err, fragment)
    assert not (tmp_path / "ph").exists()


@pytest.mark.slow
def test_phantom_prints_progress_and_the_folder_not_a_python_list(capsys, tmp_path):
    rc, stdout, err = run_cli(capsys, "phantom", "-o", tmp_path / "ph", "--n", "2", "--shape", "32", "32", "40",
                          "--spacing", "7", "7", "7", "--fov", "lumbar")
    assert rc == 0, err
    assert "[" not in stdout and "PosixPath" not in stdout
    assert f"Wrote 2 phantom case(s) (4 files: CT + vertebra mask each) to {tmp_path / 'ph'}" in stdout
    assert "lumbarseg: phantom 1/2 written" in err and "lumbarseg: phantom 2/2 written" in err
    manifest = json.loads((tmp_path / "ph" / "report.json").read_text(encoding="utf-8"))
    assert manifest["files"] == sorted(p.name for p in (tmp_path / "ph").glob("sub-*"))


def test_ctrl_c_during_start_up_in_process(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        rc, _, err = run_cli(capsys, "segment", "ct.nii.gz", "-o", "out")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C during start-up escaped cli.main (a traceback for the user)")
    assert rc == 130 and err.strip() == "lumbarseg: interrupted"


def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    """A real SIGINT, delivered to the real process at the moment start-up imports torch."""
    script = textwrap.dedent("""
        import builtins, os, runpy, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, even if started in the background
        real_import = builtins.__import__
        def import_(name, *args, **kwargs):
            if name == "torch" and "torch" not in sys.modules:
                os.kill(os.getpid(), signal.SIGINT)
            return real_import(name, *args, **kwargs)
        builtins.__import__ = import_
        sys.argv = ["lumbarseg"] + sys.argv[1:]
        runpy.run_module("LumbarSegLib.cli", run_name="__main__")
        """)
    proc = subprocess.run([sys.executable, "-c", script, "segment", str(tmp_path / "ct.nii.gz"), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          cwd=Path(cli.__file__).resolve().parents[1])
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "lumbarseg: interrupted"
    assert "Traceback" not in proc.stderr
