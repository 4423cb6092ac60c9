"""Everything the Slicer module does to the MRML scene, as plain functions taking the scene (or nodes).

Nothing here needs Qt or a running Slicer application: it works on a ``slicer.vtkMRMLScene`` from the
``slicer-core`` wheel as well as inside Slicer (``slicer.mrmlScene``), so the tests drive it headless.
``slicer.util`` helpers that silently use the global ``slicer.mrmlScene`` are avoided on purpose.

Coordinate systems: Slicer nodes live in RAS, the engine (SimpleITK) in LPS. The two differ by a sign
flip of the first two axes, ``F = diag(-1, -1, 1)``. A volume node's IJK->RAS matrix ``M`` therefore
maps to a SimpleITK image with ``origin = F M[:3, 3]`` and ``direction * spacing = F M[:3, :3]``.
Arrays are (k, j, i) both in VTK image data and in ``sitk.GetArrayFromImage``, so voxels are copied
without any transposition. All results are placed in the volume node's own (local) coordinate frame
and under the same parent transform as the volume.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .constants import LABEL_COLORS, LABEL_NAMES, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA

ROI_NAME = "Lumbar crop"
SEGMENTATION_SUFFIX = " lumbar vertebrae"
METRICS_SUFFIX = " lumbar metrics"

# Node attributes written by this module.
ATTR_CONTENT_HASH = "LumbarSeg.ContentHash"  # hash of the segments as created, to detect user edits
ATTR_ROLE = "LumbarSeg.Role"  # "segmentation" | "crop" | "metrics"
ATTR_BOX_LPS = "LumbarSeg.BoxLPS"  # JSON [[min xyz], [max xyz]] of the box as this module last placed it
ATTR_BOX_SOURCE = "LumbarSeg.BoxSource"  # "localizer" (placed from the heatmap) | "user" (user's box was used)
ATTR_VOLUME_ID = "LumbarSeg.VolumeID"  # the volume a crop box or segmentation was computed for
REF_SOURCE_VOLUME = "LumbarSegSourceVolume"  # node reference role: segmentation -> CT volume

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
DEFAULT_SMOOTHING = 0.5
ROI_MOVED_TOLERANCE_MM = 0.5

_LPS_RAS = np.diag([-1.0, -1.0, 1.0])


def _slicer():
    import slicer  # slicer-core wheel or the Slicer application

    return slicer


def _vtk():
    import vtk

    return vtk


# ----------------------------------------------------------------------------------------------------
# Scene helpers


_SEGMENTATION_LOGICS = {}


def ensure_segmentations_logic(scene):
    """A ``vtkSlicerSegmentationsModuleLogic`` attached to ``scene`` (needed for representation conversion).

    Inside Slicer the Segmentations module already has one; headless, closed-surface conversion silently
    does nothing until a logic has been created and given the scene, so create one per scene and keep it.
    """
    slicer = _slicer()
    key = scene.GetAddressAsString("vtkMRMLScene")
    logic = _SEGMENTATION_LOGICS.get(key)
    if logic is None or logic[0] is not scene:
        seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        seg_logic.SetMRMLScene(scene)
        logic = (scene, seg_logic)
        _SEGMENTATION_LOGICS[key] = logic
    return logic[1]


def _unique_name(scene, base: str) -> str:
    return scene.GenerateUniqueName(base) if scene.GetFirstNodeByName(base) is not None else base


def _matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray):
    m = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _place_like(node, volume_node):
    """Put ``node`` under the same parent transform as ``volume_node`` (results share its frame)."""
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())


# ----------------------------------------------------------------------------------------------------
# Volume <-> SimpleITK


def sitk_geometry_to_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), float)
    m = np.eye(4)
    m[:3, :3] = _LPS_RAS @ direction @ np.diag(spacing)
    m[:3, 3] = _LPS_RAS @ np.asarray(image.GetOrigin(), float)
    return m


def _set_sitk_geometry_from_ijk_to_ras(image: sitk.Image, ijk_to_ras: np.ndarray) -> None:
    lps = _LPS_RAS @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((_LPS_RAS @ ijk_to_ras[:3, 3]).tolist())


def volume_ijk_to_ras(volume_node) -> np.ndarray:
    m = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _matrix_to_numpy(m)


def volume_node_to_sitk(volume_node) -> sitk.Image:
    """Copy a scalar volume node into a SimpleITK image (LPS physical space, the node's local frame)."""
    from vtk.util import numpy_support

    from .errors import InputError

    if volume_node is None:
        raise InputError("No input volume selected: choose a CT volume.")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"Volume '{volume_node.GetName()}' has no voxel data.")
    dims = image_data.GetDimensions()
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(f"Volume '{volume_node.GetName()}' has {image_data.GetNumberOfScalarComponents()} "
                         "components per voxel; a single-component CT volume is needed.")
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1])
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    _set_sitk_geometry_from_ijk_to_ras(image, volume_ijk_to_ras(volume_node))
    return image


