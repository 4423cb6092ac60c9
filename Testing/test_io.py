"""Reading, validating and writing images: every bad input gets a specific, actionable InputError."""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.io import images, label_maps, nifti
from LumbarSegLib.errors import InputError
from conftest import series_with, write_dicom_series  # noqa: E402  shared test helpers

OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # axes permuted: geometry must survive I/O


def _ct(values=None, size=(12, 10, 8), spacing=(0.8, 0.9, 2.0), pixel=np.int16):
    arr = np.full(size[::-1], -1000, dtype=pixel) if values is None else values
    if values is None:
        arr[2:6, 3:7, 3:9] = 700
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    return img


# ---------------------------------------------------------------------------------------------- reading

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_read_keeps_geometry(tmp_path, suffix):
    img = _ct()
    img.SetOrigin((10.5, -20.25, 33.0))
    img.SetDirection(OBLIQUE)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    out = images.read_ct(path)
    assert out.GetSize() == img.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), img.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(img))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: no such file"):
        images.read_ct(tmp_path / "nope.nii.gz")


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not a NIfTI file" * 20)
    with pytest.raises(InputError) as exc:
        images.read_ct(path)
    msg = str(exc.value)
    assert "broken.nii.gz" in msg and "corrupt" in msg and "NIfTI" in msg


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_truncated_file_is_input_error(tmp_path, suffix):
    # ITK zero-fills truncated NIfTI files silently; an interrupted download must not pass as a CT.
    good = tmp_path / f"good{suffix}"
    arr = np.random.default_rng(0).integers(-1000, 1500, (30, 30, 30)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(good), useCompression=suffix != ".nii")
    bad = tmp_path / f"truncated{suffix}"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=rf"truncated{suffix}: .*(truncated|corrupt)"):
        images.read_ct(bad)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.nrrd"
    path.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        images.read_ct(path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM series"):
        images.read_ct(tmp_path)


def test_dicom_folder_picks_largest_series(tmp_path):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, 3, "1.2.826.0.1.3680043.2.1125.101")
    write_dicom_series(folder, 6, "1.2.826.0.1.3680043.2.1125.202", z0=100.0)
    with pytest.warns(UserWarning, match="holds 2 DICOM series"):
        img = images.read_ct(folder)
    assert img.GetSize() == (16, 16, 6)
    np.testing.assert_allclose(img.GetSpacing(), (0.7, 0.7, 2.0), atol=1e-4)
    assert img.GetOrigin()[2] == pytest.approx(100.0)


@pytest.mark.parametrize("change, message", [
    ("duplicated", "1 of its 13 slices lie at the same position as another one"),
    ("missing", "slice spacing is not uniform (gaps of 2 to 4 mm, mostly 2 mm): slices are missing"),
    ("no position", "401_005.dcm has no Image Position/Orientation (Patient)"),
])
def test_series_that_does_not_stack_into_one_volume_is_refused(tmp_path, change, message):
    """GDCM sorts by position; with a duplicated or position-less slice it falls back to file-name order and
    ITK stacks the slices in that order with a 1 mm spacing; a missing slice is spread over the volume."""
    folder = series_with(tmp_path, change)
    with pytest.raises(InputError, match=re.escape(message)):
        images.read_ct(folder)


def test_slice_position_problem_accepts_oblique_and_descending_series():
    from LumbarSegLib.io.slice_positions import slice_position_problem

    tilt = np.deg2rad(20)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(tilt), np.sin(tilt)])
    normal = np.cross(row, col)
    positions = [np.array([5.0, -3.0, 40.0]) + 1.25 * k * normal + 0.3 * k * col for k in range(30)]
    orientation = [*row, *col]
    assert slice_position_problem(positions, orientation) is None
    assert slice_position_problem(positions[::-1], orientation) is None
    shuffled = positions[:10] + positions[20:] + positions[10:20]
    assert "not in the order of their positions" in slice_position_problem(shuffled, orientation)


