"""Tests of the synthetic CT phantom generator (LumbarSegLib.phantoms). Kept small and fast (coarse grids)."""

import functools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import phantoms

SHAPE = (96, 96, 110)
SPACING = (3.5, 3.5, 3.0)
MASKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "masks"


@functools.lru_cache(maxsize=None)
def _phantom(seed, fov, shape=SHAPE, spacing=SPACING):
    ct, lab = phantoms.generate_phantom(seed, shape=shape, spacing=spacing, fov=fov)
    return ct, lab


def _arrays(ct, lab):
    return sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lab)


def test_deterministic_and_grid():
    ct1, lab1 = _phantom(5, "abdomen")
    ct2, lab2 = phantoms.generate_phantom(5, shape=SHAPE, spacing=SPACING, fov="abdomen")
    a1, l1 = _arrays(ct1, lab1)
    a2, l2 = _arrays(ct2, lab2)
    assert np.array_equal(a1, a2) and np.array_equal(l1, l2)
    for img in (ct1, lab1):
        assert img.GetSize() == SHAPE
        assert np.allclose(img.GetSpacing(), SPACING)
    assert ct1.GetPixelID() == sitk.sitkInt16 and lab1.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(ct1.GetOrigin(), lab1.GetOrigin()) and np.allclose(ct1.GetDirection(), lab1.GetDirection())
    a3, _ = _arrays(*_phantom(6, "abdomen"))
    assert not np.array_equal(a1, a3)


@pytest.mark.parametrize("seed", [11, 12])
def test_abdomen_labels_and_hu(seed):
    a, l = _arrays(*_phantom(seed, "abdomen"))
    present = set(np.unique(l).tolist())
    assert {20, 21, 22, 23, 24} <= present
    assert a.max() > 600 and a.min() < -900
    assert (a < -900).mean() > 0.02  # air outside the body
    for code in (20, 21, 22, 23, 24):
        assert a[l == code].mean() > 100
    # L1 above L5, volumes grow roughly from L1 to L5
    zc = {c: np.argwhere(l == c)[:, 0].mean() for c in (20, 24)}
    ct = _phantom(seed, "abdomen")[0]
    z_l1 = ct.TransformContinuousIndexToPhysicalPoint([0, 0, float(zc[20])])[2]
    z_l5 = ct.TransformContinuousIndexToPhysicalPoint([0, 0, float(zc[24])])[2]
    if ct.GetDirection()[8] > 0:
        assert z_l1 > z_l5
    else:
        assert z_l1 < z_l5
    vol = [(l == c).sum() for c in (20, 21, 22, 23, 24)]
    assert vol[4] > vol[0] * 1.05


def test_superior_in_physical_space():
    ct, lab = _phantom(13, "lumbar")
    lab = sitk.DICOMOrient(lab, "LPS")  # +z superior
    l = sitk.GetArrayFromImage(lab)
    assert np.argwhere(l == 20)[:, 0].mean() > np.argwhere(l == 24)[:, 0].mean()


def test_thoracic_has_no_lumbar():
    for seed in (21, 22):
        _, l = _arrays(*_phantom(seed, "thoracic"))
        present = set(np.unique(l).tolist())
        assert not present & {20, 21, 22, 23, 24, 25}
        assert 19 in present


def test_lower_and_upper_fov():
    _, l = _arrays(*_phantom(31, "lower"))
    present = set(np.unique(l).tolist())
    assert 20 not in present and {23, 24} <= present
    _, l = _arrays(*_phantom(32, "upper"))
    present = set(np.unique(l).tolist())
    assert {19, 20} <= present and 24 not in present


def test_random_grid_and_fov():
    ct, lab = phantoms.generate_phantom(41, shape=(64, 64, 48))
    assert ct.GetSize() == (64, 64, 48) == lab.GetSize()
    assert set(phantoms.FOV_CHOICES) == {"abdomen", "lumbar", "lower", "upper", "thoracic", "slab", "tight"}


def test_slab_is_a_thin_negative_above_l1():
    for seed in (51, 52):
        ct, lab = phantoms.generate_phantom(seed, spacing=(3.0, 3.0, 2.5), fov="slab")
        extent_z = ct.GetSize()[2] * ct.GetSpacing()[2]
        assert extent_z <= 70.0
        present = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist())
        assert not present & {20, 21, 22, 23, 24, 25}
        assert present & {17, 18, 19}


def test_tight_box_shows_two_or_three_lumbar_vertebrae():
    ct, lab = phantoms.generate_phantom(61, spacing=(2.0, 2.0, 2.0), fov="tight")
    extent = np.asarray(ct.GetSize()) * np.asarray(ct.GetSpacing())
    assert extent[0] <= 150 and extent[1] <= 150
    present = set(np.unique(sitk.GetArrayViewFromImage(lab)).tolist()) & {20, 21, 22, 23, 24}
    assert 2 <= len(present) <= 4


def test_write_verse_dataset(tmp_path):
    calls = []
    paths = phantoms.write_verse_dataset(tmp_path, 2, 7, shape=(64, 64, 60), spacing=(4.0, 4.0, 4.0), fov="lumbar",
                                         progress=lambda i, n: calls.append((i, n)), shape_library=None)
    names = sorted(p.name for p in paths)
    assert names == ["sub-000_ct.nii.gz", "sub-000_seg-vert_msk.nii.gz", "sub-001_ct.nii.gz",
                     "sub-001_seg-vert_msk.nii.gz"]
    assert calls == [(1, 2), (2, 2)]
    ct = sitk.ReadImage(str(tmp_path / "sub-001_ct.nii.gz"))
    msk = sitk.ReadImage(str(tmp_path / "sub-001_seg-vert_msk.nii.gz"))
    assert ct.GetSize() == msk.GetSize() == (64, 64, 60)
    assert np.allclose(ct.GetOrigin(), msk.GetOrigin(), atol=1e-3)
    assert np.allclose(ct.GetDirection(), msk.GetDirection())
    # item i uses seed + i
    ref_ct, _ = phantoms.generate_phantom(8, shape=(64, 64, 60), spacing=(4.0, 4.0, 4.0), fov="lumbar")
    assert np.array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(ref_ct))


def test_missing_library_returns_none(tmp_path):
    assert phantoms.load_shape_library(tmp_path / "nope") is None


def test_shape_library_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LUMBARSEG_SHAPE_LIBRARY", "none")
    assert phantoms.load_shape_library() is None
    if MASKS.is_dir():  # an explicit root still loads
        assert phantoms.load_shape_library(MASKS) is not None


def test_shape_library():
    if not MASKS.is_dir():
        pytest.skip(f"shape library not available at {MASKS}")
    lib = phantoms.load_shape_library(MASKS)
    assert lib is not None and len(lib) > 5
    assert lib.get(20) and lib.get(24)
    # find a seed that uses the library (p = 0.5) and check it still yields honest lumbar labels
    for seed in range(50, 56):
        ct, lab = phantoms.generate_phantom(seed, shape=(80, 80, 90), spacing=(4.0, 4.0, 3.5), fov="lumbar",
                                            shape_library=lib)
        a, l = _arrays(ct, lab)
        assert {20, 21, 22, 23, 24} <= set(np.unique(l).tolist())
        assert a[l == 22].mean() > 50  # may be an osteoporotic phantom