def _image_data_from_array(array: np.ndarray, vtk_class=None):
    from vtk.util import numpy_support

    vtk = _vtk()
    array = np.ascontiguousarray(array)
    image_data = (vtk_class or vtk.vtkImageData)()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(array.ravel(), deep=True,
                                           array_type=numpy_support.get_vtk_array_type(array.dtype))
    image_data.GetPointData().SetScalars(vtk_array)
    return image_data


def sitk_to_volume_node(scene, image: sitk.Image, name: str = "CT", node_class: str = "vtkMRMLScalarVolumeNode",
                        node=None):
    """Add (or update) a volume node holding ``image``; its IJK->RAS comes from the LPS header."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("Only 3D single-component images can be put into a volume node.")
    m = sitk_geometry_to_ijk_to_ras(image)
    if node is None:
        node = scene.AddNewNodeByClass(node_class, _unique_name(scene, name))
    node.SetIJKToRASMatrix(_numpy_to_matrix(m))
    node.SetAndObserveImageData(_image_data_from_array(sitk.GetArrayViewFromImage(image)))
    node.CreateDefaultDisplayNodes()
    return node


def check_ct(image: sitk.Image) -> list[str]:
    """Problems that make ``image`` unusable as a CT in Hounsfield units (empty list if none).

    Uses the engine's own validation (:func:`LumbarSegLib.io.validate_ct`: 3D, single channel, plausible
    spacing, enough memory, HU range with air and bone) so the module and the CLI refuse the same images.
    """
    from .errors import InputError
    from .io import validate_ct

    try:
        validate_ct(image, name="The selected volume")
    except InputError as exc:
        return [str(exc)]
    return []


# ----------------------------------------------------------------------------------------------------
# Crop box (ROI)


def box_lps_to_ras_center_size(box_lps) -> tuple[np.ndarray, np.ndarray]:
    mn, mx = (np.asarray(v, float) for v in box_lps)
    corners_ras = np.stack([_LPS_RAS @ mn, _LPS_RAS @ mx])
    lo, hi = corners_ras.min(axis=0), corners_ras.max(axis=0)
    return (lo + hi) / 2.0, hi - lo


def roi_corners_in_volume_frame(roi_node, volume_node=None) -> np.ndarray:
    """The ROI's 8 corners (RAS, mm) in ``volume_node``'s local frame (ROI rotation and transforms applied)."""
    slicer = _slicer()
    vtk = _vtk()
    center = np.array(roi_node.GetCenter(), float)  # in the ROI's node coordinates
    half = np.array(roi_node.GetSize(), float) / 2.0
    object_to_node = _matrix_to_numpy(roi_node.GetObjectToNodeMatrix())
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
    corners_lps = roi_corners_in_volume_frame(roi_node, volume_node) @ _LPS_RAS.T
    return tuple(corners_lps.min(axis=0).tolist()), tuple(corners_lps.max(axis=0).tolist())


def _remember_box(roi_node, volume_node, box_lps, source: str):
    roi_node.SetAttribute(ATTR_ROLE, "crop")
    roi_node.SetAttribute(ATTR_BOX_LPS, json.dumps([list(map(float, box_lps[0])), list(map(float, box_lps[1]))]))
    roi_node.SetAttribute(ATTR_BOX_SOURCE, source)
    roi_node.SetAttribute(ATTR_VOLUME_ID, volume_node.GetID() or "")


def set_crop_roi(scene, volume_node, box_lps, roi_node=None):
    """Create or update the "Lumbar crop" ROI at ``box_lps`` (LPS mm), shown in slice and 3D views."""
    if roi_node is None:
        roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _unique_name(scene, ROI_NAME))
    center, size = box_lps_to_ras_center_size(box_lps)
    was = roi_node.StartModify()
    if not np.allclose(_matrix_to_numpy(roi_node.GetObjectToNodeMatrix()), np.eye(4)):
        roi_node.SetAndObserveObjectToNodeMatrix(_vtk().vtkMatrix4x4())  # axis-aligned in the volume's frame
    roi_node.SetCenter(*center.tolist())
    roi_node.SetSize(*size.tolist())
    _place_like(roi_node, volume_node)
    _remember_box(roi_node, volume_node, box_lps, "localizer")
    roi_node.EndModify(was)
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


# ----------------------------------------------------------------------------------------------------
# Segmentation


def terminology_entry_string(label: int) -> str:
    """Slicer's serialized terminology entry for vertebra ``label`` (1..5), with SNOMED CT codes."""
    slicer = _slicer()
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    if hasattr(entry, "SetRegionContextName"):  # Slicer >= 5.7
        entry.SetRegionContextName(ANATOMIC_CONTEXT)
    else:
        entry.SetAnatomicContextName(ANATOMIC_CONTEXT)
    category = entry.GetCategoryObject()
    category.SetCodingSchemeDesignator("SCT")
    category.SetCodeValue(SNOMED_BONE_CATEGORY[0])
    category.SetCodeMeaning(SNOMED_BONE_CATEGORY[1])
    type_object = entry.GetTypeObject()
    type_object.SetCodingSchemeDesignator("SCT")
    type_object.SetCodeValue(SNOMED_VERTEBRA[label][0])
    type_object.SetCodeMeaning(SNOMED_VERTEBRA[label][1])
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def vertebra_label_from_name(name: str) -> int | None:
    """1..5 for segment names such as "L3", "L3 vertebra", "vertebrae_L3" (TotalSegmentator); else None."""
    match = re.search(r"(?<![A-Za-z0-9])L([1-5])(?![0-9])", name or "", flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def sitk_to_oriented_image(image: sitk.Image):
    """A ``vtkOrientedImageData`` (RAS geometry) holding ``image``'s voxels."""
    slicer = _slicer()
    oriented = _image_data_from_array(sitk.GetArrayViewFromImage(image), slicer.vtkOrientedImageData)
    oriented.SetImageToWorldMatrix(_numpy_to_matrix(sitk_geometry_to_ijk_to_ras(image)))
    return oriented


def reference_oriented_image(volume_node):
    """An empty oriented image with ``volume_node``'s grid (extent and IJK->RAS), for resampling onto it."""
    slicer = _slicer()
    ref = slicer.vtkOrientedImageData()
    ref.SetExtent(volume_node.GetImageData().GetExtent())
    m = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ref.SetImageToWorldMatrix(m)
    return ref


def segmentation_content_hash(segmentation_node) -> str:
    """Hash of segment names and voxels (cropped to each segment's non-empty box, in world mm).

    Independent of labelmap padding/extent and of derived representations (closed surfaces), so it
    changes exactly when a segment is painted, erased, added, removed or renamed.
    """
    from vtk.util import numpy_support

    slicer = _slicer()
    segmentation = segmentation_node.GetSegmentation()
    digest = hashlib.sha1()
    entries = []
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        entries.append((segmentation.GetNthSegment(i).GetName(), segment_id))
    for name, segment_id in sorted(entries):
        digest.update(name.encode() + b"\0")
        labelmap = slicer.vtkOrientedImageData()
        if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap) or \
                labelmap.GetPointData().GetScalars() is None:
            digest.update(b"<no labelmap>")
            continue
        dims = labelmap.GetDimensions()
        array = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1]) != 0
        if not array.any():
            digest.update(b"<empty>")
            continue
        nz = [np.flatnonzero(array.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        lo = [int(v[0]) for v in nz]
        hi = [int(v[-1]) + 1 for v in nz]
        crop = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        m = _vtk().vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(m)
        mat = _matrix_to_numpy(m)
        extent = labelmap.GetExtent()
        first_ijk = np.array([extent[0] + lo[2], extent[2] + lo[1], extent[4] + lo[0], 1.0])
        digest.update(np.round(mat[:3, :3], 4).tobytes() + np.round(mat @ first_ijk, 3).tobytes())
        digest.update(str(crop.shape).encode() + np.packbits(crop).tobytes())
    return digest.hexdigest()


def is_user_edited(segmentation_node) -> bool:
    """True if the segmentation's content differs from what this module created (or it never created it)."""
    stored = segmentation_node.GetAttribute(ATTR_CONTENT_HASH)
    return stored is None or stored != segmentation_content_hash(segmentation_node)


def _new_segmentation_node(scene, volume_node, name=None):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   _unique_name(scene, name or (volume_node.GetName() + SEGMENTATION_SUFFIX)))
    return node


def labels_to_segmentation(scene, labels: sitk.Image, volume_node, segmentation_node=None,
                           smoothing: float = DEFAULT_SMOOTHING, name=None):
    """Put a 0..5 label image into a segmentation node: one segment per vertebra present (L1..L5).

    Segments get the fixed colours and SNOMED CT terminology from :mod:`constants`; the closed surface is
    built (smoothed) and shown in 3D, slices show fill and outline. ``segmentation_node`` is reused
    (its segments replaced) when given, otherwise a new node is created. The node remembers a content
    hash so a later run can tell whether the user edited it.
    """
    slicer = _slicer()
    ensure_segmentations_logic(scene)
    if segmentation_node is None:
        segmentation_node = _new_segmentation_node(scene, volume_node, name)
    segmentation = segmentation_node.GetSegmentation()
    was = segmentation_node.StartModify()
    segmentation.RemoveAllSegments()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetNodeReferenceID(REF_SOURCE_VOLUME, volume_node.GetID())
    _place_like(segmentation_node, volume_node)

    labels = sitk.Cast(labels, sitk.sitkUInt8)
    present = sorted(set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) & set(LABEL_NAMES))
    if present:
        array = sitk.GetArrayFromImage(labels)
        array[~np.isin(array, present)] = 0  # ignore values outside 1..5
        clean = sitk.GetImageFromArray(array)
        clean.CopyInformation(labels)
        oriented = sitk_to_oriented_image(clean)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(oriented, segmentation_node, "")
        if not ok:
            segmentation_node.EndModify(was)
            raise RuntimeError("Slicer could not import the label map into the segmentation node.")
    # Name, colour and terminology by label value; order segments L1..L5.
    tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
    by_label = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(i)
        by_label[segmentation.GetNthSegment(i).GetLabelValue()] = segment_id
    for label in present:
        segment_id = by_label[label]
        segment = segmentation.GetSegment(segment_id)
        segment.SetName(LABEL_NAMES[label])
        segment.SetColor(*LABEL_COLORS[label])
        segment.SetTag(tag_name, terminology_entry_string(label))
        for setter in ("SetNameAutoGenerated", "SetColorAutoGenerated"):  # Slicer >= 5.0
            if hasattr(segment, setter):
                getattr(segment, setter)(False)
        segmentation.SetSegmentIndex(segment_id, present.index(label))

    segmentation.SetConversionParameter("Smoothing factor", str(float(smoothing)))
    segmentation_node.SetAttribute(ATTR_ROLE, "segmentation")
    segmentation_node.SetAttribute(ATTR_VOLUME_ID, volume_node.GetID() or "")
    segmentation_node.EndModify(was)

    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetOpacity2DFill(0.4)
    display.SetPreferredDisplayRepresentationName3D("Closed surface")
    if present:
        segmentation_node.CreateClosedSurfaceRepresentation()
    segmentation_node.SetAttribute(ATTR_CONTENT_HASH, segmentation_content_hash(segmentation_node))
    return segmentation_node