def test_slice_positions_are_checked_against_one_evenly_spaced_stack():
    """ITK stacks a series evenly (slice k at the first position + k mean steps): a spacing that drifts, each gap
    plausible on its own, would put the anatomy millimetres off and is refused; positions written to 0.1 mm
    (0.625 mm slices at 0.6 / 0.7 mm) are a regular stack and are read."""
    from LumbarSegLib.io.slice_positions import slice_position_problem

    orientation = [1, 0, 0, 0, 1, 0]
    drifting = np.concatenate([np.arange(100) * 1.0, 99 + np.arange(1, 101) * 0.91])
    problem = slice_position_problem([[0, 0, z] for z in drifting], orientation)
    assert problem is not None and "mm off an evenly spaced stack" in problem
    rounded = np.round(np.arange(200) * 0.625, 1)
    assert slice_position_problem([[0, 0, z] for z in rounded], orientation) is None


def test_real_dicom_series(shared_data):
    folder = shared_data / "ts_dicom"
    if not folder.is_dir():
        pytest.skip("ts_dicom not available")
    img = images.read_ct(folder)
    assert img.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(img.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-4)
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(img)
    assert stats.GetMinimum() < -500 and stats.GetMaximum() > 500  # rescale slope/intercept applied (HU)


# ---------------------------------------------------------------------------------------------- validation

def test_valid_ct_passes():
    images.validate_ct(_ct())


def test_2d_image():
    img = sitk.GetImageFromArray(np.full((10, 10), -1000, np.int16))
    with pytest.raises(InputError, match=r"2D.*3D CT volume"):
        images.validate_ct(img)


def test_single_slice_volume():
    with pytest.raises(InputError, match="single slice"):
        images.validate_ct(_ct(size=(12, 10, 1)))


def test_vector_image():
    img = sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3)
    with pytest.raises(InputError, match="3 components.*single-channel CT"):
        images.validate_ct(img)


def test_empty_volume():
    with pytest.raises(InputError, match="empty"):
        images.validate_ct(sitk.Image([0, 0, 0], sitk.sitkInt16))


def test_constant_volume():
    img = _ct(values=np.full((8, 10, 12), -1000, np.int16))
    with pytest.raises(InputError, match=r"constant \(every voxel is -1000\)"):
        images.validate_ct(img)


def test_uint8_image():
    arr = np.zeros((8, 10, 12), np.uint8)
    arr[2:5] = 200
    with pytest.raises(InputError, match=r"8-bit image.*expected a CT in Hounsfield units"):
        images.validate_ct(_ct(values=arr))


def test_values_in_8bit_range():
    arr = np.zeros((8, 10, 12), np.int16)
    arr[2:5] = 255
    with pytest.raises(InputError, match=r"0\.\.255.*expected a CT in Hounsfield units"):
        images.validate_ct(_ct(values=arr))


def test_mr_like_range():
    arr = np.random.default_rng(0).uniform(0, 1400, (8, 10, 12)).astype(np.float32)
    with pytest.raises(InputError, match=r"expected a CT in Hounsfield units.*MR"):
        images.validate_ct(_ct(values=arr))


def test_no_bone():
    arr = np.full((8, 10, 12), -1000, np.int16)
    arr[2:6] = 60
    with pytest.raises(InputError, match="expected a CT in Hounsfield units"):
        images.validate_ct(_ct(values=arr))


@pytest.mark.parametrize("form_offset", [268, 292])  # qform's x offset; sform's (srow_x[3])
def test_a_nifti_whose_qform_and_sform_disagree_is_read_with_a_warning(tmp_path, form_offset):
    """A tool that moves one of the two orientations and leaves the other: viewers disagree on where the anatomy
    lies, and ITK reads one silently. The warning names the one used (ITK's, as 3D Slicer's)."""
    import struct

    img = _ct()
    img.SetOrigin((10.0, -20.0, 30.0))
    sitk.WriteImage(img, str(tmp_path / "agree.nii"))
    agree = images.load_ct(tmp_path / "agree.nii")
    assert not any("qform" in m for m in agree.messages)
    header = bytearray((tmp_path / "agree.nii").read_bytes())
    moved = struct.unpack("<f", header[form_offset:form_offset + 4])[0] + 25.0
    header[form_offset:form_offset + 4] = struct.pack("<f", moved)
    (tmp_path / "moved.nii").write_bytes(bytes(header))
    loaded = images.load_ct(tmp_path / "moved.nii")
    x = loaded.image.GetOrigin()[0]  # LPS: the header's RAS x offset, -10, negated; the moved form's is -15
    assert min(abs(x - 10.0), abs(x + 15.0)) < 0.01
    used = ("qform", "sform")[(form_offset == 292) == (abs(x + 15.0) < 0.01)]
    warning = [m for m in loaded.messages if "qform and sform" in m]
    assert len(warning) == 1 and "disagree by up to 25 mm" in warning[0] and f"The {used} was used" in warning[0]
    assert "a tool changed one and left the other" in warning[0]


