"""DICOM SEG output: written with highdicom, checked with dicom3tools' ``dciodvfy`` (when installed), read
back with pydicom/highdicom and put back onto the source grid frame by frame via the referenced instances.

A synthetic CT series is written here with pydicom (files in shuffled order) so the main tests always run;
the real DICOM series in ../shared/data/ts_dicom is used when present.
"""

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from LumbarSegLib.io import dicom_seg
from LumbarSegLib.io import images
from LumbarSegLib.cli import main
from LumbarSegLib.constants import LABEL_NAMES, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA
from LumbarSegLib.errors import InputError
from conftest import dciodvfy_errors, write_ct_series  # noqa: E402  shared test helpers


def read_back(seg_path: Path, source_folder: Path, grid: sitk.Image) -> tuple[np.ndarray, dict]:
    """The SEG as a 0..5 label array on ``grid`` (from each frame's referenced source instance) and
    {segment number: (label, property type code, category code)}."""
    import highdicom as hd

    seg = hd.seg.segread(str(seg_path))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    segments = {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        if description.segment_label not in LABEL_NAMES.values():
            continue  # a trabecular ROI segment ("L1 trabecular ROI"), read by test_trabecular_outputs
        label = next(lab for lab, name in LABEL_NAMES.items() if name == description.segment_label)
        segments[number] = (label, description.segmented_property_type.value,
                            description.segmented_property_category.value)
    slice_of = {}
    for path in sorted(source_folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "ImagePositionPatient" not in ds:  # a screen capture beside the slices: no frame references it
            continue
        uid = ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID  # empty in some anonymised files
        slice_of[uid] = grid.TransformPhysicalPointToIndex([float(v) for v in ds.ImagePositionPatient])
    out = np.zeros(grid.GetSize()[::-1], np.uint8)
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        if number not in segments:
            continue
        i, j, k = slice_of[referenced]
        assert (i, j) == (0, 0)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, grid.TransformIndexToPhysicalPoint((0, 0, k)), atol=1e-3)
        out[k][frame > 0] = segments[number][0]
    return out, segments


@pytest.fixture
def synthetic_series(tmp_path, synthetic_ct):
    ct, labels = synthetic_ct
    folder = tmp_path / "ct_series"
    write_ct_series(ct, folder)
    grid = images.read_ct(folder)
    # The series reads back on the written grid, so the known labels apply voxel for voxel.
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(grid), sitk.GetArrayViewFromImage(ct))
    labels = sitk.Image(labels)
    labels.CopyInformation(grid)
    return folder, grid, labels


def test_seg_from_a_label_map_reads_back_onto_the_source_grid(tmp_path, synthetic_series):
    folder, grid, labels = synthetic_series
    array = sitk.GetArrayFromImage(labels)
    array[array == 1] = 0  # L1 absent: segment numbers are renumbered 1..4 for L2..L5
    partial = sitk.GetImageFromArray(array)
    partial.CopyInformation(labels)
    path = dicom_seg.write_dicom_seg(partial, folder, tmp_path / "out" / "case_seg.dcm")
    assert path.is_file()
    assert dciodvfy_errors(path) == []
    back, segments = read_back(path, folder, grid)
    np.testing.assert_array_equal(back, array)
    assert sorted(segments) == [1, 2, 3, 4]
    for number, (label, type_code, category_code) in segments.items():
        assert label == number + 1
        assert type_code == SNOMED_VERTEBRA[label][0] and category_code == SNOMED_BONE_CATEGORY[0]
    seg = pydicom.dcmread(path)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()]
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced_series = seg.ReferencedSeriesSequence[0]
    assert referenced_series.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced_series.ReferencedInstanceSequence} == \
        {s.SOPInstanceUID for s in sources}
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID  # a new series in the same study
    assert "Research use" in seg.ContentDescription and "research use" in seg.SeriesDescription
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_nothing_found_writes_no_seg(tmp_path, synthetic_series):
    folder, grid, labels = synthetic_series
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    assert dicom_seg.write_dicom_seg(empty, folder, tmp_path / "none.dcm") is None
    assert not (tmp_path / "none.dcm").exists()


def test_label_map_off_the_series_grid_is_refused(tmp_path, synthetic_series):
    folder, grid, labels = synthetic_series
    shifted = sitk.Image(labels)
    shifted.SetOrigin([v + 1.3 for v in labels.GetOrigin()])
    with pytest.raises(InputError, match="not on the grid"):
        dicom_seg.write_dicom_seg(shifted, folder, tmp_path / "x.dcm")


def test_a_duplicated_slice_is_refused_before_segmenting(tmp_path, synthetic_series, capsys):
    folder, grid, labels = synthetic_series
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "copy_of_a_slice.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="1 of its 49 slices lie at the same position as another one"):
        dicom_seg.read_source_series(folder)
    assert main(["segment", str(folder), "-o", str(tmp_path / "o"), "--dicom-seg", "-q"]) == 2
    err = capsys.readouterr().err
    assert "lie at the same position as another one" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["coronal", "axial localizer", "screen capture"])
