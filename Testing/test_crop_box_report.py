"""report.json's crop box on the input file's own voxel axes (issue 24, item 16): for files stored in any
axis order and direction, the box given as the file's indices holds exactly the voxels of the engine's box
on its internal LPS grid; the internal indices are kept under names that say so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import cli
from LumbarSegLib.inference.preprocess import to_canonical
from LumbarSegLib.results.crop_box import crop_box_report, file_index_box

DIRECTIONS = {
    "LPS": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "RAS (NIfTI's usual)": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "sagittal slices": (0, 0, 1, 1, 0, 0, 0, -1, 0),
    "coronal, feet first": (1, 0, 0, 0, 0, -1, 0, -1, 0),
}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_the_file_index_box_holds_the_same_voxels_as_the_internal_box(direction):
    size = (7, 9, 11)
    image = sitk.GetImageFromArray(np.arange(np.prod(size), dtype=np.int32).reshape(size[::-1]))
    image.SetDirection(direction)
    image.SetSpacing((0.8, 1.1, 2.5))
    canonical = to_canonical(image)
    lo, hi = (1, 2, 3), (4, 6, 5)  # on the canonical grid (x, y, z), hi exclusive
    c = sitk.GetArrayViewFromImage(canonical)[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    flo, fhi = file_index_box(image, lo, hi)
    f = sitk.GetArrayViewFromImage(image)[flo[2]:fhi[2], flo[1]:fhi[1], flo[0]:fhi[0]]
    assert sorted(c.ravel()) == sorted(f.ravel())  # the same voxels, each once
    entry = crop_box_report(image, (lo, hi), None)
    assert entry["index_lo_xyz"] == flo and entry["canonical_index_lo_xyz"] == list(lo)
    assert "own voxel axes" in entry["index_space"] and "internal" in entry["canonical_index_space"]


@pytest.mark.slow
def test_segment_reports_the_crop_box_on_a_ras_files_own_axes(tmp_path):
    from LumbarSegLib.phantoms import generate_phantom

    ct = generate_phantom(11, shape=(56, 48, 80), spacing=(3.2, 3.2, 3.0), fov="lumbar")[0]
    ras = sitk.DICOMOrient(ct, "RAS")  # x and y stored the other way round (NIfTI's usual)
    assert ras.GetDirection()[:5:4] == (-1.0, -1.0)
    path = tmp_path / "ras.nii.gz"
    sitk.WriteImage(ras, str(path))
    out = tmp_path / "out"
    # A crop box in LPS mm over the middle of the image: its file indices are known.
    reader = sitk.ReadImage(str(path))
    a = reader.TransformIndexToPhysicalPoint((10, 12, 8))
    b = reader.TransformIndexToPhysicalPoint((39, 35, 59))
    lo_mm, hi_mm = np.minimum(a, b) - 0.5 * np.asarray(reader.GetSpacing()), np.maximum(a, b) + 0.5 * np.asarray(reader.GetSpacing())
    rc = cli.main(["segment", str(path), "-o", str(out), "--device", "cpu", "-q", "--crop-box",
                   *map(str, lo_mm), *map(str, hi_mm)])
    assert rc == 0
    box = json.loads((out / "report.json").read_text())["crop_box"]
    assert box["index_lo_xyz"] == [10, 12, 8] and box["index_hi_xyz"] == [40, 36, 60]
    size = reader.GetSize()  # x and y run the other way on the internal LPS grid
    assert box["canonical_index_lo_xyz"] == [size[0] - 40, size[1] - 36, 8]
