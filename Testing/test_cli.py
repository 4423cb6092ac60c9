"""The ``lumbarseg`` command: clear one-line errors without tracebacks, and the end-to-end commands."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import cli, io


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _write(tmp_path, name, arr, spacing=(1.0, 1.0, 1.0), pixel=None):
    img = sitk.GetImageFromArray(arr if pixel is None else arr.astype(pixel))
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


def _ct_array(shape=(8, 10, 12)):
    arr = np.full(shape, -1000, np.int16)
    arr[2:6, 3:7, 3:9] = 700
    return arr


def assert_clean_error(rc, err, *fragments):
    assert rc == 2
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("lumbarseg: error: ")]
    assert len(error_lines) == 1 and err.rstrip().endswith(error_lines[0]), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------------------------------------- bad inputs

def test_missing_file(capsys, tmp_path):
    rc, _, err = run(capsys, "segment", tmp_path / "absent.nii.gz", "-o", tmp_path / "out")
    assert_clean_error(rc, err, "absent.nii.gz: no such file")


def test_corrupt_file(capsys, tmp_path):
    path = tmp_path / "garbage.nrrd"
    path.write_bytes(b"NRRD0004\nthis is not really nrrd\n" + bytes(range(256)))
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "garbage.nrrd", "could not be read")


def test_2d_image(capsys, tmp_path):
    path = _write(tmp_path, "slice.nrrd", np.full((20, 20), -1000, np.int16))
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "2D", "3D CT volume")


def test_constant_volume(capsys, tmp_path):
    path = _write(tmp_path, "flat.nii.gz", np.zeros((8, 10, 12), np.int16))
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "constant")


def test_empty_volume(capsys, tmp_path, monkeypatch):
    # A zero-voxel file cannot be written with SimpleITK; feed the reader's result directly.
    path = _write(tmp_path, "ct.nii.gz", _ct_array())
    monkeypatch.setattr(io, "read_image", lambda p, *_: sitk.Image([0, 0, 0], sitk.sitkInt16))
    monkeypatch.setattr(io, "image_information", lambda p, *_: ((0, 0, 0), 1))
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "empty")


def test_uint8_image(capsys, tmp_path):
    arr = np.zeros((8, 10, 12), np.uint8)
    arr[3:5] = 180
    path = _write(tmp_path, "export.nii.gz", arr)
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "8-bit", "expected a CT in Hounsfield units")


def test_mr_like_image(capsys, tmp_path):
    arr = np.random.default_rng(0).uniform(0, 1600, (8, 10, 12)).astype(np.float32)
    path = _write(tmp_path, "t1.nii.gz", arr)
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "expected a CT in Hounsfield units", "MR")


def test_absurd_spacing(capsys, tmp_path):
    path = _write(tmp_path, "metres.nii.gz", _ct_array(), spacing=(0.0008, 0.0008, 0.001))
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "spacing", "plausible CT range")


def test_too_large_volume(capsys, tmp_path, monkeypatch):
    path = _write(tmp_path, "big.nii.gz", _ct_array())
    monkeypatch.setattr(io, "available_memory_bytes", lambda: 10_000)
    rc, _, err = run(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "too large for the available memory", "Crop", "downsample")


def test_folder_without_dicom(capsys, tmp_path):
    rc, _, err = run(capsys, "segment", tmp_path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "no DICOM series")


def test_unavailable_device(capsys, ct_file, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, err = run(capsys, "segment", ct_file, "-o", tmp_path / "out", "--device", "cuda")
    assert_clean_error(rc, err, "no CUDA GPU")


def test_usage_error_returns_2(capsys):
    rc, _, err = run(capsys, "segment")
    assert rc == 2 and "usage:" in err and "Traceback" not in err


def test_installed_entry_point_has_no_traceback(tmp_path):
    """The real process: exit status and stderr as a user sees them."""
    proc = subprocess.run([sys.executable, "-m", "LumbarSegLib.cli", "segment", str(tmp_path / "x.nii.gz"),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "lumbarseg: error:" in proc.stderr


# ---------------------------------------------------------------------------------------------- segment

@pytest.mark.parametrize("fmt", ["nii.gz", "seg.nrrd"])
def test_segment_end_to_end(capsys, ct_file, synthetic_ct, tmp_path, fmt):
    ref_path = io.write_labelmap(synthetic_ct[1], tmp_path / "ref.nii.gz")
    out = tmp_path / "out"
    args = ["segment", ct_file, "-o", out, "--device", "cpu", "--format", fmt, "--reference", ref_path]
    if fmt == "nii.gz":
        args += ["--stl", "--preview"]
    rc, stdout, err = run(capsys, *args)
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
    assert set(report["timings_s"]) >= {"read", "load", "postprocess", "total"}
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
    from LumbarSegLib import pipeline

    def nothing(image, **kwargs):
        labels = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        labels.CopyInformation(image)
        return pipeline.SegmentationResult(labels, [], None, None, 0.01, {"load": 0.0, "localize": 0.0},
                                           ["No lumbar spine found in this image."], True)

    monkeypatch.setattr(pipeline, "segment", nothing)
    rc, stdout, err = run(capsys, "segment", ct_file, "-o", tmp_path / "out", "--stl", "--preview")
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
    p = _write(tmp_path, "pred.nii.gz", pred, spacing=(0.5, 1.0, 2.0))
    r = _write(tmp_path, "ref.nrrd", np.where(ref > 0, ref + 19, 0).astype(np.uint8), spacing=(0.5, 1.0, 2.0))
    rc, stdout, err = run(capsys, "evaluate", p, r, "-o", tmp_path / "m.json", "--csv", tmp_path / "m.csv")
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
    p = _write(tmp_path, "pred.nii.gz", np.zeros((8, 10, 12), np.uint8))
    r = _write(tmp_path, "ct.nii.gz", _ct_array())
    rc, _, err = run(capsys, "evaluate", p, r)
    assert_clean_error(rc, err, "does not look like a label map")


# ---------------------------------------------------------------------------------------------- phantom / demo / training

def test_phantom_command(capsys, tmp_path):
    pytest.importorskip("LumbarSegLib.phantoms")
    rc, stdout, err = run(capsys, "phantom", "-o", tmp_path / "ph", "--n", "1", "--seed", "3",
                          "--shape", "48", "48", "40", "--spacing", "4", "4", "5", "--fov", "lumbar")
    assert rc == 0, err
    ct = sitk.ReadImage(str(next((tmp_path / "ph").glob("*_ct.nii.gz"))))
    assert ct.GetSize() == (48, 48, 40)


def test_demo_small(capsys, tmp_path, monkeypatch):
    pytest.importorskip("LumbarSegLib.phantoms")
    monkeypatch.setattr(cli, "DEMO_SHAPE", (48, 48, 40))
    monkeypatch.setattr(cli, "DEMO_SPACING", (7.0, 7.0, 7.0))
    rc, stdout, err = run(capsys, "demo", "-o", tmp_path / "demo", "--seed", "1", "--device", "cpu")
    assert rc == 0, err
    for name in ("demo_ct.nii.gz", "demo_truth.nii.gz", "demo_labels.nii.gz", "demo_preview.png", "report.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "Agreement with the reference" in stdout and "DSC" in stdout


def test_training_commands_registered_when_available(capsys):
    try:
        from LumbarSegLib import training  # noqa: F401
    except ImportError:
        pytest.skip("training module not installed")
    rc, out, _ = run(capsys, "--help")
    assert rc == 0 and "train" in out