def test_a_localizer_stored_in_the_series_is_left_out_of_the_ct_and_the_seg(tmp_path, synthetic_series, kind):
    """A localizer (coronal, or axial with ImageType LOCALIZER) or a screen capture without a position, stored with
    the CT's SeriesInstanceUID, made the series look like one with missing slices (or without positions), and a
    sound CT was refused. The CT is read without it, with a note, and the SEG references the CT's slices."""
    folder, grid, labels = synthetic_series
    ds = pydicom.dcmread(sorted(folder.iterdir())[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if kind == "coronal":
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [0.0, 40.0, 120.0]
    elif kind == "axial localizer":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImagePositionPatient = [0.0, 0.0, 300.0]
    else:
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
    ds.save_as(folder / "zz_localizer.dcm", enforce_file_format=True)
    loaded = images.load_ct(folder)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(loaded.image), sitk.GetArrayViewFromImage(grid))
    assert loaded.image.GetOrigin() == pytest.approx(grid.GetOrigin())
    slices = grid.GetSize()[2]
    assert any(f"1 image(s) of another orientation or size, or localizers, beside its {slices} slices" in m
               for m in loaded.messages)
    datasets = dicom_seg.read_source_series(folder)
    assert len(datasets) == slices and ds.SOPInstanceUID not in {d.SOPInstanceUID for d in datasets}
    seg_path = dicom_seg.write_dicom_seg(labels, datasets, tmp_path / "seg.dcm")
    back, _ = read_back(seg_path, folder, grid)
    np.testing.assert_array_equal(back, sitk.GetArrayViewFromImage(labels))


@pytest.mark.parametrize("change", ["no position", "multi-frame"])
def test_instances_a_seg_cannot_be_matched_to_are_a_clean_error(tmp_path, synthetic_series, change):
    folder, grid, labels = synthetic_series
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        if change == "no position":
            del ds.ImagePositionPatient
        else:
            ds.NumberOfFrames = 2
        ds.save_as(path)
    with pytest.raises(InputError, match="needs a series of single-slice images with an Image Position and"):
        dicom_seg.write_dicom_seg(labels, folder, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.slow
def test_cli_writes_a_valid_seg_of_what_it_found(tmp_path):
    from LumbarSegLib import phantoms

    ct, _ = phantoms.generate_phantom(11, shape=(56, 48, 80), spacing=(3.2, 3.2, 3.0), fov="lumbar")
    folder = tmp_path / "phantom_dicom"
    write_ct_series(ct, folder, seed=3)
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "--dicom-seg", "--device", "cpu", "-q"]) == 0
    import json

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["found"], "the bundled model finds lumbar vertebrae on this lumbar phantom"
    seg_path = Path(report["outputs"]["dicom_seg"])
    assert seg_path == out / "phantom_dicom_seg.dcm" and seg_path.is_file()
    assert dciodvfy_errors(seg_path) == []
    grid = images.read_ct(folder)
    back, segments = read_back(seg_path, folder, grid)
    assert sorted(LABEL_NAMES[label] for label, _, _ in segments.values()) == report["found"]
    labels = sitk.ReadImage(report["outputs"]["labels"])
    np.testing.assert_array_equal(back, sitk.GetArrayViewFromImage(labels))