def segment_ids_by_vertebra(segmentation_node) -> dict[int, str]:
    """{1..5: segment ID} for segments whose name names a lumbar vertebra (first match wins)."""
    segmentation = segmentation_node.GetSegmentation()
    out = {}
    for i in range(segmentation.GetNumberOfSegments()):
        label = vertebra_label_from_name(segmentation.GetNthSegment(i).GetName())
        if label is not None and label not in out:
            out[label] = segmentation.GetNthSegmentID(i)
    return out


def segmentation_to_label_array(segmentation_node, volume_node) -> np.ndarray:
    """uint8 (k, j, i) array on ``volume_node``'s grid: 1..5 where segments named L1..L5 are (by name)."""
    from vtk.util import numpy_support

    slicer = _slicer()
    reference = reference_oriented_image(volume_node)
    dims = volume_node.GetImageData().GetDimensions()
    out = np.zeros(dims[::-1], dtype=np.uint8)
    ids = segment_ids_by_vertebra(segmentation_node)
    if not ids:
        return out
    segmentation = segmentation_node.GetSegmentation()
    binary_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(binary_name):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    transform = None
    if segmentation_node.GetParentTransformNode() is not volume_node.GetParentTransformNode():
        transform = _vtk().vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
            segmentation_node.GetParentTransformNode(), volume_node.GetParentTransformNode(), transform)
    for label, segment_id in sorted(ids.items()):
        labelmap = slicer.vtkOrientedImageData()
        if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
            continue
        if labelmap.GetPointData().GetScalars() is None:
            continue
        resampled = slicer.vtkOrientedImageData()
        if transform is None:
            ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, resampled, False, True)
        else:
            ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                labelmap, reference, resampled, False, True, transform)
        if not ok or resampled.GetPointData().GetScalars() is None:
            continue
        # Resampling may keep a sub-extent; paste it at its place in the full grid.
        ext = resampled.GetExtent()
        ref_ext = reference.GetExtent()
        rdims = resampled.GetDimensions()
        values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(rdims[::-1])
        lo = [ext[4] - ref_ext[4], ext[2] - ref_ext[2], ext[0] - ref_ext[0]]
        src = [slice(max(0, -l), min(r, o - l)) for l, r, o in zip(lo, rdims[::-1], out.shape)]
        dst = [slice(max(0, l), max(0, l) + (s.stop - s.start)) for l, s in zip(lo, src)]
        if any(s.stop <= s.start for s in src):
            continue
        mask = values[tuple(src)] != 0
        out[tuple(dst)][mask] = label
    return out