def test_a_sheared_sform_is_said_to_be_one_and_a_4d_nifti_is_refused_cleanly(tmp_path):
    import struct

    sitk.WriteImage(_ct(), str(tmp_path / "sheared.nii"))
    header = bytearray((tmp_path / "sheared.nii").read_bytes())
    header[284:288] = struct.pack("<f", 0.3)  # srow_x[1]: x moves with j, a shear the qform cannot hold
    (tmp_path / "sheared.nii").write_bytes(bytes(header))
    image = sitk.ReadImage(str(tmp_path / "sheared.nii"))
    note = nifti.orientation_note(tmp_path / "sheared.nii", image)
    assert note is not None and "its sform holds a shear" in note
    four = sitk.JoinSeries([_ct(), _ct()])
    sitk.WriteImage(four, str(tmp_path / "four.nii"))
    header = bytearray((tmp_path / "four.nii").read_bytes())
    header[292:296] = struct.pack("<f", struct.unpack("<f", header[292:296])[0] + 25.0)
    (tmp_path / "four.nii").write_bytes(bytes(header))
    with pytest.raises(InputError, match="4D"):
        images.load_ct(tmp_path / "four.nii")


def _padded_body(offset: int, padding: int) -> np.ndarray:
    """A body of fat, muscle and bone in air, HU + ``offset``, with ``padding`` outside a circular field of view."""
    rng = np.random.default_rng(1)
    arr = np.full((10, 40, 40), -1000, np.int16)
    arr[:, 8:32, 8:32] = -100
    arr[:, 12:28, 12:28] = 50
    arr[:, 16:24, 16:24] = 700
    arr = np.clip(arr + rng.normal(0, 10, arr.shape), -1024, 3000).astype(np.int16) + offset
    yy, xx = np.mgrid[:40, :40]
    arr[:, (yy - 19.5) ** 2 + (xx - 19.5) ** 2 > 19 ** 2] = padding
    return arr


def test_stored_values_with_padding_but_no_intercept_are_refused():
    """GE keeps -2000 outside the reconstructed circle: with the intercept lost, the padding passed the range check
    and the CT was segmented 1024 HU off. A CT in HU with padding, and one whose air is clipped at -1024, pass."""
    with pytest.raises(InputError, match="padding outside the field of view.*without its rescale intercept"):
        images.validate_ct(_ct(values=_padded_body(1024, -2000)))
    images.validate_ct(_ct(values=_padded_body(0, -3024)))
    images.validate_ct(_ct(values=_padded_body(0, -2000)))
    tight = _padded_body(0, -2000)
    tight[(tight < -500) & (tight > -1500)] = 40  # a tight field of view: no air, only fat at its lowest
    assert images.beside_padding(_ct(values=tight), -2000).min() < images.LOST_INTERCEPT_LOWEST
    images.validate_ct(_ct(values=tight))


@pytest.mark.parametrize("spacing", [(0.05, 1.0, 1.0), (1.0, 1.0, 25.0), (1.0, float("nan"), 1.0)])
def test_absurd_spacing(spacing):
    img = _ct()
    if np.isfinite(spacing).all():
        img.SetSpacing(spacing)
        with pytest.raises(InputError, match=r"spacing .* outside the plausible CT range"):
            images.validate_ct(img)
    else:  # SimpleITK refuses NaN spacing on an Image; check the rule through a stub with that spacing
        class Stub:
            def __getattr__(self, name):
                return getattr(img, name)

            def GetSpacing(self):
                return spacing
        with pytest.raises(InputError, match="spacing"):
            images.validate_ct(Stub())


def test_too_large_with_limit_parameter():
    with pytest.raises(InputError) as exc:
        images.validate_ct(_ct(), memory_limit_bytes=1000)
    msg = str(exc.value)
    assert "too large for the available memory" in msg and "Crop" in msg and "BinShrink" in msg


