"""Offscreen pictures (tests, README screenshot): the segmentation node's own closed surfaces and a
slice overlay, as Slicer's 3D and slice views show them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import LABEL_COLORS
from .roi import roi_corners_in_volume_frame
from .scene import slicer_module, vtk_module
from .segments import segmentation_to_label_array
from .volumes import label_array_to_sitk, volume_node_to_sitk


def _offscreen_render_window(width: int, height: int):
    """An offscreen render window; EGL directly when there is no X display (no X warnings, no window)."""
    import os

    vtk = vtk_module()
    window = None
    if not os.environ.get("DISPLAY") and os.name == "posix":
        try:
            from vtkmodules.vtkRenderingOpenGL2 import vtkEGLRenderWindow

            window = vtkEGLRenderWindow()
        except ImportError:
            window = None
    if window is None:
        window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(int(width), int(height))
    window.SetMultiSamples(0)
    return window


def _window_to_array(window) -> np.ndarray:
    from vtk.util import numpy_support

    vtk = vtk_module()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(array[::-1, :, :3])  # VTK's origin is bottom-left


def render_segmentation_3d(segmentation_node, roi_node=None, size=(800, 800), flat: bool = False,
                           background=((0.10, 0.11, 0.16), (0.30, 0.33, 0.42)), view: str = "anterolateral"):
    """Render the segmentation's closed-surface polydata offscreen (as Slicer's 3D view shows it).

    Returns an (H, W, 3) uint8 array. ``flat`` switches lighting off so every pixel of a segment has
    exactly its colour (for tests); the default shading is for pictures. The ROI, if given, is drawn as
    an orange wire box. ``view``: "anterior", "anterolateral" (from the patient's front-left) or "lateral".
    """
    slicer = slicer_module()
    vtk = vtk_module()
    closed = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    segmentation = segmentation_node.GetSegmentation()
    if not segmentation.ContainsRepresentation(closed):
        segmentation_node.CreateClosedSurfaceRepresentation()
    window = _offscreen_render_window(*size)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    renderer.SetBackground(*background[0])
    if not flat and background[1] is not None:
        renderer.GradientBackgroundOn()
        renderer.SetBackground2(*background[1])
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        poly = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(segmentation.GetNthSegmentID(i), poly)
        if poly.GetNumberOfPoints() == 0:
            continue
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(poly)
        normals.SplittingOff()
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*segment.GetColor())
        if flat:
            prop.SetLighting(False)
            prop.SetAmbient(1.0)
            prop.SetDiffuse(0.0)
            prop.SetSpecular(0.0)
        else:
            prop.SetSpecular(0.25)
            prop.SetSpecularPower(30)
        renderer.AddActor(actor)
    if roi_node is not None:
        corners = roi_corners_in_volume_frame(roi_node, None)
        outline = vtk.vtkOutlineSource()
        outline.SetBounds(*[v for pair in zip(corners.min(axis=0), corners.max(axis=0)) for v in pair])
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(outline.GetOutputPort())
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(1.0, 0.65, 0.0)
        actor.GetProperty().SetLineWidth(2.0)
        actor.GetProperty().SetLighting(False)
        renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    direction = {"anterior": (0.0, 1.0, 0.0), "lateral": (-1.0, 0.0, 0.0),
                 "anterolateral": (-0.6, 1.0, 0.15)}[view]  # RAS: from the front (+A), left (-R)
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    camera.SetPosition(*direction)
    camera.SetViewUp(0.0, 0.0, 1.0)
    bounds = [0.0] * 6
    segmentation_node.GetRASBounds(bounds)  # frame the vertebrae (the ROI may stick out)
    if bounds[1] > bounds[0]:
        renderer.ResetCamera(bounds)
    else:
        renderer.ResetCamera()
    camera.Zoom(1.0)
    renderer.ResetCameraClippingRange()
    window.Render()
    array = _window_to_array(window)
    window.Finalize()
    return array


def render_slice_overlay(volume_node, segmentation_node, size=(400, 800), plane: str = "coronal",
                         window=(400.0, 1800.0), alpha: float = 0.45, margin_mm: float | None = 40.0) -> np.ndarray:
    """A coronal (or sagittal) CT slice through the vertebrae with label fill and outlines, as a Slicer
    slice view shows them: resampled in patient axes (oblique volumes included), superior at the top,
    radiological convention (patient right on the viewer's left; anterior on the left in sagittal).
    ``margin_mm`` crops the picture to the vertebrae plus that margin (None: the whole volume).
    Only the one plane is resampled, so this is cheap on any CT. Returns (H, W, 3) uint8."""
    from scipy import ndimage

    image = volume_node_to_sitk(volume_node)
    label_array = segmentation_to_label_array(segmentation_node, volume_node)
    labels = label_array_to_sitk(label_array, volume_node)
    size_xyz = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([a, b, c])
                        for a in (-0.5, size_xyz[0] - 0.5) for b in (-0.5, size_xyz[1] - 0.5)
                        for c in (-0.5, size_xyz[2] - 0.5)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)  # LPS bounds of the whole volume
    if label_array.any():
        idx = np.argwhere(label_array > 0)[:, ::-1].astype(float)  # (x, y, z) indices
        pts = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in idx[::max(1, len(idx) // 4000)]])
        centre = pts.mean(axis=0)
        if plane == "coronal":  # the coronal plane with most label (through the vertebral bodies)
            counts, edges = np.histogram(pts[:, 1], bins=max(1, int(np.ptp(pts[:, 1]) / 2.0)))
            centre[1] = (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1]) / 2
        if margin_mm is not None:
            lo, hi = np.maximum(lo, pts.min(axis=0) - margin_mm), np.minimum(hi, pts.max(axis=0) + margin_mm)
    else:
        centre = (lo + hi) / 2
    pixel = float(min(image.GetSpacing())) / 1.5
    axis = 1 if plane == "coronal" else 0  # LPS axis across the plane
    grid = np.maximum(np.ceil((hi - lo) / pixel).astype(int), 1)
    grid[axis] = 1
    origin = lo + pixel / 2
    origin[axis] = centre[axis]
    reference = sitk.Image([int(v) for v in grid], sitk.sitkUInt8)
    reference.SetSpacing([pixel] * 3)
    reference.SetOrigin(origin.tolist())
    ct3 = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1024.0,
                                               sitk.sitkFloat32))
    lab3 = sitk.GetArrayFromImage(sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                0, sitk.sitkUInt8))
    if plane == "coronal":  # (z, 1, x): x = patient left, so patient right is already on the left
        ct2, lab2 = ct3[::-1, 0, :], lab3[::-1, 0, :]
    else:  # (z, y, 1): y = posterior, so anterior is on the left
        ct2, lab2 = ct3[::-1, :, 0], lab3[::-1, :, 0]
    level, width = window
    grey = np.clip((ct2 - (level - width / 2)) / width, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, color in LABEL_COLORS.items():
        mask = lab2 == label
        if not mask.any():
            continue
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(color)
        rgb[mask & ~ndimage.binary_erosion(mask)] = color
    rgb8 = (rgb * 255).round().astype(np.uint8)
    # Fit into ``size`` (W, H) keeping the aspect ratio, on a black canvas.
    w, h = size
    scale = min(w / rgb8.shape[1], h / rgb8.shape[0])
    rows = np.minimum((np.arange(max(1, int(rgb8.shape[0] * scale))) / scale).astype(int), rgb8.shape[0] - 1)
    cols = np.minimum((np.arange(max(1, int(rgb8.shape[1] * scale))) / scale).astype(int), rgb8.shape[1] - 1)
    scaled = rgb8[rows][:, cols]
    canvas = np.zeros((h, w, 3), np.uint8)
    top, left = (h - scaled.shape[0]) // 2, (w - scaled.shape[1]) // 2
    canvas[top:top + scaled.shape[0], left:left + scaled.shape[1]] = scaled
    return canvas


def write_png(array: np.ndarray, path) -> Path:
    """Write an (H, W, 3|4) uint8 array as PNG with VTK's writer."""
    from vtk.util import numpy_support

    vtk = vtk_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array[::-1])
    h, w, c = array.shape
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.reshape(-1, c), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    return path
