"""Shared fixtures: a small synthetic CT (fast enough for every test) and the optional real data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


def make_synthetic_ct(shape_xyz=(40, 40, 48), spacing=(2.5, 2.5, 2.5), seed: int = 0,
                      direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> tuple[sitk.Image, sitk.Image]:
    """A crude torso in HU (air, soft tissue, a column of five 'vertebral bodies' of bone with discs) and
    its 0..5 labels, L1 at the top. Small, deterministic and realistic enough in intensity to pass
    ``io.validate_ct``; not anatomy - the networks are not expected to segment it well."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_xyz
    z, y, x = np.mgrid[:nz, :ny, :nx]
    ct = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.36 * ny)) ** 2 <= 1
    ct[body] = 40.0
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    column = (x - nx / 2) ** 2 + (y - 0.62 * ny) ** 2 <= (0.12 * nx) ** 2
    height = nz / 5.0
    for i in range(5):  # L1 (label 1) most superior = largest z in LPS
        z_hi = nz - i * height
        z_lo = z_hi - height
        body_z = (z >= z_lo + 0.12 * height) & (z < z_hi - 0.12 * height)
        labels[column & body_z] = i + 1
    ct[labels > 0] = 650.0
    ct += rng.normal(0, 15, ct.shape).astype(np.float32)
    ct_img = sitk.GetImageFromArray(np.round(ct).astype(np.int16))
    lab_img = sitk.GetImageFromArray(labels)
    for img in (ct_img, lab_img):
        img.SetSpacing(spacing)
        img.SetOrigin((-nx * spacing[0] / 2, -ny * spacing[1] / 2, -300.0))
        img.SetDirection(direction)
    return ct_img, lab_img


@pytest.fixture
def synthetic_ct(monkeypatch):
    """(ct, labels) as SimpleITK images; labels are 0..5 on the CT's grid.

    Its vertebra blocks are 7.5-8.6 mL, smaller than any real lumbar vertebra, and the bundled model finds
    0.6-5.5 mL of each: under the pipeline's minimum for a real vertebra (``MIN_VERTEBRA_ML``), which is
    lowered to 0.5 mL for the tests that segment this toy CT in this process, so they still see vertebrae.
    """
    from LumbarSegLib.inference import pipeline

    monkeypatch.setattr(pipeline, "MIN_VERTEBRA_ML", 0.5)
    return make_synthetic_ct()


@pytest.fixture
def ct_file(tmp_path, synthetic_ct):
    path = tmp_path / "case01.nii.gz"
    sitk.WriteImage(synthetic_ct[0], str(path))
    return path


@pytest.fixture
def shared_data() -> Path:
    """The project's shared real-data folder (../shared/data); tests using it skip when it is absent."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is not available")
    return path