def test_cli_refuses_dicom_seg_for_a_file_input(tmp_path, ct_file, capsys):
    assert main(["segment", str(ct_file), "-o", str(tmp_path / "o"), "--dicom-seg", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--dicom-seg needs a DICOM series folder" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_real_series_without_study_uids_is_refused_clearly(shared_data, tmp_path, capsys):
    folder = shared_data / "ts_dicom"
    if not folder.is_dir():
        pytest.skip("ts_dicom is not in the shared data folder")
    assert main(["segment", str(folder), "-o", str(tmp_path / "o"), "--dicom-seg", "-q"]) == 2
    assert "StudyInstanceUID is empty" in capsys.readouterr().err


def test_real_series_headers_give_a_valid_seg(shared_data, tmp_path):
    """The real CT's headers (Siemens, JPEG 2000 pixel data) with the study/series UIDs its anonymiser
    removed put back: the SEG references every real instance and reads back onto the real grid."""
    source = shared_data / "ts_dicom"
    if not source.is_dir():
        pytest.skip("ts_dicom is not in the shared data folder")
    folder = tmp_path / "ts_dicom_uids"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    for path in sorted(source.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(folder / path.name)
    grid = images.read_ct(folder)
    array = np.zeros(grid.GetSize()[::-1], np.uint8)
    array[2:9, 180:300, 200:320] = 1  # two box "vertebrae" on the real grid
    array[11:18, 190:290, 210:310] = 2
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(grid)
    path = dicom_seg.write_dicom_seg(labels, folder, tmp_path / "real_seg.dcm")
    assert dciodvfy_errors(path) == []
    back, segments = read_back(path, folder, grid)
    np.testing.assert_array_equal(back, array)
    seg = pydicom.dcmread(path)
    # Instance UIDs were empty in the datasets and came from the files' meta information.
    metas = {pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
             for p in folder.iterdir()}
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == metas


@pytest.mark.slow
def test_seg_references_the_series_chosen_with_series(tmp_path):
    """A folder with two series: the SEG must reference the series that was segmented - the largest by
    default, or the one given with --series - and be written as part of the one whole result."""
    import json

    from LumbarSegLib import phantoms

    ct, _ = phantoms.generate_phantom(11, shape=(56, 48, 80), spacing=(3.2, 3.2, 3.0), fov="lumbar")
    folder = tmp_path / "two_series"
    write_ct_series(ct, folder, seed=3, SeriesDescription="Lumbar 3.0")
    small = ct[:, :, 30:60]  # a 30-slice second series of the same study position
    write_ct_series(small, folder, seed=4, SeriesDescription="Lumbar part")
    uids = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids[ds.SeriesDescription] = ds.SeriesInstanceUID
    for extra, chosen in (([], "Lumbar 3.0"), (["--series", uids["Lumbar part"]], "Lumbar part")):
        out = tmp_path / f"out_{len(extra)}"
        assert main(["segment", str(folder), "-o", str(out), "--dicom-seg", "--device", "cpu", "-q", *extra]) == 0
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        assert report["input"]["dicom_series"]["description"] == chosen
        assert report["found"]  # the bundled model finds vertebrae on this phantom, so a SEG was written
        seg = pydicom.dcmread(report["outputs"]["dicom_seg"])
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids[chosen]
        assert report["outputs"]["dicom_seg"] == str(out / "two_series_seg.dcm")


@pytest.mark.slow
def test_a_seg_the_headers_cannot_give_keeps_the_segmentation_and_says_why(tmp_path, capsys):
    """A multi-valued PatientName (two names in one header) makes highdicom refuse the SEG after segmenting:
    the label map and report are written as a whole result, then the failure is one clear error line."""
    import json

    from LumbarSegLib import phantoms

    ct, _ = phantoms.generate_phantom(11, shape=(56, 48, 80), spacing=(3.2, 3.2, 3.0), fov="lumbar")
    folder = tmp_path / "two_names"
    write_ct_series(ct, folder, seed=5, PatientName=["Doe^John", "Roe^Jane"])
    out = tmp_path / "out"
    rc = main(["segment", str(folder), "-o", str(out), "--dicom-seg", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    error_line = err.rstrip().splitlines()[-1]
    assert error_line.startswith("lumbarseg: error: No DICOM SEG was written: the source series' PatientName holds "
                                 "2 values") and str(out) in error_line
    assert "Doe" not in err  # the names themselves are not printed
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["found"] and "dicom_seg" not in report["outputs"]
    assert any("No DICOM SEG was written" in m for m in report["messages"])
    assert sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"])).any()
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "two_names_labels.nii.gz"]


SAMPLE_DICOM = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "LumbarSegSampleCT_DICOM"


@pytest.mark.slow
def test_the_sample_dicom_series_is_valid_and_gives_a_valid_seg(tmp_path):
    """The shipped synthetic sample series (tools/make_sample_data.py): valid CT Image Storage files, the same
    voxels as the sample NRRD, and --dicom-seg on it writes a SEG that dciodvfy accepts and that reads back
    onto the label map."""
    import json

    files = sorted(SAMPLE_DICOM.glob("*.dcm"))
    assert len(files) == 90 and sum(f.stat().st_size for f in files) < 4e6
    for path in (files[0], files[45], files[-1]):
        assert dciodvfy_errors(path) == []
    grid = images.read_ct(SAMPLE_DICOM)
    nrrd = sitk.ReadImage(str(SAMPLE_DICOM.parent / "LumbarSegSampleCT.nrrd"))
    # The same voxels in the same places (the NRRD's left-handed grid is stored in the other slice order).
    same, stored = sitk.DICOMOrient(grid, "LPS"), sitk.DICOMOrient(nrrd, "LPS")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(same), sitk.GetArrayViewFromImage(stored))
    np.testing.assert_allclose(same.GetOrigin(), stored.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(same.GetDirection(), stored.GetDirection(), atol=1e-6)
    out = tmp_path / "out"
    assert main(["segment", str(SAMPLE_DICOM), "-o", str(out), "--dicom-seg", "--device", "cpu", "-q"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["found"] == ["L1", "L2", "L3", "L4", "L5"]
    seg_path = Path(report["outputs"]["dicom_seg"])
    assert dciodvfy_errors(seg_path) == []
    back, segments = read_back(seg_path, SAMPLE_DICOM, grid)
    np.testing.assert_array_equal(back, sitk.GetArrayFromImage(sitk.ReadImage(report["outputs"]["labels"])))
    assert pydicom.dcmread(seg_path).StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
