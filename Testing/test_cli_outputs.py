"""The ``lumbarseg`` command's output folders and inputs beside the CT: a reused or unwritable folder, the
reference label map, the plausibility warnings and DICOM folders (the rest of the command: test_cli.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import cli
from LumbarSegLib.io import label_maps

from conftest import assert_clean_error, run_cli, write_image


# ---------------------------------------------------------------------------------------------- output folders

def _segment(capsys, ct, out, *extra):
    return run_cli(capsys, "segment", ct, "-o", out, "--device", "cpu", *extra)


@pytest.mark.slow
def test_reused_output_folder_is_refused_then_replaced_whole_with_overwrite(capsys, tmp_path, ct_file, synthetic_ct):
    out = tmp_path / "out"
    rc, _, err = _segment(capsys, ct_file, out, "--stl")
    assert rc == 0, err
    first_report = (out / "report.json").read_text(encoding="utf-8")
    other = tmp_path / "other_ct.nii.gz"
    sitk.WriteImage(sitk.Flip(synthetic_ct[0], [False, True, False]), str(other))

    rc, _, err = _segment(capsys, other, out)  # a second CT into the same folder
    assert_clean_error(rc, err, "already holds a LumbarSeg result", str(ct_file), "--overwrite")
    assert "lumbarseg: read" not in err  # refused before anything was read or computed
    assert (out / "report.json").read_text(encoding="utf-8") == first_report

    rc, _, err = _segment(capsys, other, out, "--overwrite")  # now without --stl
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["path"] == str(other)
    assert report["replaced_result"]["input"] == str(ct_file)
    assert sorted(p.name for p in out.iterdir()) == ["other_ct_labels.nii.gz", "report.json"]  # no stale STLs
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_an_input_inside_the_folder_that_overwrite_replaces_is_refused(capsys, tmp_path, ct_file):
    """The demo (or phantom) folder holds a result and its CT: segmenting that CT into the same folder with
    --overwrite would delete the input together with the earlier result."""
    out = tmp_path / "demo_out"
    rc, _, err = _segment(capsys, ct_file, out)
    assert rc == 0, err
    ct_inside = out / "case01.nii.gz"
    ct_inside.write_bytes(ct_file.read_bytes())
    reference_inside = out / "case01_labels.nii.gz"
    for extra in ([], ["--reference", str(reference_inside)]):
        source = ct_file if extra else ct_inside
        rc, _, err = _segment(capsys, source, out, "--overwrite", *extra)
        assert_clean_error(rc, err, "lies inside the output folder", "Choose another output folder")
        assert ct_inside.is_file() and reference_inside.is_file()


def test_folder_with_other_files_is_never_written(capsys, tmp_path, ct_file):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "L1.stl").write_bytes(b"from another program")
    rc, _, err = _segment(capsys, ct_file, out, "--overwrite")
    assert_clean_error(rc, err, "not empty", "holds no LumbarSeg result")
    assert sorted(p.name for p in out.iterdir()) == ["L1.stl"]


@pytest.mark.slow
def test_ctrl_c_during_the_run_leaves_no_partial_result(capsys, tmp_path, ct_file, monkeypatch):
    """A real SIGINT arrives right after the STL files were written (before the preview and the report)."""
    import os
    import signal

    from LumbarSegLib.results import surfaces

    real_write_stl = surfaces.write_stl

    def write_stl_then_ctrl_c(*args, **kwargs):
        written = real_write_stl(*args, **kwargs)
        assert written  # the STL files exist in the staging folder at this moment
        os.kill(os.getpid(), signal.SIGINT)
        return written

    monkeypatch.setattr(surfaces, "write_stl", write_stl_then_ctrl_c)
    # As at a terminal: Python's own Ctrl-C handler, even when the test runner was started in the background
    # (a non-interactive shell starts background jobs with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # the XUNet's path: the finder's finds no vertebra on this toy CT (cylinders, not anatomy), so no STL
        rc, _, err = _segment(capsys, ct_file, tmp_path / "out", "--stl", "--preview", "--no-finder")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case01.nii.gz"]  # no out/, no staging, no lock


def test_read_only_output_folder_is_a_clean_error(capsys, tmp_path, ct_file):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        rc, _, err = _segment(capsys, ct_file, out)
    finally:
        out.chmod(0o755)
    assert_clean_error(rc, err, "read-only")
    assert list(out.iterdir()) == []


def test_output_under_a_regular_file_is_refused_before_computing(capsys, tmp_path, ct_file):
    regular = tmp_path / "notes.txt"
    regular.write_text("x", encoding="utf-8")
    rc, _, err = _segment(capsys, ct_file, regular / "out")
    assert_clean_error(rc, err, "notes.txt is a file, not a folder")
    assert "lumbarseg: read" not in err


def test_evaluate_checks_its_output_files_before_reading(capsys, tmp_path):
    pred = write_image(tmp_path, "pred.nii.gz", np.zeros((8, 10, 12), np.uint8))
    regular = tmp_path / "notes.txt"
    regular.write_text("x", encoding="utf-8")
    rc, _, err = run_cli(capsys, "evaluate", pred, tmp_path / "absent_ref.nii.gz", "-o", regular / "m.json")
    assert_clean_error(rc, err, "notes.txt is a file, not a folder")  # not "absent_ref: no such file"
    locked = tmp_path / "m.csv"
    locked.write_text("old", encoding="utf-8")
    locked.chmod(0o444)
    rc, _, err = run_cli(capsys, "evaluate", pred, pred, "--csv", locked)
    assert_clean_error(rc, err, "m.csv exists and is read-only")
    assert locked.read_text(encoding="utf-8") == "old"


# ---------------------------------------------------------------------------------------------- references

def _thoracic_reference(tmp_path, synthetic_ct):
    """VerSe labels T11/T12 (18, 19) on a coarser grid covering the same CT: no L1-L5 at all."""
    ct = synthetic_ct[0]
    lab = sitk.GetArrayFromImage(synthetic_ct[1]).astype(np.uint8)
    lab = np.where(lab == 1, 18, np.where(lab == 2, 19, 0)).astype(np.uint8)
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(ct)
    coarse = sitk.Resample(img, [s // 2 for s in ct.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                           ct.GetOrigin(), [2 * s for s in ct.GetSpacing()], ct.GetDirection(), 0, sitk.sitkUInt8)
    path = tmp_path / "thoracic_ref.nii.gz"
    sitk.WriteImage(coarse, str(path))
    return path


@pytest.mark.slow
def test_reference_without_lumbar_vertebrae_is_compared_not_refused(capsys, tmp_path, ct_file, synthetic_ct):
    ref = _thoracic_reference(tmp_path, synthetic_ct)
    rc, _, err = _segment(capsys, ct_file, tmp_path / "out", "--reference", ref)
    assert rc == 0, err
    assert "holds no L1-L5 vertebra (its labels are T11, T12 (verse codes))" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert all(m["status"] == "extra" for m in report["metrics"].values())
    assert set(report["metrics"]) == set(report["found"])


def test_evaluate_with_a_reference_without_lumbar_vertebrae(capsys, tmp_path, synthetic_ct):
    ref = _thoracic_reference(tmp_path, synthetic_ct)
    pred = label_maps.write_labelmap(synthetic_ct[1], tmp_path / "pred.nii.gz")
    rc, stdout, err = run_cli(capsys, "evaluate", pred, ref, "-o", tmp_path / "m.json")
    assert rc == 0, err
    assert "holds no L1-L5 vertebra" in err
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert sorted(data["metrics"]) == ["L1", "L2", "L3", "L4", "L5"]
    assert {m["status"] for m in data["metrics"].values()} == {"extra"}


def test_reference_outside_the_ct_is_still_refused(capsys, tmp_path, ct_file, synthetic_ct):
    ref = synthetic_ct[1]
    far = sitk.Image(ref)
    far.SetOrigin([o + 5000.0 for o in ref.GetOrigin()])
    path = label_maps.write_labelmap(far, tmp_path / "far.nii.gz")
    rc, _, err = _segment(capsys, ct_file, tmp_path / "out", "--reference", path)
    assert_clean_error(rc, err, "does not overlap")
    assert "lumbarseg: localize" not in err  # refused before segmenting
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_thoracic_series_with_its_totalsegmentator_labels(capsys, tmp_path, shared_data):
    dicom, labels = shared_data / "ts_dicom", shared_data / "ts_dicom_totalseg.nii.gz"
    if not dicom.is_dir() or not labels.is_file():
        pytest.skip("ts_dicom or its labels are not available")
    rc, _, err = _segment(capsys, dicom, tmp_path / "out", "--reference", labels)
    assert rc == 0, err
    assert "holds no L1-L5 vertebra (its labels are" in err and "T12" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["reference"]["label_scheme"] == "totalseg"
    pred = tmp_path / "out" / "ts_dicom_labels.nii.gz"
    rc, _, err = run_cli(capsys, "evaluate", pred, labels)
    assert rc == 0 and "holds no L1-L5 vertebra" in err


# ---------------------------------------------------------------------------------------------- plausibility

def _phantom_with_truth(tmp_path, spacing, name):
    from LumbarSegLib import phantoms
    ct, truth = phantoms.generate_phantom(5, shape=(64, 64, 80), spacing=(3.0, 3.0, 3.0), fov="lumbar")
    ct.SetSpacing(spacing)  # what a wrong header does: same voxels, other millimetres
    truth.SetSpacing(spacing)
    path = tmp_path / name
    sitk.WriteImage(ct, str(path))
    return path, truth


@pytest.mark.parametrize("spacing, plausible", [((3.0, 3.0, 3.0), True), ((3.0, 3.0, 15.0), False)])
def test_implausible_vertebra_sizes_are_warned_about(capsys, tmp_path, monkeypatch, spacing, plausible):
    """The segmenter is replaced by one that returns the phantom's own truth: with the right header every
    vertebra is plausible; with a slice spacing written 5 times too large every one is flagged."""
    from LumbarSegLib.inference import pipeline

    path, truth = _phantom_with_truth(tmp_path, spacing, "phantom.nii.gz")
    labels = sitk.GetImageFromArray(label_maps.to_internal_labels(sitk.GetArrayViewFromImage(truth), "verse"))
    labels.CopyInformation(truth)

    def perfect(image, **kwargs):
        return pipeline.SegmentationResult(labels, ["L1", "L2", "L3", "L4", "L5"], None, None, 1.0, {}, [], True)

    monkeypatch.setattr(pipeline, "segment", perfect)
    rc, _, err = _segment(capsys, path, tmp_path / "out")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["plausibility"]["plausible"] is plausible
    if plausible:
        assert "implausible" not in err and report["plausibility"]["warnings"] == []
    else:
        assert err.count("WARNING: implausible result:") == 5 and "Check the voxel spacing" in err
        assert len(report["plausibility"]["warnings"]) == 5
        assert all(w in report["messages"] for w in report["plausibility"]["warnings"])
        assert all(m["height_mm"] > 200 for m in report["measurements"].values())


# ---------------------------------------------------------------------------------------------- DICOM series

def test_dicom_folder_with_several_series(capsys, tmp_path):
    from conftest import write_dicom_series

    folder = tmp_path / "dicom"
    write_dicom_series(folder, 24, "1.2.826.0.1.3680043.2.1125.301", description="Abdomen 1.0 B30f")
    write_dicom_series(folder, 3, "1.2.826.0.1.3680043.2.1125.302", z0=500.0, description="Topogram")
    rc, _, err = _segment(capsys, folder, tmp_path / "out")
    assert rc == 0, err
    assert "holds 2 DICOM series; using 1.2.826.0.1.3680043.2.1125.301 ('Abdomen 1.0 B30f', 24 slices)" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    series = report["input"]["dicom_series"]
    assert (series["uid"], series["description"], series["slices"]) == \
        ("1.2.826.0.1.3680043.2.1125.301", "Abdomen 1.0 B30f", 24)
    assert series["other_series"] == [{"uid": "1.2.826.0.1.3680043.2.1125.302", "description": "Topogram",
                                       "slices": 3}]
    assert report["input"]["size"][2] == 24

    rc, _, err = _segment(capsys, folder, tmp_path / "out2", "--series", "1.2.826.0.1.3680043.2.1125.302")
    assert rc == 0, err
    report = json.loads((tmp_path / "out2" / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["dicom_series"]["description"] == "Topogram" and report["input"]["size"][2] == 3

    rc, _, err = _segment(capsys, folder, tmp_path / "out3", "--series", "1.2.3")
    assert_clean_error(rc, err, "no DICOM series with UID 1.2.3", "Topogram", "24 slices")


def test_dicom_series_with_a_missing_slice_is_refused_before_segmenting(capfd, tmp_path):
    """ITK would spread the gap over the whole volume (and print a C++ warning): every vertebra a little
    misplaced and mis-measured, with exit 0."""
    from conftest import series_with

    rc = cli.main(["segment", str(series_with(tmp_path, "missing")), "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert_clean_error(rc, err, "slice spacing is not uniform", "slices are missing")
    assert "lumbarseg: localize" not in err and "WARNING: In" not in err and not (tmp_path / "out").exists()


def test_empty_folder_gives_only_the_clean_error(capfd, tmp_path):
    """GDCM's C++ warning went straight to the process's stderr before our message (capfd sees it)."""
    (tmp_path / "empty").mkdir()
    rc = cli.main(["segment", str(tmp_path / "empty"), "-o", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert_clean_error(rc, err, "this folder is empty")
    assert "WARNING: In" not in err and "GDCM" not in err


def test_smoothing_outside_0_to_1_is_refused_before_computing(capsys, tmp_path, ct_file):
    rc, _, err = _segment(capsys, ct_file, tmp_path / "out", "--stl", "--smoothing", "5")
    assert_clean_error(rc, err, "Smoothing factor 5 is outside 0..1")
    assert "lumbarseg: read" not in err and not (tmp_path / "out").exists()