def label_array_to_sitk(array: np.ndarray, volume_node) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    _set_sitk_geometry_from_ijk_to_ras(image, volume_ijk_to_ras(volume_node))
    return image


# ----------------------------------------------------------------------------------------------------
# Metrics


MEASURE_COLUMNS = [  # (key in metrics.measure, column title, unit)
    ("volume_ml", "Volume", "mL"),
    ("height_mm", "Height", "mm"),
    ("mean_hu", "Mean HU", "HU"),
    ("median_hu", "Median HU", "HU"),
]
COMPARE_COLUMNS = [  # (key in metrics.compare, column title, unit)
    ("DSC", "DSC", ""),
    ("FND", "FND", ""),
    ("FPD", "FPD", ""),
    ("MSD", "MSD", "mm"),
    ("ASD", "ASD", "mm"),
    ("HD95", "HD95", "mm"),
]


def compute_metrics(segmentation_node, volume_node, reference_node=None) -> dict:
    """{"L1": {volume_ml, mean_hu, centroid_ras, ..., dsc, ...}} using :mod:`LumbarSegLib.metrics`."""
    from . import metrics

    image = volume_node_to_sitk(volume_node)
    ct = sitk.GetArrayViewFromImage(image)
    labels = segmentation_to_label_array(segmentation_node, volume_node)
    measured = metrics.measure(labels, ct, image)
    rows = {}
    for name, values in measured.items():
        row = dict(values)
        if "centroid_mm" in row and row["centroid_mm"] is not None:
            row["centroid_ras"] = tuple((_LPS_RAS @ np.asarray(row["centroid_mm"], float)).tolist())
        rows[name] = row
    if reference_node is not None:
        reference = segmentation_to_label_array(reference_node, volume_node)
        spacing_zyx = tuple(image.GetSpacing()[::-1])
        compared = metrics.compare(labels, reference, spacing_zyx)
        for name, values in compared.items():
            rows.setdefault(name, {}).update(values)
    return {name: rows[name] for name in sorted(rows, key=lambda n: vertebra_label_from_name(n) or 99)}


