"""Exports of a segmentation in the scene: one STL per vertebra (through LumbarSeg's one STL writer,
:mod:`LumbarSegLib.results.surfaces`), a label map or a .seg.nrrd (through Slicer's storage nodes)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..results.outputs import check_writable_location
from .scene import matrix_to_numpy, slicer_module, vtk_module
from .segments import segmentation_to_label_array
from .volumes import label_array_to_sitk, sitk_to_volume_node


class EarlierExportError(InputError):
    """The export folder already holds STL files of a segmentation with the same name (``paths``)."""

    def __init__(self, message: str, paths: list[Path]):
        super().__init__(message)
        self.paths = paths


def _earlier_export(folder: Path, node_name: str, names: list[str]) -> list[Path]:
    """STL files in ``folder`` that an export writing ``names`` would replace or leave beside its own: the
    same names, and every other ``<node name>_*.stl`` (Slicer names files ``<segmentation>_<segment>.stl``),
    e.g. an L5 of another scan whose segmentation had the same name."""
    earlier = {folder / name for name in names if (folder / name).exists()}
    prefix = f"{node_name}_"
    if all(name.startswith(prefix) for name in names):  # Slicer kept the node name as it is
        earlier |= set(folder.glob(glob.escape(prefix) + "*.stl"))
    return sorted(earlier)


def chosen_folder(folder) -> Path | None:
    """``folder`` when it is a folder someone chose (an absolute path), else None.

    A ``ctkDirectoryButton`` reports "." until the user picks a folder; "." is Slicer's working folder (the
    install folder on Windows, ``/`` on macOS), which nobody chose to export into.
    """
    if not folder or not Path(str(folder)).is_absolute():
        return None
    return Path(str(folder))


def default_export_folder(app=None) -> Path:
    """A real folder to start exports in, shown to the user: Slicer's default scene folder, else Documents,
    else the home folder."""
    candidates = [getattr(app, "defaultScenePath", None), Path.home() / "Documents", Path.home()]
    for candidate in candidates:
        folder = chosen_folder(candidate)
        if folder is not None and folder.is_dir():
            return folder
    return Path.home()


def _segment_index_to_lps(segmentation_node, labelmap) -> np.ndarray:
    """4x4 matrix from a segment's labelmap voxel index (its extent's first voxel at index 0) to LPS mm in
    the world, through the segmentation's parent transform when it has a linear one."""
    vtk = vtk_module()
    image_to_ras = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_ras)
    matrix = matrix_to_numpy(image_to_ras)
    parent = segmentation_node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise InputError(f"'{segmentation_node.GetName()}' is under a non-linear transform; harden the "
                             f"transform (Data module) before exporting STL files.")
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = matrix_to_numpy(to_world) @ matrix
    extent = labelmap.GetExtent()
    shift = np.eye(4)
    shift[:3, 3] = extent[0::2]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix @ shift  # RAS -> LPS


def _segment_meshes(segmentation_node, ids: list[str], smoothing: float) -> dict:
    """{segment name: LPS mesh} of the segments ``ids``, every mesh checked before any file is written."""
    from vtk.util import numpy_support

    from ..results.surfaces import check_finite_mesh, mask_surface

    slicer = slicer_module()
    binary_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation_node.GetSegmentation().ContainsRepresentation(binary_name):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    meshes = {}
    for segment_id in ids:
        name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
        labelmap = slicer.vtkOrientedImageData()
        poly = None
        if segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap) and \
                labelmap.GetPointData().GetScalars() is not None:
            values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
            mask = values.reshape(labelmap.GetDimensions()[::-1]) != 0
            poly = mask_surface(mask, _segment_index_to_lps(segmentation_node, labelmap), smoothing)
        if poly is None:
            raise InputError(f"The segment '{name}' is empty; remove it or paint it before exporting STL files.")
        check_finite_mesh(poly, name)
        meshes[name] = poly
    return meshes