def test_too_large_is_refused_from_header_before_loading(tmp_path, monkeypatch):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(_ct(), str(path))
    monkeypatch.setattr(images, "available_memory_bytes", lambda: 4096)
    monkeypatch.setattr(images, "read_image", lambda p: pytest.fail("the voxels should not have been loaded"))
    with pytest.raises(InputError, match="12x10x8 voxels need about"):
        images.read_ct(path)


def test_available_memory_is_known_here():
    mem = images.available_memory_bytes()
    assert mem is None or mem > 0


def test_real_ct_crop_passes(shared_data):
    path = shared_data / "tptbox_l3" / "sub-ct_label-22_ct.nii.gz"
    if not path.exists():
        pytest.skip("tptbox_l3 not available")
    assert images.read_ct(path).GetSize() == (73, 47, 73)


# ---------------------------------------------------------------------------------------------- label maps

def _labels(values: dict, dtype=np.uint8):
    arr = np.zeros((6, 6, 10), dtype=dtype)
    for i, (code, _) in enumerate(values.items()):
        arr[:, :, 2 * i] = code
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


@pytest.mark.parametrize("codes, scheme", [
    ({1: 1, 2: 2, 5: 5}, "internal"),
    ({20: 1, 21: 2, 24: 5, 19: 0, 26: 0}, "verse"),       # T12 and sacrum dropped
    ({31: 1, 30: 2, 27: 5, 32: 0, 26: 0}, "totalseg"),   # T12 and S1 dropped
    ({28: 4, 29: 3}, "totalseg"),                        # 29 never occurs in VerSe
])
def test_read_labelmap_autodetects_scheme(tmp_path, codes, scheme):
    path = tmp_path / "ref.nii.gz"
    sitk.WriteImage(_labels(codes), str(path))
    img = label_maps.read_labelmap(path)
    assert label_maps.label_scheme_of(img) == scheme
    arr = sitk.GetArrayFromImage(img)
    assert arr.dtype == np.uint8
    for i, (code, expected) in enumerate(codes.items()):
        assert np.all(arr[:, :, 2 * i] == expected), (code, expected)


def test_read_labelmap_explicit_scheme_and_float_labels(tmp_path):
    path = tmp_path / "ref.nrrd"
    sitk.WriteImage(_labels({3: 0, 22: 3}, dtype=np.float64), str(path))  # VerSe C3 and L3, stored as float
    arr = sitk.GetArrayFromImage(label_maps.read_labelmap(path, scheme="verse"))
    assert set(np.unique(arr)) == {0, 3}
    with pytest.raises(InputError, match="Unknown label scheme"):
        label_maps.read_labelmap(path, scheme="nifty")


def test_read_labelmap_rejects_a_ct(tmp_path):
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(_ct(), str(path))
    with pytest.raises(InputError, match="does not look like a label map"):
        label_maps.read_labelmap(path)


def test_real_totalsegmentator_map(shared_data):
    path = shared_data / "masks" / "ts_s0328" / "s0328_vertebrae_tsv2labels.nii.gz"
    if not path.exists():
        pytest.skip("ts_s0328 not available")
    img = label_maps.read_labelmap(path)
    assert label_maps.label_scheme_of(img) == "totalseg"
    assert set(np.unique(sitk.GetArrayViewFromImage(img))) == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("codes, scheme, held", [
    ((18, 19), "verse", "its labels are T11, T12 (verse codes)"),
    ((1, 5, 32, 33, 52, 90), "totalseg", "its labels are T12, T11 and 4 other labels (totalseg codes)"),
    ((1, 5, 90), "totalseg", "its 3 labels (totalseg codes) name no vertebra"),
    ((), "verse", "it is empty"),
])
def test_reference_without_lumbar_vertebrae_is_described_by_its_vertebrae(tmp_path, codes, scheme, held):
    """A whole-body TotalSegmentator map holds dozens of organ codes: the note names the vertebrae and
    counts the rest instead of listing 'label 52, label 63, ...'."""
    arr = np.zeros((4, 4, 8), np.uint8)
    for i, code in enumerate(codes):
        arr[1, 1, i] = code
    path = tmp_path / "ref.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    note = label_maps.reference_without_lumbar_note(label_maps.read_labelmap(path, scheme=scheme))
    assert note == f"The reference holds no L1-L5 vertebra ({held}); every lumbar vertebra found counts as extra."


