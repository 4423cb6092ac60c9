"""Shared fixtures and helpers of the tests: a small synthetic CT (fast enough for every test), the optional
real data folder, DICOM series, a tiny network, a small phantom on an oblique grid, a real MRML scene and
the stand-in engine that puts a known label map through the scene code. Test files import helpers from
here (``from conftest import ...``), never from each other.

Tests that take long (a real model on a real-size CT, subprocesses, training, a browser) carry the ``slow``
marker (registered in pyproject.toml): ``python3 -m pytest -q -m "not slow" Testing`` is the fast lane.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.inference.networks import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
MODULE_FILE = ROOT / "LumbarSeg" / "LumbarSeg.py"
UI_FILE = ROOT / "LumbarSeg" / "Resources" / "UI" / "LumbarSeg.ui"


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


# --- DICOM series

def write_ct_series(image: sitk.Image, folder: Path, seed: int = 0, **attributes) -> list[Path]:
    """Write ``image`` (HU, int16) as a CT Image Storage series, one file per slice, under random names."""
    from LumbarSegLib.io import dicom_write

    return dicom_write.write_ct_series(image, folder, shuffle_seed=seed, **attributes)


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines of dicom3tools' DICOM validator on ``path`` (skips the test when it is absent)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; tools/install.sh installs it")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


# --- DICOM folders (SimpleITK/GDCM)

def write_dicom_series(folder, n_slices, series_uid, z0=0.0, description=None):
    """A synthetic CT series (16x16 slices, air and a bone block) written by SimpleITK/GDCM."""
    folder.mkdir(exist_ok=True)
    for i in range(n_slices):
        arr = np.full((1, 16, 16), -1000, dtype=np.int16)
        arr[0, 4:12, 4:12] = 800
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.7, 0.7, 2.0))
        img.SetOrigin((0.0, 0.0, z0 + 2.0 * i))
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": series_uid,
                "0020|0013": str(i + 1), "0020|0032": f"0\\0\\{z0 + 2.0 * i}", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": "0.7\\0.7", "0018|0050": "2.0", "0010|0010": "Test^Phantom"}
        if description is not None:
            tags["0008|103e"] = description
        for key, value in tags.items():
            img.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{i:03d}.dcm"))
        writer.Execute(img)


def series_with(tmp_path, change):
    """A 12-slice series with one slice duplicated (as a new instance), one missing, or one without position."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "dicom"
    write_dicom_series(folder, 12, "1.2.826.0.1.3680043.2.1125.401")
    path = folder / "401_005.dcm"
    if change == "duplicated":
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / "401_005_again.dcm")
    elif change == "missing":
        path.unlink()
    else:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    return folder


# --- Networks

# A network small enough to train and run in a test.
TINY = ModelConfig("tiny", localizer_channels=4, localizer_levels=3, localizer_input=(16, 16, 24),
                   xunet_base=4, xunet_input=(16, 16, 32))


# --- Images

def small_ct(orientation="RAS"):
    """A 40x50x60 CT of air with one bone block, in the given orientation (grid-handling tests)."""
    a = np.full((60, 50, 40), -1000, np.int16)
    a[10:50, 20:30, 15:25] = 700
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.5, 1.25, 2.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    return sitk.DICOMOrient(img, orientation)


# --- The MRML scene (slicer-core)

# Oblique (rotated 20 degrees about S) and flipped in x: exercises every sign of the LPS <-> RAS handling.
_OBLIQUE_ANGLE = math.radians(20)
DIRECTION = (np.array([[math.cos(_OBLIQUE_ANGLE), -math.sin(_OBLIQUE_ANGLE), 0],
                       [math.sin(_OBLIQUE_ANGLE), math.cos(_OBLIQUE_ANGLE), 0], [0, 0, 1]]) @ np.diag([-1.0, 1.0, 1.0]))


def phantom(seed=7, drop=()):
    """A small lumbar phantom CT (56x48x80, about 3 mm) and its 0..5 labels on the oblique, flipped DIRECTION;
    ``drop``: vertebra names left out of the labels."""
    from LumbarSegLib import phantoms
    from LumbarSegLib.constants import LABEL_NAMES, VERSE_LUMBAR

    ct, verse = phantoms.generate_phantom(seed, shape=(56, 48, 80), spacing=(3.2, 3.2, 3.0), fov="lumbar")
    lut = np.zeros(256, np.uint8)
    for code, label in VERSE_LUMBAR.items():
        if LABEL_NAMES[label] not in drop:
            lut[code] = label
    labels = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(verse)])
    for image in (ct, labels):
        image.SetOrigin((12.5, -40.0, 100.0))
        image.SetDirection(DIRECTION.ravel().tolist())
    labels.CopyInformation(ct)
    return ct, labels


def new_scene():
    """A real MRML scene (slicer-core) with the Segmentations logic's converter rules registered."""
    import slicer

    from LumbarSegLib.scene.scene import ensure_segmentations_logic

    scene = slicer.vtkMRMLScene()
    ensure_segmentations_logic(scene)
    return scene