def fill_metrics_table(scene, rows: dict, table_node=None, name="Lumbar metrics"):
    """Write ``compute_metrics`` rows into a ``vtkMRMLTableNode`` (one row per vertebra)."""
    vtk = _vtk()
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", _unique_name(scene, name))
    table_node.SetAttribute(ATTR_ROLE, "metrics")
    table = table_node.GetTable()
    was = table_node.StartModify()
    table_node.RemoveAllColumns()
    has_compare = any(k in row for row in rows.values() for k, _, _ in COMPARE_COLUMNS)
    columns = [("segment", "Segment", "")]
    columns += [c for c in MEASURE_COLUMNS if any(c[0] in row for row in rows.values())]
    columns += [("centroid_r", "Centroid R", "mm"), ("centroid_a", "Centroid A", "mm"),
                ("centroid_s", "Centroid S", "mm")]
    if has_compare:
        columns += COMPARE_COLUMNS
    arrays = []
    for key, title, unit in columns:
        array = vtk.vtkStringArray() if key == "segment" else vtk.vtkDoubleArray()
        array.SetName(title)
        table.AddColumn(array)
        arrays.append(array)
    for name, row in rows.items():
        ras = row.get("centroid_ras") or (float("nan"),) * 3
        values = {"segment": name, "centroid_r": ras[0], "centroid_a": ras[1], "centroid_s": ras[2]}
        for key, _, _ in columns:
            if key not in values:
                v = row.get(key)
                values[key] = float("nan") if v is None else float(v)
        for (key, _, _), array in zip(columns, arrays):
            array.InsertNextValue(values[key])
    for key, title, unit in columns:
        if unit:
            table_node.SetColumnUnitLabel(title, unit)
    table_node.EndModify(was)
    table_node.Modified()
    return table_node


