"""Offscreen (EGL) rendering of the segmentation node after the module's segmentation flow.

The picture must not be empty and must show all five vertebra colours; the slice overlay must show them
too; ``tools/make_screenshot.py`` writes a valid PNG the same way (docs/screenshot.png).
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from LumbarSegLib.constants import LABEL_COLORS  # noqa: E402
from LumbarSegLib.scene.render import render_segmentation_3d, render_slice_overlay  # noqa: E402
from LumbarSegLib.scene.run import run_segmentation  # noqa: E402
from LumbarSegLib.scene.volumes import sitk_to_volume_node  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_screenshot", ROOT / "tools" / "make_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _segmented_scene():
    from conftest import fake_engine, labels_box_lps, new_scene, phantom

    ct, labels = phantom(seed=3)
    scene = new_scene()
    volume = sitk_to_volume_node(scene, ct, "CT")
    _, outcome = run_segmentation(scene, volume, segment_fn=fake_engine(labels, labels_box_lps(labels)))
    return scene, volume, outcome


def colour_pixels(image: np.ndarray, color, tolerance: int = 2) -> int:
    target = np.round(np.asarray(color) * 255).astype(int)
    return int((np.abs(image.astype(int) - target).max(axis=2) <= tolerance).sum())


def test_3d_render_shows_the_five_colours():
    _, _, outcome = _segmented_scene()
    flat = render_segmentation_3d(outcome.segmentation_node, size=(320, 320), flat=True)
    assert flat.shape == (320, 320, 3) and flat.dtype == np.uint8
    background = np.round(np.array((0.10, 0.11, 0.16)) * 255).astype(int)
    foreground = (np.abs(flat.astype(int) - background).max(axis=2) > 3).mean()
    assert 0.05 < foreground < 0.9, foreground  # not empty, not a full-screen blob
    for label, color in LABEL_COLORS.items():
        assert colour_pixels(flat, color) > 200, f"L{label} colour missing from the 3D view"
    # The shaded picture (with the crop ROI) differs from the background too and has shading variety.
    shaded = render_segmentation_3d(outcome.segmentation_node, outcome.roi_node, size=(320, 320))
    assert len(np.unique(shaded.reshape(-1, 3), axis=0)) > 500
    roi_orange = (np.abs(shaded.astype(int) - [255, 166, 0]).max(axis=2) <= 12).sum()
    assert roi_orange > 50  # the ROI's wire box is drawn


def test_vertebrae_stack_in_anatomical_order_in_the_anterior_view():
    _, _, outcome = _segmented_scene()
    flat = render_segmentation_3d(outcome.segmentation_node, size=(300, 400), flat=True, view="anterior")
    rows = []
    for label in range(1, 6):
        target = np.round(np.asarray(LABEL_COLORS[label]) * 255).astype(int)
        ys = np.nonzero((np.abs(flat.astype(int) - target).max(axis=2) <= 2))[0]
        rows.append(ys.mean())
    assert rows == sorted(rows), rows  # L1 at the top (superior), L5 at the bottom


def test_slice_overlay_shows_labels():
    _, volume, outcome = _segmented_scene()
    picture = render_slice_overlay(volume, outcome.segmentation_node, size=(200, 300), plane="sagittal")
    assert picture.shape == (300, 200, 3)
    for label, color in LABEL_COLORS.items():
        assert colour_pixels(picture, color, tolerance=1) > 3, f"L{label} outline missing"


def test_make_screenshot_writes_png(tmp_path):
    tool = _load_tool()
    path = tool.make_screenshot(tmp_path / "shot.png", width=480, height=320, use_model=False,
                                shape=(64, 56, 80), spacing=(3.0, 3.0, 3.0))
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (480, 320)
    icon = tool.make_icon(tmp_path / "icon.png")
    reader.SetFileName(str(icon))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (128, 128)
    assert reader.GetOutput().GetNumberOfScalarComponents() == 4


def test_committed_pictures_exist():
    for path, size in ((ROOT / "docs" / "screenshot.png", None),
                       (ROOT / "LumbarSeg" / "Resources" / "Icons" / "LumbarSeg.png", (128, 128))):
        assert path.is_file(), path
        reader = vtk.vtkPNGReader()
        reader.SetFileName(str(path))
        reader.Update()
        dims = reader.GetOutput().GetDimensions()[:2]
        assert dims[0] > 0 and (size is None or dims == size)
