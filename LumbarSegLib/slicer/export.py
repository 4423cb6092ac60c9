"""Export through Slicer's own writers: one STL per segment, a label map or a .seg.nrrd."""

from __future__ import annotations

import time
from pathlib import Path

from .scene import ensure_segmentations_logic, slicer_module, vtk_module
from .segments import segmentation_to_label_array
from .volumes import label_array_to_sitk, sitk_to_volume_node


def export_stl(segmentation_node, folder, lps: bool = True, segment_ids=None) -> list[Path]:
    """One STL per segment (closed surface, physical mm; LPS like Slicer's default) in ``folder``.

    Every surface is checked for non-finite vertices first (a smoothing factor above 1 makes Slicer's
    smoothing return NaN coordinates); then no file is written at all."""
    from ..surfaces import check_finite_mesh

    slicer = slicer_module()
    vtk = vtk_module()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    scene = segmentation_node.GetScene()
    if scene is not None:
        ensure_segmentations_logic(scene)
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        raise ValueError("The segmentation has no segments to export.")
    segmentation_node.CreateClosedSurfaceRepresentation()
    ids = vtk.vtkStringArray()
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        if segment_ids is None or sid in segment_ids:
            ids.InsertNextValue(sid)
    for i in range(ids.GetNumberOfValues()):
        poly = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(ids.GetValue(i), poly)
        check_finite_mesh(poly, segmentation.GetSegment(ids.GetValue(i)).GetName())
    before = {p.resolve() for p in folder.glob("*.stl")}
    stamp = time.time() - 1.0
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
        str(folder), segmentation_node, ids, "STL", lps, 1.0, False)
    if not ok:
        raise RuntimeError(f"Slicer could not write the STL files to {folder}.")
    written = [p for p in folder.glob("*.stl") if p.resolve() not in before or p.stat().st_mtime >= stamp]
    return sorted(written)


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