def fake_engine(labels, box_lps, calls=None, messages=()):
    """Stands in for ``pipeline.segment`` where a deterministic label map is wanted; records its inputs."""
    from LumbarSegLib.constants import LABEL_NAMES
    from LumbarSegLib.inference import pipeline

    def segment(image, model=None, device="auto", box_lps=None, progress=None, cancel=None):
        if calls is not None:
            calls.append({"image": image, "box_lps": box_lps})
        found = [LABEL_NAMES[v] for v in sorted(set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0})]
        return pipeline.SegmentationResult(labels, found, None, box_lps if box_lps is not None else BOX, 0.9,
                                           {}, list(messages), True)

    BOX = box_lps
    return segment


def labels_box_lps(labels):
    """Physical LPS bounds of the labelled voxels (as the engine would report a crop box)."""
    from LumbarSegLib.inference import pipeline

    arr = sitk.GetArrayViewFromImage(labels)
    k, j, i = np.nonzero(arr)
    lo, hi = (i.min(), j.min(), k.min()), (i.max() + 1, j.max() + 1, k.max() + 1)
    return pipeline.index_box_to_lps(labels, lo, hi)


def segment_ids(node):
    """{vertebra name: segment id} of a segmentation node (its trabecular ROI segments left out)."""
    from LumbarSegLib.measures.trabecular import roi_segment_kind

    s = node.GetSegmentation()
    return {s.GetNthSegment(i).GetName(): s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())
            if roi_segment_kind(s.GetNthSegment(i).GetName()) is None}


def paint_block(seg, ct, name, block):
    """Paint the voxel ``block`` of ``ct``'s grid into the segment ``name``, as the Segment Editor would."""
    import slicer

    from LumbarSegLib.scene.volumes import sitk_to_oriented_image

    paint = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    paint[block] = 1
    img = sitk.GetImageFromArray(paint)
    img.CopyInformation(ct)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        sitk_to_oriented_image(img), seg, segment_ids(seg)[name], slicer.vtkSlicerSegmentationsModuleLogic.MODE_MERGE_MAX)


def with_nan_rows(ct, rows=2):
    """``ct`` as float32 with NaN in its first ``rows`` rows (anterior padding a reformatting tool leaves)."""
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    arr[:, :rows, :] = np.nan
    nan_ct = sitk.GetImageFromArray(arr)
    nan_ct.CopyInformation(ct)
    return nan_ct


# --- The command line

def run_cli(capsys, *argv):
    """``lumbarseg *argv`` in this process: (exit code, stdout, stderr)."""
    from LumbarSegLib import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc, err, *fragments):
    """Exit code 2 and one ``lumbarseg: error:`` line, last, holding every fragment; no traceback. Returns
    that line."""
    assert rc == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("lumbarseg: error: ")]
    assert len(error_lines) == 1 and err.rstrip().endswith(error_lines[0]), err
    for fragment in fragments:
        assert fragment in error_lines[0], (fragment, err)
    return error_lines[0]


def write_image(folder, name, arr, spacing=(1.0, 1.0, 1.0), pixel=None):
    """``arr`` (z, y, x) written as ``folder/name`` (``pixel``: cast first); returns the path."""
    img = sitk.GetImageFromArray(arr if pixel is None else arr.astype(pixel))
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    path = Path(folder) / name
    sitk.WriteImage(img, str(path))
    return path


def bright_box_array(shape=(8, 10, 12)):
    """A tiny int16 volume (z, y, x): air with one bone-bright box."""
    arr = np.full(shape, -1000, np.int16)
    arr[2:6, 3:7, 3:9] = 700
    return arr


# --- The Slicer module file

def load_module():
    """LumbarSeg/LumbarSeg.py loaded as a module (without Slicer's application)."""
    spec = importlib.util.spec_from_file_location("LumbarSegModuleUnderTest", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ui_widgets():
    """{widget name: class} of the module's .ui, and its XML root."""
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}, root


def run_python(code: str, cwd=None):
    """``code`` (dedented) run by this interpreter in a fresh process (from the repository unless ``cwd``)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=dict(os.environ), timeout=120)


@pytest.fixture(scope="session")
def shape_library():
    """The phantoms' library of real vertebra shapes (../shared/data/masks), as ``lumbarseg phantom`` loads it;
    tests that need its phantoms skip without it."""
    from LumbarSegLib import phantoms

    library = phantoms.load_shape_library()
    if library is None:
        pytest.skip("the shape library of real vertebra masks (../shared/data/masks) is absent")
    return library


@pytest.fixture(scope="session")
def bundled():
    """The bundled XUNet model; tests that need its trained weights skip without it."""
    from LumbarSegLib.inference.models import load_model

    model = load_model()
    if not model.trained:
        pytest.skip("the bundled model is not installed")
    return model


@pytest.fixture(scope="session")
def finder_fold_a(tmp_path_factory):
    """The finder's fold-A phase (held out: verse005, s0328) from the committed resume file
    (Resources/Training/finder_resume.pt), for the finder's path until a finder is bundled; skips without it."""
    import torch

    from LumbarSegLib.inference.finder import load_finder
    from LumbarSegLib.training import vertebra_train

    resume = ROOT / "Resources" / "Training" / "finder_resume.pt"
    if not resume.is_file():
        pytest.skip("the finder's resume file is absent")
    state = tmp_path_factory.mktemp("finder_state")
    vertebra_train.import_resume(resume, state)
    return load_finder(torch.load(state / "fold-A.pt", map_location="cpu", weights_only=True), "fold-A")