def test_series_without_uid_is_described_as_such():
    described = images.DicomSeries("", "CT Body 3.0", ("a", "b")).describe()
    assert described == "(no SeriesInstanceUID) ('CT Body 3.0', 2 slices)"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".seg.nrrd"])
def test_write_labelmap_round_trip(tmp_path, suffix):
    img = _labels({1: 1, 3: 3, 5: 5})
    img.SetOrigin((5.0, 6.0, 7.0))
    img.SetDirection(OBLIQUE)
    path = label_maps.write_labelmap(img, tmp_path / f"labels{suffix}")
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    np.testing.assert_allclose(back.GetDirection(), OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), (5.0, 6.0, 7.0), atol=1e-5)


def test_seg_nrrd_metadata(tmp_path):
    path = label_maps.write_labelmap(_labels({2: 2, 4: 4}), tmp_path / "labels.seg.nrrd")
    header = path.read_bytes().split(b"\n\n")[0].decode("latin-1")
    assert "Segment0_Name:=L2" in header and "Segment1_Name:=L4" in header
    assert "Segment1_LabelValue:=4" in header and "Segment1_Layer:=0" in header
    assert "Segment0_Extent:=0 9 0 5 0 5" in header
    assert "Segment0_Color:=0.1 0.75 0.2" in header
    assert "SCT^14293000^L2 vertebra" in header
    assert "Segmentation_MasterRepresentation:=Binary labelmap" in header


def test_seg_nrrd_opens_in_slicer(tmp_path):
    slicer = pytest.importorskip("slicer")
    img = _labels({1: 1, 3: 3})
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    path = label_maps.write_labelmap(img, tmp_path / "labels.seg.nrrd")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    seg = node.GetSegmentation()
    segments = {seg.GetNthSegment(i).GetName(): seg.GetNthSegment(i) for i in range(seg.GetNumberOfSegments())}
    assert set(segments) == {"L1", "L3"}
    assert segments["L3"].GetLabelValue() == 3
    assert segments["L1"].GetColor() == pytest.approx((0.9, 0.1, 0.1))
    # Tagged exactly as the module tags its segments (Slicer's own serializer, the shipped terminology).
    from LumbarSegLib.scene.segments import terminology_entry_string

    for name, segment in segments.items():
        assert segment.GetTerminology() == terminology_entry_string(int(name[1]))


def test_output_stem(tmp_path):
    assert images.output_stem("a/case.nii.gz") == "case"
    assert images.output_stem("a/case.seg.nrrd") == "case"
    (tmp_path / "series7").mkdir()
    assert images.output_stem(str(tmp_path / "series7") + "/") == "series7"


# ---------------------------------------------------------------------------------------------- NaN voxels

def _nan_positions(shape_zyx, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape_zyx, bool)
    mask.reshape(-1)[rng.choice(mask.size, 7, replace=False)] = True
    return mask


def test_itk_reader_turns_nifti_nan_into_zero_and_read_image_restores_it(tmp_path):
    """niftilib (inside ITK) replaces every non-finite float by 0 while loading; the file still holds NaN."""
    arr = sitk.GetArrayFromImage(_ct()).astype(np.float32)
    mask = _nan_positions(arr.shape)
    arr[mask] = np.nan
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.0))
    img.SetDirection(OBLIQUE)
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(img, str(path))
    plain = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert not np.isnan(plain).any() and np.all(plain[mask] == 0)  # what ITK alone gives
    restored = sitk.GetArrayFromImage(images.read_image(path))
    np.testing.assert_array_equal(np.isnan(restored), mask)
    np.testing.assert_array_equal(restored[~mask], arr[~mask])