def table_to_dict(table_node) -> dict:
    """{segment: {column title: value}} read back from a metrics table (for tests and display)."""
    table = table_node.GetTable()
    names = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    out = {}
    for r in range(table.GetNumberOfRows()):
        row = {names[c]: table.GetValue(r, c).ToString() if c == 0 else table.GetValue(r, c).ToDouble()
               for c in range(len(names))}
        out[row[names[0]]] = row
    return out


# ----------------------------------------------------------------------------------------------------
# Export


def export_stl(segmentation_node, folder, lps: bool = True, segment_ids=None) -> list[Path]:
    """One STL per segment (closed surface, physical mm; LPS like Slicer's default) in ``folder``."""
    slicer = _slicer()
    vtk = _vtk()
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
    slicer = _slicer()
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


# ----------------------------------------------------------------------------------------------------
# Running the engine: prepare on the main thread, segment in a worker, apply on the main thread


@dataclass
class RunInputs:
    image: sitk.Image
    box_lps: tuple | None
    messages: list[str] = field(default_factory=list)  # e.g. NaN voxels set to air


@dataclass
class ApplyOutcome:
    segmentation_node: object
    roi_node: object
    created_new: bool
    messages: list[str] = field(default_factory=list)


def prepare_run(volume_node, roi_node=None, roi_mode: str = "auto", validate: bool = True) -> RunInputs:
    """Main-thread part before a run: the CT as a SimpleITK image and the crop box to use (or None).

    Raises :class:`errors.InputError` with a user-facing message for a missing or non-CT volume. NaN
    voxels are set to air with a warning, exactly as on the command line (:func:`io.prepare_ct`).
    """
    from . import io

    image = volume_node_to_sitk(volume_node)
    name = f"The volume '{volume_node.GetName()}'"
    if validate:
        image, _, messages = io.prepare_ct(image, name=name)
    else:
        image, _, warning = io.replace_nonfinite(image, name)
        messages = [warning] if warning else []
    box = box_for_run(roi_node, volume_node, roi_mode)
    return RunInputs(image, box, messages)


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


class _SceneRollback:
    """Undo this module's scene changes when putting a result into the scene fails half-way: nodes added
    since entering are removed, and the ROI and a reused segmentation get back their content, so a failed
    run leaves no half-made nodes and loses nothing."""

    def __init__(self, scene):
        self.scene = scene
        self._restore = []

    def __enter__(self):
        self._before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        return self

    def keep(self, node):
        """Remember ``node``'s content (segments or ROI geometry, and its attributes) for a rollback."""
        if node is None or node.GetScene() is None:
            return
        attributes = {name: node.GetAttribute(name) for name in (node.GetAttributeNames() or ())}
        if node.IsA("vtkMRMLSegmentationNode"):
            segmentation = _slicer().vtkSegmentation()
            segmentation.DeepCopy(node.GetSegmentation())
            restore_content = lambda: node.GetSegmentation().DeepCopy(segmentation)  # noqa: E731
        else:
            center, size = list(node.GetCenter()), list(node.GetSize())
            matrix = _numpy_to_matrix(_matrix_to_numpy(node.GetObjectToNodeMatrix()))

            def restore_content():
                node.SetAndObserveObjectToNodeMatrix(matrix)
                node.SetCenter(*center)
                node.SetSize(*size)

        def restore():
            for name in set(node.GetAttributeNames() or ()) - set(attributes):
                node.RemoveAttribute(name)
            for name, value in attributes.items():
                node.SetAttribute(name, value)
            restore_content()

        self._restore.append(restore)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            return False
        for i in reversed(range(self.scene.GetNumberOfNodes())):
            node = self.scene.GetNthNode(i)
            if node is not None and node.GetID() not in self._before:
                self.scene.RemoveNode(node)
        for restore in reversed(self._restore):
            restore()
        return False


