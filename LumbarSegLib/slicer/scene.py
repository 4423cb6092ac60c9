"""Scene helpers shared by the ``LumbarSegLib.slicer`` modules, and the node attributes this module writes."""

from __future__ import annotations

import numpy as np

# Node attributes written by this module.
ATTR_CONTENT_HASH = "LumbarSeg.ContentHash"  # hash of the segments as created, to detect user edits
ATTR_ROLE = "LumbarSeg.Role"  # "segmentation" | "crop" | "metrics"
ATTR_BOX_LPS = "LumbarSeg.BoxLPS"  # JSON [[min xyz], [max xyz]] of the box as this module last placed it
ATTR_BOX_SOURCE = "LumbarSeg.BoxSource"  # "localizer" (placed from the heatmap) | "user" (user's box was used)
ATTR_VOLUME_ID = "LumbarSeg.VolumeID"  # the volume a crop box or segmentation was computed for
REF_SOURCE_VOLUME = "LumbarSegSourceVolume"  # node reference role: segmentation -> CT volume

LPS_RAS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS: flip the first two axes


def slicer_module():
    import slicer  # slicer-core wheel or the Slicer application

    return slicer


def vtk_module():
    import vtk

    return vtk


_SEGMENTATION_LOGICS = {}


def ensure_segmentations_logic(scene):
    """A ``vtkSlicerSegmentationsModuleLogic`` attached to ``scene`` (needed for representation conversion).

    Inside Slicer the Segmentations module already has one; headless, closed-surface conversion silently
    does nothing until a logic has been created and given the scene, so create one per scene and keep it.
    """
    slicer = slicer_module()
    key = scene.GetAddressAsString("vtkMRMLScene")
    logic = _SEGMENTATION_LOGICS.get(key)
    if logic is None or logic[0] is not scene:
        seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        seg_logic.SetMRMLScene(scene)
        logic = (scene, seg_logic)
        _SEGMENTATION_LOGICS[key] = logic
    return logic[1]


def unique_name(scene, base: str) -> str:
    return scene.GenerateUniqueName(base) if scene.GetFirstNodeByName(base) is not None else base


def matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array: np.ndarray):
    m = vtk_module().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def place_like(node, volume_node):
    """Put ``node`` under the same parent transform as ``volume_node`` (results share its frame)."""
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