def test_hand_written_big_endian_nifti_with_nan_and_infinity(tmp_path):
    """A NIfTI-1 file written byte by byte (big-endian float64), as other tools may write it."""
    import struct

    nx, ny, nz = 6, 5, 4
    data = np.linspace(-1000, 1500, nx * ny * nz).reshape(nz, ny, nx)
    data[0, 0, 1], data[2, 3, 4], data[3, 4, 5] = np.nan, np.inf, -np.inf
    header = bytearray(352)
    struct.pack_into(">i", header, 0, 348)
    struct.pack_into(">8h", header, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into(">hh", header, 70, 64, 64)  # datatype FLOAT64, bitpix 64
    struct.pack_into(">8f", header, 76, 1.0, 0.7, 0.7, 2.5, 1, 1, 1, 1)  # qfac, pixdim
    struct.pack_into(">fff", header, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    struct.pack_into(">h", header, 252, 1)  # qform_code: scanner (identity quaternion)
    header[344:348] = b"n+1\0"
    path = tmp_path / "big_endian.nii"
    path.write_bytes(bytes(header) + data.astype(">f8").tobytes())
    out = sitk.GetArrayFromImage(images.read_image(path))
    assert out.shape == (nz, ny, nx)
    assert np.isnan(out[0, 0, 1]) and out[2, 3, 4] == np.inf and out[3, 4, 5] == -np.inf
    finite = np.isfinite(data)
    np.testing.assert_allclose(out[finite], data[finite])


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii"])
def test_load_ct_sets_nan_to_air_and_says_so(tmp_path, suffix):
    arr = sitk.GetArrayFromImage(_ct()).astype(np.float32)
    mask = _nan_positions(arr.shape, seed=1)
    arr[mask] = np.nan
    img = sitk.GetImageFromArray(arr)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    loaded = images.load_ct(path)
    out = sitk.GetArrayFromImage(loaded.image)
    assert np.isfinite(out).all() and np.all(out[mask] == images.AIR_HU)
    np.testing.assert_array_equal(loaded.nonfinite_mask, mask)
    assert len(loaded.messages) == 1 and f"has {mask.sum()} voxels" in loaded.messages[0]
    with pytest.warns(UserWarning, match="set to air"):
        images.read_ct(path)


def test_min_max_filter_misses_nan_but_finite_range_counts_it():
    arr = sitk.GetArrayFromImage(_ct()).astype(np.float32)
    arr[0, 0, :3] = np.nan
    img = sitk.GetImageFromArray(arr)
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(img)
    assert np.isfinite([stats.GetMinimum(), stats.GetMaximum()]).all()  # why the old check let NaN through
    assert images.finite_range(img) == (-1000.0, 700.0, 3)


def test_all_nan_and_nan_plus_constant_are_described():
    with pytest.raises(InputError, match=r"every voxel \(960\) is NaN"):
        images.validate_ct(sitk.GetImageFromArray(np.full((8, 10, 12), np.nan, np.float32)))
    arr = np.full((8, 10, 12), 40.0, np.float32)
    arr[0] = np.nan
    with pytest.raises(InputError, match="every voxel that is a number is 40"):
        images.validate_ct(sitk.GetImageFromArray(arr))


# ---------------------------------------------------------------------------------------------- DICOM series

def test_list_and_select_dicom_series(tmp_path):
    folder = tmp_path / "dicom"
    write_dicom_series(folder, 3, "1.2.826.0.1.3680043.2.1125.101", description="Scout")
    write_dicom_series(folder, 6, "1.2.826.0.1.3680043.2.1125.202", z0=100.0, description="CT 2.0 mm")
    series = images.list_dicom_series(folder)
    assert [(s.uid, s.description, s.slices) for s in series] == [
        ("1.2.826.0.1.3680043.2.1125.202", "CT 2.0 mm", 6), ("1.2.826.0.1.3680043.2.1125.101", "Scout", 3)]
    chosen, _ = images.select_dicom_series(folder, "1.2.826.0.1.3680043.2.1125.101")
    assert chosen.description == "Scout"
    loaded = images.load_ct(folder, series_uid="1.2.826.0.1.3680043.2.1125.101")
    assert loaded.image.GetSize() == (16, 16, 3) and loaded.series.uid.endswith(".101")
    assert "holds 2 DICOM series; using 1.2.826.0.1.3680043.2.1125.101 ('Scout', 3 slices)" in loaded.messages[0]
    with pytest.raises(InputError, match="no DICOM series with UID 9.9"):
        images.load_ct(folder, series_uid="9.9")


def test_empty_folder_is_named_as_empty(tmp_path):
    with pytest.raises(InputError, match="this folder is empty"):
        images.read_ct(tmp_path)
