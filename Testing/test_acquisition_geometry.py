"""Inputs whose geometry the pipeline must not get wrong: gantry-tilted DICOM series (regularized onto a
regular grid, refused for --dicom-seg), non-orthogonal direction matrices (refused) and special files such
as a named pipe (refused at once instead of blocking)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.io import slice_positions
from LumbarSegLib.io import images, label_maps
from LumbarSegLib.cli import main
from LumbarSegLib.errors import InputError

from conftest import write_ct_series

TILT_DEG = 20.0
BLOCK_MM = (24.0, 30.0, 36.0)  # x, y, z size of the bone block
BLOCK_CENTRE = (5.0, 12.0, 40.0)  # LPS mm


def tilted_phantom(tilt_deg=TILT_DEG, n_slices=40, spacing=(2.0, 2.0), slice_mm=2.5):
    """A CT of a bone block in soft tissue, sampled on slices sheared by a gantry tilt about the x axis:
    slice k lies at z = k * slice_mm along the normal and is shifted by k * slice_mm * tan(tilt) along y.

    Returns the sheared image (a non-orthogonal direction, which write_ct_series turns into the slice
    positions of a tilted acquisition) and the block's volume as sampled (voxels x 2 x 2 x 2.5 mm), in mL."""
    nx, ny = 64, 64
    tan = math.tan(math.radians(tilt_deg))
    origin = np.array([-nx * spacing[0] / 2, -ny * spacing[1] / 2, 0.0])
    k, j, i = np.mgrid[:n_slices, :ny, :nx]
    x = origin[0] + i * spacing[0]
    y = origin[1] + j * spacing[1] + k * slice_mm * tan
    z = origin[2] + k * slice_mm
    inside = np.ones(x.shape, bool)
    for coord, centre, size in zip((x, y, z), BLOCK_CENTRE, BLOCK_MM):
        inside &= np.abs(coord - centre) <= size / 2
    array = np.full(x.shape, 40, np.int16)
    array[inside] = 900
    array[:, :, :3] = -1000  # some air, so the series reads as a CT
    image = sitk.GetImageFromArray(array)
    step = np.array([0.0, tan, 1.0]) * slice_mm
    image.SetSpacing((spacing[0], spacing[1], float(np.linalg.norm(step))))
    image.SetDirection(np.column_stack([(1, 0, 0), (0, 1, 0), step / np.linalg.norm(step)]).ravel().tolist())
    image.SetOrigin(origin.tolist())
    return image, float(inside.sum()) * spacing[0] * spacing[1] * slice_mm / 1000.0


def bone_ml(image: sitk.Image) -> float:
    return float((sitk.GetArrayViewFromImage(image) > 470).sum()) * float(np.prod(image.GetSpacing())) / 1000.0


def test_tilted_series_is_regularized_onto_a_true_grid(tmp_path):
    sheared, true_ml = tilted_phantom()
    folder = tmp_path / "tilted"
    write_ct_series(sheared, folder, seed=1)
    loaded = images.load_ct(folder)
    image = loaded.image
    # a regular grid: orthonormal axes, the slice normal as third axis
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(direction[:, 2], (0, 0, 1), atol=1e-6)
    assert image.GetSpacing()[2] == pytest.approx(2.5, abs=1e-3)
    # the block is where it is in the patient, and its volume is right (ITK's straight stack of these
    # slices puts it 14.5 mm off and makes it 6.4 % = 1 / cos(20 degrees) too large)
    centre = image.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in np.argwhere(sitk.GetArrayViewFromImage(image) > 470).mean(axis=0)[::-1]])
    np.testing.assert_allclose(centre, BLOCK_CENTRE, atol=1.5)
    assert bone_ml(image) == pytest.approx(true_ml, rel=0.02)
    assert any(f"gantry tilt of {TILT_DEG:.1f} degrees" in m and "regular" in m for m in loaded.messages)


def test_a_tilted_series_without_its_rescale_is_refused_as_any_series_is(tmp_path):
    """Stored values without the rescale intercept (0..4095, no air below zero): the wedges that regularizing
    adds outside the sheared stack must not read as air and let it through the HU check."""
    sheared, _ = tilted_phantom()
    stored = sitk.Cast(sheared + 1024, sitk.sitkInt16)  # what the scanner stored; the intercept -1024 is lost
    folder = tmp_path / "tilted_raw"
    write_ct_series(stored, folder, seed=1)
    with pytest.raises(InputError, match="without its rescale intercept"):
        images.load_ct(folder)


def test_tilt_is_measured_from_the_slice_positions():
    orientation = [1, 0, 0, 0, 1, 0]
    straight = [[0, 0, 2.5 * k] for k in range(5)]
    tilted = [[0, 2.5 * k * math.tan(math.radians(15)), 2.5 * k] for k in range(5)]
    assert slice_positions.gantry_tilt_degrees(straight, orientation) == 0.0
    assert slice_positions.gantry_tilt_degrees(tilted, orientation) == pytest.approx(15.0, abs=1e-6)


@pytest.mark.slow
def test_cli_segments_a_tilted_series_on_the_regular_grid_and_says_so(tmp_path):
    sheared, _ = tilted_phantom()
    folder = tmp_path / "tilted"
    write_ct_series(sheared, folder, seed=2)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "--device", "cpu", "-q"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert any("gantry tilt of 20.0 degrees" in m for m in report["messages"])
    labels = sitk.ReadImage(report["outputs"]["labels"])
    ct = images.load_ct(folder).image
    assert labels.GetSize() == ct.GetSize() and np.allclose(labels.GetOrigin(), ct.GetOrigin())
    np.testing.assert_allclose(labels.GetDirection(), ct.GetDirection(), atol=1e-6)
    assert report["input"]["size"] == list(ct.GetSize())


def test_dicom_seg_of_a_tilted_series_fails_before_segmenting(tmp_path, capsys):
    sheared, _ = tilted_phantom()
    folder = tmp_path / "tilted"
    write_ct_series(sheared, folder, seed=3)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "--dicom-seg", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "gantry tilt of 20.0 degrees" in err and "without --dicom-seg" in err
    assert "Traceback" not in err and "read ..." not in err  # refused before the CT was read or segmented
    assert not out.exists()


def test_non_orthogonal_direction_is_refused(tmp_path, capsys):
    from conftest import make_synthetic_ct

    ct, _ = make_synthetic_ct()
    axes = np.array([[1, 0, 0.25], [0, 1, 0], [0, 0, 1.0]])
    ct.SetDirection((axes / np.linalg.norm(axes, axis=0)).ravel().tolist())
    path = tmp_path / "sheared.nrrd"
    sitk.WriteImage(ct, str(path))
    with pytest.raises(InputError, match="not orthogonal"):
        images.load_ct(path)
    out = tmp_path / "out"
    assert main(["segment", str(path), "-o", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not orthogonal" in err and "76.0 degrees" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_named_pipe_input_is_refused_at_once(tmp_path):
    import subprocess
    import sys

    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    # a real subprocess, which would block forever on the pipe (it is killed after 60 s, failing the test)
    proc = subprocess.run([sys.executable, "-m", "LumbarSegLib.cli", "segment", str(fifo), "-o",
                           str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "named pipe" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="named pipe"):
        label_maps.read_labelmap(fifo)  # a reference label map goes through the same reader
