"""Closed surface meshes (STL) of each vertebra, in physical LPS coordinates: LumbarSeg's one STL writer.

The command line writes a result's surfaces with :func:`write_stl`; the Slicer module and the web app
export a (maybe edited) segmentation's segments through :func:`mask_surface` and :func:`write_surface`
(:func:`LumbarSegLib.scene.export.export_stl`), so every STL file is meshed, checked and written here.

Coordinate system: STL files carry no coordinate-system field, so the choice is a convention. We write
**LPS millimetres** (the CT's own physical space, as in DICOM/ITK), which is what 3D Slicer assumes for
STL files since Slicer 4.11 ("Model files are now saved in LPS coordinate system"), and we also put
``SPACE=LPS`` in the 80-byte STL header, which Slicer's model reader recognises. A mesh therefore loads
in Slicer exactly on top of the CT. The choice is recorded as :data:`STL_COORDINATE_SYSTEM` in reports.

Meshing runs in voxel-index space on a padded crop around each vertebra (fast, and the padding closes the
surface where a vertebra touches the image border), is smoothed there, and is then mapped to physical
space with the full index-to-LPS matrix (origin, spacing and direction, so oblique scans are right).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from ..constants import LABEL_NAMES, RESEARCH_NOTICE
from ..errors import InputError, LumbarSegError
from ..io.images import index_to_lps_matrix

STL_COORDINATE_SYSTEM = "LPS"
DEFAULT_SMOOTHING = 0.5
SMOOTHING_RANGE = (0.0, 1.0)


def _vtk_image(mask_zyx: np.ndarray, origin_index_xyz) -> vtk.vtkImageData:
    img = vtk.vtkImageData()
    nz, ny, nx = mask_zyx.shape
    img.SetDimensions(nx, ny, nz)
    img.SetSpacing(1.0, 1.0, 1.0)
    img.SetOrigin(*[float(v) for v in origin_index_xyz])
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_zyx, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    img.GetPointData().SetScalars(scalars)
    return img


def _label_regions(labels_zyx: np.ndarray) -> list:
    from scipy import ndimage

    if not np.issubdtype(labels_zyx.dtype, np.integer):
        labels_zyx = labels_zyx.astype(np.int32)
    return ndimage.find_objects(labels_zyx, max_label=max(LABEL_NAMES))


def label_surface(labels_zyx: np.ndarray, label: int, image: sitk.Image,
                  smoothing: float = DEFAULT_SMOOTHING, region=None) -> vtk.vtkPolyData | None:
    """Triangle mesh of one label in LPS mm, or None if the label is absent.

    ``smoothing`` in [0, 1] follows Slicer's "smoothing factor": a windowed-sinc low-pass with pass band
    10^(-4 * smoothing); 0 keeps the voxel staircase. ``region`` (the label's bounding slices) saves a
    full-volume scan when the caller already knows it.
    """
    if region is None:
        regions = _label_regions(labels_zyx)
        region = regions[label - 1] if 0 < label <= len(regions) else None
    if region is None:
        return None
    lo_index_xyz = [s.start for s in region][::-1]
    return _mesh(labels_zyx[region] == label, lo_index_xyz, index_to_lps_matrix(image), smoothing)


def mask_surface(mask_zyx: np.ndarray, index_to_lps: np.ndarray, smoothing: float = DEFAULT_SMOOTHING,
                 index_offset_xyz=(0, 0, 0)) -> vtk.vtkPolyData | None:
    """Triangle mesh in LPS mm of a binary mask whose voxel [k, j, i] has the index ``index_offset_xyz`` +
    (i, j, k) under the 4x4 ``index_to_lps`` matrix; None for an empty mask. The same meshing as
    :func:`label_surface`, for a mask that comes from elsewhere (a Slicer segment:
    :func:`LumbarSegLib.scene.export.export_stl`)."""
    nonzero = np.nonzero(mask_zyx)
    if not nonzero[0].size:
        return None
    region = tuple(slice(int(v.min()), int(v.max()) + 1) for v in nonzero)
    lo_index_xyz = [o + s.start for o, s in zip(index_offset_xyz, region[::-1])]
    return _mesh(mask_zyx[region] != 0, lo_index_xyz, np.asarray(index_to_lps, float), smoothing)


def _mesh(crop_zyx: np.ndarray, lo_index_xyz, matrix: np.ndarray, smoothing: float) -> vtk.vtkPolyData | None:
    """Mesh a cropped mask (its first voxel at index ``lo_index_xyz``): padded by one voxel (which closes
    the surface at the crop's border), meshed and smoothed in index space, then mapped to LPS mm."""
    crop = np.pad(crop_zyx, 1)
    surface = vtk.vtkDiscreteFlyingEdges3D()
    surface.SetInputData(_vtk_image(crop, [v - 1 for v in lo_index_xyz]))
    surface.SetValue(0, 1)
    surface.ComputeNormalsOff()
    surface.ComputeGradientsOff()
    surface.ComputeScalarsOff()
    output = surface.GetOutputPort()

    if smoothing > 0:
        smoother = vtk.vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(output)
        smoother.SetNumberOfIterations(20)
        smoother.SetPassBand(10.0 ** (-4.0 * float(smoothing)))
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        output = smoother.GetOutputPort()

    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix.ravel().tolist())
    to_lps = vtk.vtkTransformPolyDataFilter()
    to_lps.SetInputConnection(output)
    to_lps.SetTransform(transform)
    output = to_lps.GetOutputPort()

    if np.linalg.det(matrix[:3, :3]) < 0:
        # A mirroring index-to-LPS map turns the triangles inside out; flip them back so normals point
        # outwards (3D printers and volume computations rely on that).
        reverse = vtk.vtkReverseSense()
        reverse.SetInputConnection(output)
        reverse.ReverseCellsOn()
        reverse.ReverseNormalsOn()
        output = reverse.GetOutputPort()

    cleaner = vtk.vtkTriangleFilter()
    cleaner.SetInputConnection(output)
    cleaner.Update()
    poly = vtk.vtkPolyData()
    poly.DeepCopy(cleaner.GetOutput())
    return poly if poly.GetNumberOfPoints() else None


def check_smoothing(smoothing: float) -> float:
    """The smoothing factor must lie in [0, 1]: beyond 1 the windowed-sinc pass band (10^-4s) underflows
    and every vertex becomes NaN."""
    smoothing = float(smoothing)
    if not SMOOTHING_RANGE[0] <= smoothing <= SMOOTHING_RANGE[1]:
        raise InputError(f"Smoothing factor {smoothing:g} is outside {SMOOTHING_RANGE[0]:g}..{SMOOTHING_RANGE[1]:g} "
                         f"(0 keeps the voxel staircase, 0.5 is the default, 1 is the smoothest).")
    return smoothing


def check_finite_mesh(poly: vtk.vtkPolyData, name: str) -> None:
    """Every vertex must be a finite number: a planning system may read NaN coordinates without
    complaint, and a broken mesh must never reach it."""
    points = poly.GetPoints()
    coords = numpy_support.vtk_to_numpy(points.GetData()) if points is not None else np.empty((0, 3))
    bad = int(np.count_nonzero(~np.isfinite(coords).all(axis=1)))
    if coords.shape[0] == 0 or bad:
        raise LumbarSegError(f"The {name} surface has {bad} of {coords.shape[0]} vertices that are not finite "
                             f"numbers; no STL file was written. Try a smaller smoothing factor.")


def write_surface(poly: vtk.vtkPolyData, path, name: str, binary: bool = True) -> Path:
    """Write one vertebra's mesh as STL (after :func:`check_finite_mesh`)."""
    check_finite_mesh(poly, name)
    path = Path(path)
    writer = vtk.vtkSTLWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(poly)
    # 80 bytes in a binary STL: Slicer reads the coordinate system at the start; the notice travels with the file.
    header = f"SPACE={STL_COORDINATE_SYSTEM} LumbarSeg {name} vertebra (mm), {RESEARCH_NOTICE.lower()}"
    writer.SetHeader(header[:80])
    if binary:
        writer.SetFileTypeToBinary()
    else:
        writer.SetFileTypeToASCII()
    if not writer.Write():
        raise OSError(f"Could not write {path}")
    return path


def write_stl(labels: sitk.Image, outdir, smoothing: float = DEFAULT_SMOOTHING, binary: bool = True) -> dict[str, Path]:
    """One STL per vertebra present (``L1.stl`` ... ``L5.stl``) in LPS mm; returns {name: path}.

    Every mesh is built and checked before the first file is written, so an error leaves no STL files.
    """
    smoothing = check_smoothing(smoothing)
    outdir = Path(outdir)
    array = sitk.GetArrayViewFromImage(labels)
    regions = _label_regions(array)
    meshes = {}
    for label, name in LABEL_NAMES.items():
        region = regions[label - 1] if label <= len(regions) else None
        if region is None:
            continue
        poly = label_surface(array, label, labels, smoothing, region=region)
        if poly is not None:
            check_finite_mesh(poly, name)
            meshes[name] = poly
    outdir.mkdir(parents=True, exist_ok=True)
    return {name: write_surface(poly, outdir / f"{name}.stl", name, binary) for name, poly in meshes.items()}
