"""The "Lumbar crop" ROI: placing it from the engine's box and reading the user's box back from it."""

from __future__ import annotations

import json

import numpy as np

from .scene import (ATTR_BOX_LPS, ATTR_BOX_SOURCE, ATTR_ROLE, ATTR_VOLUME_ID, LPS_RAS, matrix_to_numpy,
                    place_in_study, place_like, slicer_module, unique_name, vtk_module)

ROI_NAME = "Lumbar crop"
ROI_MOVED_TOLERANCE_MM = 0.5


def box_lps_to_ras_center_size(box_lps) -> tuple[np.ndarray, np.ndarray]:
    mn, mx = (np.asarray(v, float) for v in box_lps)
    corners_ras = np.stack([LPS_RAS @ mn, LPS_RAS @ mx])
    lo, hi = corners_ras.min(axis=0), corners_ras.max(axis=0)
    return (lo + hi) / 2.0, hi - lo


def roi_corners_in_volume_frame(roi_node, volume_node=None) -> np.ndarray:
    """The ROI's 8 corners (RAS, mm) in ``volume_node``'s local frame (ROI rotation and transforms applied)."""
    slicer = slicer_module()
    vtk = vtk_module()
    center = np.array(roi_node.GetCenter(), float)  # in the ROI's node coordinates
    half = np.array(roi_node.GetSize(), float) / 2.0
    object_to_node = matrix_to_numpy(roi_node.GetObjectToNodeMatrix())
    axes = object_to_node[:3, :3]
    corners = np.array([center + axes @ (half * np.array(s)) for s in
                        [(a, b, c) for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]])
    roi_parent = roi_node.GetParentTransformNode()
    vol_parent = volume_node.GetParentTransformNode() if volume_node is not None else None
    if roi_parent is not vol_parent:
        transform = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(roi_parent, vol_parent, transform)
        corners = np.array([transform.TransformPoint(*p) for p in corners])
    return corners


def box_lps_from_roi(roi_node, volume_node=None) -> tuple[tuple, tuple]:
    """Axis-aligned LPS bounds (min_xyz, max_xyz) of the ROI, in ``volume_node``'s local frame."""
    corners_lps = roi_corners_in_volume_frame(roi_node, volume_node) @ LPS_RAS.T
    return tuple(corners_lps.min(axis=0).tolist()), tuple(corners_lps.max(axis=0).tolist())


def remember_box(roi_node, volume_node, box_lps, source: str):
    roi_node.SetAttribute(ATTR_ROLE, "crop")
    roi_node.SetAttribute(ATTR_BOX_LPS, json.dumps([list(map(float, box_lps[0])), list(map(float, box_lps[1]))]))
    roi_node.SetAttribute(ATTR_BOX_SOURCE, source)
    roi_node.SetAttribute(ATTR_VOLUME_ID, volume_node.GetID() or "")


def set_crop_roi(scene, volume_node, box_lps, roi_node=None):
    """Create or update the "Lumbar crop" ROI at ``box_lps`` (LPS mm), shown in slice and 3D views."""
    if roi_node is None:
        roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", unique_name(scene, ROI_NAME))
    center, size = box_lps_to_ras_center_size(box_lps)
    was = roi_node.StartModify()
    if not np.allclose(matrix_to_numpy(roi_node.GetObjectToNodeMatrix()), np.eye(4)):
        roi_node.SetAndObserveObjectToNodeMatrix(vtk_module().vtkMatrix4x4())  # axis-aligned in the volume's frame
    roi_node.SetCenter(*center.tolist())
    roi_node.SetSize(*size.tolist())
    place_like(roi_node, volume_node)
    remember_box(roi_node, volume_node, box_lps, "localizer")
    roi_node.EndModify(was)
    place_in_study(roi_node, volume_node)
    if roi_node.GetDisplayNode() is None:
        roi_node.CreateDefaultDisplayNodes()
    display = roi_node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2D(True)
    display.SetVisibility3D(True)
    display.SetFillOpacity(0.05)
    display.SetSelectedColor(1.0, 0.65, 0.0)
    return roi_node


def roi_was_moved(roi_node, volume_node) -> bool:
    """True when the user changed the ROI since this module last placed it (for this same volume)."""
    stored = roi_node.GetAttribute(ATTR_BOX_LPS)
    if not stored or roi_node.GetAttribute(ATTR_VOLUME_ID) != volume_node.GetID():
        return False
    old = np.asarray(json.loads(stored), float)
    new = np.asarray(box_lps_from_roi(roi_node, volume_node), float)
    return bool(np.max(np.abs(old - new)) > ROI_MOVED_TOLERANCE_MM)


def box_for_run(roi_node, volume_node, mode: str = "auto"):
    """The crop box to hand to the engine (``box_lps``), or None to run the localizer.

    ``mode``: "auto" uses the ROI when the user moved it after the last run on this volume, placed it by
    hand (an ROI without this module's attributes), or a previous run already used it as the user's box
    (the choice sticks until the ROI is deleted); "always" uses any ROI; "never" ignores it.
    """
    if roi_node is None or mode == "never":
        return None
    if mode == "always" or roi_node.GetAttribute(ATTR_BOX_LPS) is None:
        return box_lps_from_roi(roi_node, volume_node)
    if roi_node.GetAttribute(ATTR_VOLUME_ID) != volume_node.GetID():
        return None  # the ROI of another volume: locate the spine afresh
    if roi_node.GetAttribute(ATTR_BOX_SOURCE) == "user" or roi_was_moved(roi_node, volume_node):
        return box_lps_from_roi(roi_node, volume_node)
    return None


def find_crop_roi(scene, volume_node=None):
    """The crop ROI this module made for ``volume_node``, else a hand-drawn one named "Lumbar crop"."""
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsROINode")
    candidates = [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]
    for node in candidates:
        if volume_node is not None and node.GetAttribute(ATTR_VOLUME_ID) == volume_node.GetID():
            return node
    for node in candidates:
        if node.GetName() == ROI_NAME and not node.GetAttribute(ATTR_VOLUME_ID):
            return node
    return None