def plausibility_warnings(segmentation_node, volume_node) -> list[str]:
    """Warnings for vertebrae whose volume or height is outside the anatomical ranges
    (:func:`metrics.plausibility_warnings`; e.g. a slice spacing written wrongly in the header)."""
    from .metrics import plausibility_warnings as check

    return check(compute_metrics(segmentation_node, volume_node))


def apply_result(scene, volume_node, result, segmentation_node=None, roi_node=None,
                 overwrite_edited: bool | str = False, smoothing: float = DEFAULT_SMOOTHING,
                 user_box_lps=None, input_messages=()) -> ApplyOutcome:
    """Put an engine :class:`SegmentationResult` into the scene (crop ROI + segmentation).

    A ``segmentation_node`` the user has edited since it was created is never overwritten unless
    ``overwrite_edited``: a new node is created and the edited one is left as it is. ``overwrite_edited``
    may be the node's content hash (:func:`segmentation_content_hash`) at the moment the user agreed to
    overwrite: edits made after that (while the run was going) are then kept too. A node the user
    deleted meanwhile is not written into. When the run used the user's box (``user_box_lps``, taken from
    ``roi_node``) the ROI is left where the user put it (the engine's voxel-snapped box can be larger on an
    oblique scan; moving the ROI to it would make it grow on every run); otherwise the ROI is placed on the
    localizer's box. If anything fails half-way the scene is rolled back (:class:`_SceneRollback`).
    ``input_messages`` (from :func:`prepare_run`) and plausibility warnings join the outcome's messages.
    """
    messages = list(input_messages) + list(result.messages)
    if segmentation_node is not None and segmentation_node.GetScene() is None:
        messages.append("The output segmentation was deleted while the run was going; the result was put in a "
                        "new segmentation.")
        segmentation_node = None
    if roi_node is not None and roi_node.GetScene() is None:
        roi_node = user_box_lps = None
    created_new = segmentation_node is None
    if segmentation_node is not None:
        edited = is_user_edited(segmentation_node)
        agreed = overwrite_edited is True or (isinstance(overwrite_edited, str) and
                                              overwrite_edited == segmentation_content_hash(segmentation_node))
        if edited and not agreed:
            messages.append(f"'{segmentation_node.GetName()}' was edited since it was created; it was kept and "
                            "the new result was put in a new segmentation.")
            segmentation_node = None
            created_new = True
    with _SceneRollback(scene) as rollback:
        rollback.keep(roi_node)
        rollback.keep(segmentation_node)
        if user_box_lps is not None and roi_node is not None:
            _remember_box(roi_node, volume_node, user_box_lps, "user")
        elif result.box_lps is not None:
            roi_node = set_crop_roi(scene, volume_node, result.box_lps, roi_node)
        if not result.found:
            # Nothing to show: no empty node is created, and an existing result is left as it was.
            if segmentation_node is not None:
                messages.append(f"'{segmentation_node.GetName()}' was left unchanged.")
            return ApplyOutcome(None if created_new else segmentation_node, roi_node, False, messages)
        segmentation_node = labels_to_segmentation(scene, result.labels, volume_node, segmentation_node,
                                                   smoothing=smoothing)
        messages += plausibility_warnings(segmentation_node, volume_node)
    return ApplyOutcome(segmentation_node, roi_node, created_new, messages)


