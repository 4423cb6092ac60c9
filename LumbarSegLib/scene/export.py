"""Export through Slicer's own writers: one STL per segment, a label map or a .seg.nrrd."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError
from ..results.outputs import check_writable_location
from .scene import ensure_segmentations_logic, slicer_module, vtk_module
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


def export_stl(segmentation_node, folder, lps: bool = True, segment_ids=None, overwrite: bool = False) -> list[Path]:
    """One STL per segment (closed surface, physical mm; LPS like Slicer's default) in ``folder``, the
    trabecular ROI segments left out unless named in ``segment_ids``; returns the files written.

    Every surface is checked for non-finite vertices first (a smoothing factor above 1 makes Slicer's
    smoothing return NaN coordinates); then no file is written at all. The files are written into a hidden
    staging folder inside ``folder`` and moved into place only when all of them were written. STL files of
    an earlier export of a segmentation with the same name (:func:`_earlier_export`) would mix two results
    (another scan's L5 beside this one's L1-L4): they raise :class:`EarlierExportError` unless
    ``overwrite``, which removes all of them before the new files are put in place.
    """
    from ..results.surfaces import check_finite_mesh

    slicer = slicer_module()
    vtk = vtk_module()
    if chosen_folder(folder) is None:
        raise InputError(f"Choose an export folder (a full path); '{folder or ''}' is not one, and files would go "
                         f"to the application's working folder.")
    folder = Path(folder)
    check_writable_location(folder / "L1.stl", "The STL file")
    folder.mkdir(parents=True, exist_ok=True)
    scene = segmentation_node.GetScene()
    if scene is not None:
        ensure_segmentations_logic(scene)
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise ValueError("The segmentation has no segments to export.")
    segmentation_node.CreateClosedSurfaceRepresentation()
    ids = vtk.vtkStringArray()
    from ..measures.trabecular import roi_segment_kind

    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        if segment_ids is None and roi_segment_kind(segmentation.GetNthSegment(i).GetName()):
            continue  # a trabecular ROI is where HU was measured, not a surface to plan on
        if segment_ids is None or sid in segment_ids:
            ids.InsertNextValue(sid)
    for i in range(ids.GetNumberOfValues()):
        poly = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(ids.GetValue(i), poly)
        check_finite_mesh(poly, segmentation.GetSegment(ids.GetValue(i)).GetName())
    staging = Path(tempfile.mkdtemp(prefix=".lumbarseg-stl.", dir=folder))
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(staging), segmentation_node, ids, "STL", lps, 1.0, False)
        staged = sorted(staging.glob("*.stl"))
        if not ok or len(staged) != ids.GetNumberOfValues():
            raise RuntimeError(f"Slicer could not write the STL files to {folder} ({len(staged)} of "
                               f"{ids.GetNumberOfValues()} written); nothing was exported.")
        earlier = _earlier_export(folder, segmentation_node.GetName(), [p.name for p in staged])
        if earlier and not overwrite:
            shown = ", ".join(p.name for p in earlier[:6]) + (", ..." if len(earlier) > 6 else "")
            raise EarlierExportError(
                f"{folder} already holds {len(earlier)} STL file(s) of a segmentation named "
                f"'{segmentation_node.GetName()}' ({shown}), perhaps of another scan. Export into an empty "
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
