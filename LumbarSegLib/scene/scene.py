"""Scene helpers shared by the ``LumbarSegLib.scene`` modules, and the node attributes this module writes."""

from __future__ import annotations

import numpy as np

# Node attributes written by this module.
ATTR_CONTENT_HASH = "LumbarSeg.ContentHash"  # hash of the segments as created, to detect user edits
ATTR_ROLE = "LumbarSeg.Role"  # "segmentation" | "crop" | "metrics"
ATTR_BOX_LPS = "LumbarSeg.BoxLPS"  # JSON [[min xyz], [max xyz]] of the box as this module last placed it
ATTR_BOX_SOURCE = "LumbarSeg.BoxSource"  # "localizer" (placed from the heatmap) | "user" (user's box was used)
ATTR_VOLUME_ID = "LumbarSeg.VolumeID"  # the volume a crop box or segmentation was computed for
REF_SOURCE_VOLUME = "LumbarSegSourceVolume"  # node reference role: segmentation -> CT volume
ATTR_NOTICE = "LumbarSeg.Notice"  # the research-use notice, on every result node

LPS_RAS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS: flip the first two axes


def slicer_module():
    import slicer  # slicer-core wheel or the Slicer application

    return slicer


def vtk_module():
    import vtk

    return vtk


_SEGMENTATION_LOGIC = []  # the one this package made, headless


def ensure_segmentations_logic(scene):
    """A segmentations logic, so that representation conversion (labelmap -> closed surface) works.

    Every ``vtkSlicerSegmentationsModuleLogic`` registers the converter rules again in the process-wide
    converter factory, so none is made where rules are registered already: inside Slicer the Segmentations
    module's own logic is used. Headless (slicer-core) one logic is made, once per process, and given
    ``scene``; closed-surface conversion silently does nothing before that.
    """
    slicer = slicer_module()
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "segmentations"):  # inside the Slicer application
        return modules.segmentations.logic()
    if not _SEGMENTATION_LOGIC:
        if slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules():
            return None  # someone else's logic registered the rules; nothing to add
        _SEGMENTATION_LOGIC.append(slicer.vtkSlicerSegmentationsModuleLogic())
    logic = _SEGMENTATION_LOGIC[0]
    if logic.GetMRMLScene() is None:
        logic.SetMRMLScene(scene)
    return logic


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


def place_in_study(node, volume_node) -> int:
    """Put ``node`` in the subject hierarchy beside ``volume_node``: in the CT's study (or folder).

    A result in the CT's study is what Slicer's own right-click *Export to DICOM* needs to write it as a
    DICOM object of that study. Returns the parent item ID, or 0 when the volume has no subject
    hierarchy item (nothing is moved then).
    """
    slicer = slicer_module()
    scene = volume_node.GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None
    if hierarchy is None:
        return 0
    volume_item = hierarchy.GetItemByDataNode(volume_node)
    if not volume_item:
        return 0
    parent = hierarchy.GetItemParent(volume_item)
    item = hierarchy.GetItemByDataNode(node)
    if not item:  # inside Slicer every node has an item; a bare scene (tests, scripts) may not
        item = hierarchy.CreateItem(parent, node)
    if hierarchy.GetItemParent(item) != parent:
        hierarchy.SetItemParent(item, parent)
    return parent
