"""Trabecular HU where people look, from the command line: report.json, the console table, --csv, and the
DICOM SEG's ROI segments (validated with dciodvfy), with kVp and contrast read from the DICOM header.

These run the bundled model (the pipeline's output is measured, not the phantom's labels)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.io import images
from LumbarSegLib.cli import main
from LumbarSegLib.phantoms import generate_phantom

pytestmark = pytest.mark.slow  # the bundled model runs on a CT in each test

KNOWN_HU = 150.0


@pytest.fixture(scope="module")
def phantom_ct():
    ct, _ = generate_phantom(4, shape=(96, 96, 100), spacing=(1.6, 1.6, 2.5), fov="lumbar", trabecular_hu=KNOWN_HU)
    return ct


def test_segment_reports_trabecular_hu_in_report_console_and_csv(tmp_path, phantom_ct, capsys):
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(phantom_ct, str(path))
    out = tmp_path / "out"
    assert main(["segment", str(path), "-o", str(out), "--csv", "-q"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    measured = 0
    for name in report["found"]:
        entry = report["measurements"][name]["trabecular_hu"]
        assert set(entry) >= {"median", "mean", "sd", "voxels", "volume_ml", "roi", "reason"}
        assert "3D core of the vertebral body" in entry["roi"]
        if entry["reason"] is None:
            measured += 1
            # The pipeline's own labels, on 2.5 mm slices: the core still reads the known HU.
            assert abs(entry["median"] - KNOWN_HU) <= 10, (name, entry)
        else:
            assert entry["median"] is None and entry["reason"]
        assert "trabecular_hu_single_slice" in report["measurements"][name]
    assert measured >= 3
    block = report["bone_density"]
    assert block["acquisition"]["contrast"] == "unknown" and block["acquisition"]["kvp"] is None
    assert block["screening"]["vertebra"] == "L1" and block["thresholds"][0]["up_to_hu"] == 110
    assert "Pickhardt" in printed and "Trabecular bone (HU)" in printed
    for name in report["found"]:
        assert any(line.startswith(name) for line in printed.splitlines() if "|" in line or "no value" in line)
    csv_path = out / "case_measurements.csv"
    assert report["outputs"]["csv"] == str(csv_path)
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [r["vertebra"] for r in rows] == report["found"]
    for row in rows:
        entry = report["measurements"][row["vertebra"]]["trabecular_hu"]
        if entry["median"] is None:
            assert row["trabecular_hu_median"] == "" and row["trabecular_hu_reason"] == entry["reason"]
        else:
            assert float(row["trabecular_hu_median"]) == pytest.approx(entry["median"])


def test_dicom_seg_holds_the_roi_segments_and_the_header_gives_kvp_and_contrast(tmp_path, phantom_ct):
    import highdicom as hd

    from conftest import dciodvfy_errors, write_ct_series

    folder = tmp_path / "dicom"
    write_ct_series(phantom_ct, folder, KVP="100", ContrastBolusAgent="Iohexol")
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "--dicom-seg", "-q"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    acquisition = report["bone_density"]["acquisition"]
    assert acquisition["kvp"] == 100.0 and acquisition["contrast"] == "given"
    assert acquisition["contrast_agent"] == "Iohexol"
    assert any("100 kVp" in n for n in acquisition["notes"]) and any("10-20 HU" in n for n in acquisition["notes"])
    seg_path = out / "dicom_seg.dcm"
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(str(seg_path))
    labels = {seg.get_segment_description(n).segment_label: n for n in seg.get_segment_numbers()}
    measured = [name for name in report["found"] if report["measurements"][name]["trabecular_hu"]["reason"] is None]
    assert measured and all(f"{name} trabecular ROI" in labels for name in measured)
    assert set(report["found"]) <= set(labels)
    # An ROI segment is coded as what it is (bone tissue in its vertebra), not as the vertebra itself.
    roi = seg.get_segment_description(labels[f"{measured[0]} trabecular ROI"])
    vertebra = seg.get_segment_description(labels[measured[0]])
    assert roi.segmented_property_type.value != vertebra.segmented_property_type.value
    assert (roi.segmented_property_category.value, roi.segmented_property_type.value) == ("85756007", "3138006")
    assert [r.value for r in roi.anatomic_regions] == [vertebra.segmented_property_type.value]
    assert "Trabecular bone ROI" in roi.SegmentDescription
    # Each ROI segment, put back on the CT's grid, holds the voxels the report measured.
    grid = images.read_ct(folder)
    hu = sitk.GetArrayViewFromImage(grid)
    volume = seg.get_volume(segment_numbers=[labels[f"{measured[0]} trabecular ROI"]], combine_segments=False)
    mask = _on_grid(volume, grid)
    entry = report["measurements"][measured[0]]["trabecular_hu"]
    assert int(mask.sum()) == entry["voxels"]
    assert float(np.median(hu[mask])) == pytest.approx(entry["median"])


def _on_grid(volume, grid: sitk.Image) -> np.ndarray:
    """A highdicom Volume (one segment) resampled (nearest) onto ``grid`` as a (z, y, x) bool array."""
    array = np.asarray(volume.array)[..., 0] if volume.array.ndim == 4 else np.asarray(volume.array)
    out = np.zeros(grid.GetSize()[::-1], bool)
    affine = np.asarray(volume.affine)
    for idx in np.argwhere(array > 0):
        point = affine @ np.r_[idx.astype(float), 1.0]
        i, j, k = grid.TransformPhysicalPointToIndex(point[:3].tolist())
        out[k, j, i] = True
    return out