def run_segmentation(scene, volume_node, *, model=None, device: str = "auto", segmentation_node=None,
                     roi_node=None, roi_mode: str = "auto", overwrite_edited: bool = False,
                     progress=None, cancel=None, segment_fn=None):
    """Synchronous whole flow (tests, scripting, the self-test): returns (result, ApplyOutcome)."""
    if segment_fn is None:
        from .pipeline import segment as segment_fn
    if roi_node is None:
        roi_node = find_crop_roi(scene, volume_node)
    inputs = prepare_run(volume_node, roi_node, roi_mode)
    result = segment_fn(inputs.image, model=model, device=device, box_lps=inputs.box_lps,
                        progress=progress, cancel=cancel)
    outcome = apply_result(scene, volume_node, result, segmentation_node, roi_node, overwrite_edited,
                           user_box_lps=inputs.box_lps, input_messages=inputs.messages)
    return result, outcome


def friendly_error(exc: BaseException, device: str = "auto") -> str:
    """A message the user can act on for an exception from the engine."""
    from .errors import LumbarSegError

    text = str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        return ("Out of memory while segmenting" + (f" on {device}" if device not in ("auto", "") else "") +
                ". Close other applications, choose the CPU device (if the GPU ran out), or draw a smaller "
                "crop box around the lumbar spine and run again.")
    if isinstance(exc, ModuleNotFoundError):
        return (f"A Python package is missing: {exc.name}. Use 'Install dependencies' in the LumbarSeg module "
                "(or the PyTorch Utils module for torch) and try again.")
    if isinstance(exc, LumbarSegError):
        return text
    return f"Unexpected error: {type(exc).__name__}: {text}"


class SegmentationWorker:
    """Runs the engine in a background thread; the GUI polls it from a timer on the main thread.

    No Qt and no scene access happen in the thread: ``start`` gets a SimpleITK image and the worker
    only touches torch/numpy/SimpleITK. ``cancel()`` makes the engine's ``cancel`` callback return True,
    which stops the run with :class:`errors.Cancelled` at its next check.
    """

    def __init__(self, segment_fn=None, model_loader=None):
        self._segment_fn = segment_fn
        self._model_loader = model_loader
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._events: list[tuple[str, float]] = []
        self._thread = None
        self.result = None
        self.error: BaseException | None = None
        self.stage = ""
        self.fraction = 0.0

    def start(self, image: sitk.Image, *, model=None, model_path=None, device="auto", box_lps=None):
        def run():
            try:
                segment_fn = self._segment_fn
                if segment_fn is None:
                    from .pipeline import segment as segment_fn
                chosen = model
                if chosen is None:
                    self._progress("load model", 0.0)
                    loader = self._model_loader
                    if loader is None:
                        from .models import load_model as loader
                    chosen = loader(model_path)
                self.result = segment_fn(image, model=chosen, device=device, box_lps=box_lps,
                                         progress=self._progress, cancel=self._cancel.is_set)
            except BaseException as exc:  # reported to the GUI thread
                self.error = exc

        self._thread = threading.Thread(target=run, name="LumbarSeg", daemon=True)
        self._thread.start()
        return self

    def _progress(self, stage: str, fraction: float):
        with self._lock:
            self._events.append((stage, float(fraction)))
            self.stage, self.fraction = stage, float(fraction)

    def poll(self) -> list[tuple[str, float]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def cancel(self):
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout=None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running()


# Stage names from the engine -> (progress bar fraction range, status text).
STAGE_TEXT = {
    "load model": ((0.0, 0.05), "Loading the model..."),
    "load": ((0.05, 0.1), "Preparing the image..."),
    "localize": ((0.1, 0.35), "Stage 1: locating the lumbar spine (heatmap)..."),
    "segment": ((0.35, 0.9), "Stage 2: segmenting L1-L5 in the crop box (XUNet)..."),
    "postprocess": ((0.9, 1.0), "Cleaning up labels..."),
}


def overall_progress(stage: str, fraction: float) -> tuple[float, str]:
    (lo, hi), text = STAGE_TEXT.get(stage, ((0.0, 1.0), f"{stage}..."))
    return lo + (hi - lo) * max(0.0, min(1.0, fraction)), text


# ----------------------------------------------------------------------------------------------------
# Offscreen pictures (tests, README screenshot): the segmentation node's own closed surfaces


def _offscreen_render_window(width: int, height: int):
    """An offscreen render window; EGL directly when there is no X display (no X warnings, no window)."""
    import os

    vtk = _vtk()
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

    vtk = _vtk()
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
    slicer = _slicer()
    vtk = _vtk()
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

    vtk = _vtk()
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
