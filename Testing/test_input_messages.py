"""Inputs that used to end in a traceback or an unclear message (issue 15, items 8, 9 and 11): each now
gives one specific ``lumbarseg: error:`` line with exit code 2, before anything is computed, and loses
nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import cli
from LumbarSegLib.io import images
from LumbarSegLib.io.dicom_write import write_ct_series
from LumbarSegLib.errors import InputError

from conftest import assert_clean_error, make_synthetic_ct, run_cli


@pytest.fixture
def small_ct():
    return make_synthetic_ct(shape_xyz=(24, 24, 20))[0]


# ------------------------------------------------------------------------------------------- voxel types

def test_complex_valued_nifti_is_refused_clearly(tmp_path, capsys):
    array = (np.random.default_rng(0).uniform(-1000, 1000, (12, 12, 12))).astype(np.complex64)
    path = tmp_path / "complex.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    assert_clean_error(rc, err, "complex-valued voxels", "Hounsfield")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- NRRD

def _nrrd(tmp_path: Path, small_ct, name: str, directions: str | None = None, data_file: str | None = None) -> Path:
    """``small_ct`` as a NRRD with its 'space directions' replaced, or as a detached header."""
    attached = tmp_path / "attached.nrrd"
    sitk.WriteImage(small_ct, str(attached), useCompression=False)
    raw = attached.read_bytes()
    end = raw.index(b"\n\n")
    header, data = raw[:end].decode("ascii"), raw[end + 2:]
    lines = header.split("\n")
    if directions is not None:
        lines = [f"space directions: {directions}" if ln.startswith("space directions:") else ln for ln in lines]
    elif data_file is None:  # the older form: per-axis spacings, no space or directions
        lines = [ln for ln in lines if not ln.startswith(("space", "space directions:", "space origin:"))]
        lines.append("spacings: nan 2.5 2.5")
    if data_file is not None:
        lines.append(f"data file: {data_file}")
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / "ct.raw").write_bytes(data)
        data = b""
    path = tmp_path / name
    path.write_bytes("\n".join(lines).encode("ascii") + b"\n\n" + data)
    return path


@pytest.mark.parametrize("directions, fragment", [
    ("(nan,0,0) (0,2.5,0) (0,0,2.5)", "'space directions' ((nan,0,0) (0,2.5,0) (0,0,2.5)) hold a value that is not a number"),
    ("(2.5,0,0) (2.5,0,0) (0,0,2.5)", "do not span 3D space"),
    ("(0,-1,1) (0,1,1) (0,-2,2)", "do not span 3D space"),
    ("(0,0,0) (0,2.5,0) (0,0,2.5)", "zero length"),
    (None, "'spacings' (nan 2.5 2.5)"),
])
def test_nrrd_geometry_that_is_no_grid_is_named(tmp_path, capsys, small_ct, directions, fragment):
    path = _nrrd(tmp_path, small_ct, "bad.nrrd", directions=directions)
    rc, _, err = run_cli(capsys, "segment", path, "-o", tmp_path / "out")
    line = assert_clean_error(rc, err, "bad.nrrd", fragment)
    assert "corrupt" not in line


def test_detached_nrrd_data_outside_the_header_folder_is_refused(tmp_path, capsys, small_ct):
    inside = _nrrd(tmp_path, small_ct, "ct.nhdr", data_file="data/ct.raw")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(images.read_image(inside)), sitk.GetArrayFromImage(small_ct))
    upload = tmp_path / "upload"
    upload.mkdir()
    for name in ("../data/ct.raw", str(tmp_path / "data" / "ct.raw"), "/etc/passwd"):
        header = upload / "ct.nhdr"
        header.write_text(inside.read_text(encoding="ascii").replace("data file: data/ct.raw", f"data file: {name}"),
                          encoding="ascii")
        rc, _, err = run_cli(capsys, "segment", header, "-o", tmp_path / "out")
        assert_clean_error(rc, err, f"'data file: {name}' points outside the header's folder")
    (upload / "ct.raw").symlink_to(tmp_path / "data" / "ct.raw")  # a link out of the folder is outside too
    header.write_text(inside.read_text(encoding="ascii").replace("data/ct.raw", "ct.raw"), encoding="ascii")
    with pytest.raises(InputError, match="points outside"):
        images.read_image(header)


# ---------------------------------------------------------------------------------------------- DICOM

def test_parent_folder_of_dicom_series_folders_is_searched(tmp_path, capsys, small_ct):
    """The usual export layout DICOM/ST0/SE0, SE1: the series are found below the folder given, the largest is
    used and all are named; --series picks another, exactly as for the series of one folder."""
    root = tmp_path / "DICOM"
    write_ct_series(small_ct, root / "ST0" / "SE0", SeriesDescription="Body 2.5")
    write_ct_series(small_ct[:, :, 4:16], root / "ST0" / "SE1", SeriesDescription="Body part")
    (root / "DICOMDIR").write_bytes(b"not a series")
    series = images.list_dicom_series(root)
    assert [(s.description, s.slices, s.folder) for s in series] == [("Body 2.5", 20, "ST0/SE0"),
                                                                     ("Body part", 12, "ST0/SE1")]
    loaded = images.load_ct(root)
    assert loaded.series.description == "Body 2.5" and loaded.image.GetSize() == small_ct.GetSize()
    note = next(m for m in loaded.messages if "holds 2 DICOM series" in m)
    assert "in ST0/SE0/" in note and "in ST0/SE1/" in note and "--series" in note
    chosen = images.load_ct(root, series_uid=series[1].uid)
    assert chosen.image.GetSize()[2] == 12
    empty = tmp_path / "empty_export" / "ST0" / "SE0"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here", encoding="utf-8")
    rc, _, err = run_cli(capsys, "segment", tmp_path / "empty_export", "-o", tmp_path / "out")
    assert_clean_error(rc, err, "contains no DICOM series, nor do the 2 folders below it")


# ---------------------------------------------------------------------------------------------- models

def test_pickled_model_is_refused_without_torch_advice(tmp_path, capsys, ct_file):
    import torch

    path = tmp_path / "pickled.pt"
    torch.save({"config": {}, "code": os.system}, path)  # unpickling it would import (and could call) os.system
    rc, _, err = run_cli(capsys, "segment", ct_file, "-o", tmp_path / "out", "--model", path)
    line = assert_clean_error(rc, err, "pickled.pt", "pickled Python objects", "system", "never runs code")
    assert "weights_only" not in err and "trust" not in err
    assert not (tmp_path / "out").exists()
    assert line.count("\n") == 0


def test_torch_cpu_out_of_memory_is_one_line_and_loses_nothing(tmp_path, capsys, ct_file, monkeypatch):
    """torch's CPU allocator reports an exhausted memory as a RuntimeError, not MemoryError: it goes through
    the memory handler. The allocation is a real one that no machine can satisfy."""
    import torch

    from LumbarSegLib.inference import pipeline

    def segment_beyond_memory(*args, **kwargs):
        torch.empty(2 ** 50, dtype=torch.uint8)  # 1 PiB

    monkeypatch.setattr(pipeline, "segment", segment_beyond_memory)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "segment", ct_file, "-o", out, "-q")
    line = assert_clean_error(rc, err, "ran out of memory", "Crop the CT")
    assert "DefaultCPUAllocator" not in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_other_runtime_errors_are_not_called_out_of_memory(tmp_path, ct_file, monkeypatch):
    from LumbarSegLib.inference import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("a programming error")

    monkeypatch.setattr(pipeline, "segment", broken)
    with pytest.raises(RuntimeError, match="a programming error"):
        cli.main(["segment", str(ct_file), "-o", str(tmp_path / "out"), "-q"])


# ---------------------------------------------------------------------------------------------- -o paths

def test_symlink_loop_as_output_is_refused_before_computing(tmp_path, capsys, ct_file):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for given in (tmp_path / "a", tmp_path / "a" / "result"):
        rc, _, err = run_cli(capsys, "segment", ct_file, "-o", given)
        line = assert_clean_error(rc, err, f"Output folder {given} ", "loop of symbolic links")
        assert "localize" not in err and ".lock" not in line and ".partial" not in line


def test_overlong_output_name_is_refused_before_computing(tmp_path, capsys, ct_file):
    given = tmp_path / ("r" * 250)
    rc, _, err = run_cli(capsys, "segment", ct_file, "-o", given)
    line = assert_clean_error(rc, err, "its name is 250 bytes long", "Choose a shorter name")
    assert "localize" not in err and ".lock" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case01.nii.gz"]
    from LumbarSegLib.results.outputs import OutputFolder

    longest = tmp_path / ("p" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 19))  # the longest name accepted works
    for _ in range(2):  # a new result, then its replacement (the hidden names are longest then)
        with OutputFolder(longest, overwrite=True) as out:
            out.commit({"lumbarseg_version": "test"})
    assert json.loads((longest / "report.json").read_text(encoding="utf-8")) == {"lumbarseg_version": "test"}


# ---------------------------------------------------------------------------------------------- Slicer

def test_slicer_volume_with_zero_spacing_gets_a_specific_message():
    slicer = pytest.importorskip("slicer")
    from LumbarSegLib.scene.run import friendly_error, prepare_run
    from LumbarSegLib.scene.scene import ensure_segmentations_logic
    from LumbarSegLib.scene.volumes import sitk_to_volume_node

    scene = slicer.vtkMRMLScene()
    ensure_segmentations_logic(scene)
    node = sitk_to_volume_node(scene, make_synthetic_ct(shape_xyz=(16, 16, 16))[0], "CT")
    node.SetSpacing(1.0, 0.0, 1.0)
    with pytest.raises(InputError) as info:
        prepare_run(node)
    message = friendly_error(info.value)
    assert message.startswith("Volume 'CT' has no valid voxel grid") and "spacing 1, 0, 1 mm" in message
    assert "Unexpected error" not in message and "SimpleITK" not in message