def segmentation_smoothing(segmentation_node) -> float:
    """The segmentation's surface smoothing factor (what Slicer shows in 3D), checked to lie in 0..1."""
    from ..results.surfaces import DEFAULT_SMOOTHING, check_smoothing

    value = segmentation_node.GetSegmentation().GetConversionParameter("Smoothing factor")
    return check_smoothing(float(value) if value not in (None, "") else DEFAULT_SMOOTHING)


def export_stl(segmentation_node, folder, overwrite: bool = False) -> list[Path]:
    """One STL per vertebra segment (closed surface, LPS mm, named ``<segmentation>_<segment>.stl`` like
    Slicer's own export) in ``folder``, the trabecular ROI segments left out; returns the files written.

    The meshes come from LumbarSeg's one STL writer (:mod:`LumbarSegLib.results.surfaces`, as the command
    line's), with the segmentation's own smoothing factor, from the segments as they are now (edits
    included). Every mesh is built and checked first; then the files are written into a hidden staging
    folder inside ``folder`` and moved into place only when all of them were written. STL files of an
    earlier export of a segmentation with the same name (:func:`_earlier_export`) would mix two results
    (another scan's L5 beside this one's L1-L4): they raise :class:`EarlierExportError` unless
    ``overwrite``, which removes all of them before the new files are put in place.
    """
    from ..measures.trabecular import roi_segment_kind
    from ..results.surfaces import write_surface

    if chosen_folder(folder) is None:
        raise InputError(f"Choose an export folder (a full path); '{folder or ''}' is not one, and files would go "
                         f"to the application's working folder.")
    folder = Path(folder)
    check_writable_location(folder / "L1.stl", "The STL file")
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise ValueError("The segmentation has no segments to export.")
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
           if not roi_segment_kind(segmentation.GetNthSegment(i).GetName())]  # an ROI is no surface to plan on
    meshes = _segment_meshes(segmentation_node, ids, segmentation_smoothing(segmentation_node))
    folder.mkdir(parents=True, exist_ok=True)
    node_name = segmentation_node.GetName()
    staging = Path(tempfile.mkdtemp(prefix=".lumbarseg-stl.", dir=folder))
    try:
        staged = [write_surface(poly, staging / _stl_file_name(node_name, name), name) for name, poly in meshes.items()]
        earlier = _earlier_export(folder, node_name, [p.name for p in staged])
        if earlier and not overwrite:
            shown = ", ".join(p.name for p in earlier[:6]) + (", ..." if len(earlier) > 6 else "")
            raise EarlierExportError(
                f"{folder} already holds {len(earlier)} STL file(s) of a segmentation named "
                f"'{node_name}' ({shown}), perhaps of another scan. Export into an empty "
                f"folder, or replace them: all of them are removed, none is kept beside the new files.", earlier)
        for path in earlier:
            path.unlink()
        written = []
        for path in staged:
            os.replace(path, folder / path.name)
            written.append(folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _stl_file_name(node_name: str, segment_name: str) -> str:
    """``<segmentation>_<segment>.stl``, as Slicer names exported files; path separators become '_'."""
    return re.sub(r"[\\/:*?\"<>|]", "_", f"{node_name}_{segment_name}") + ".stl"


def export_labelmap(scene, segmentation_node, volume_node, path) -> Path:
    """Write the L1..L5 label map (values 1..5) on the CT's grid as .nii.gz / .nrrd, or the segmentation
    itself as .seg.nrrd, through Slicer's storage nodes."""
    slicer = slicer_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(segmentation_node):
            raise RuntimeError(f"Could not write {path}.")
        return path
    if not (name.endswith(".nii.gz") or name.endswith(".nii") or name.endswith(".nrrd")):
        raise ValueError(f"Unsupported label map file type: {path.name} (use .nii.gz, .nii, .nrrd or .seg.nrrd).")
    labels = label_array_to_sitk(segmentation_to_label_array(segmentation_node, volume_node), volume_node)
    node = sitk_to_volume_node(scene, labels, "__lumbarseg_export__", "vtkMRMLLabelMapVolumeNode")
    try:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise RuntimeError(f"Could not write {path}.")
    finally:
        display = node.GetDisplayNode()
        scene.RemoveNode(node)
        if display is not None and display.GetScene() is not None:
            scene.RemoveNode(display)
    return path
