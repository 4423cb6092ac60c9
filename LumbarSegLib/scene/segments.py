"""Segmentation nodes: L1-L5 segments from a label map (names, colours, terminology), edit detection,
and the label map read back from a (possibly user-edited) segmentation."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import SimpleITK as sitk

from ..constants import (ANATOMIC_CONTEXT, LABEL_COLORS, LABEL_NAMES, RESEARCH_NOTICE, SNOMED_BONE_CATEGORY,
                         SNOMED_VERTEBRA, TERMINOLOGY_CONTEXT)
from .scene import (ATTR_CONTENT_HASH, ATTR_NOTICE, ATTR_ROLE, ATTR_VOLUME_ID, REF_SOURCE_VOLUME,
                    ensure_segmentations_logic, matrix_to_numpy, place_in_study, place_like, slicer_module,
                    unique_name, vtk_module)
from .volumes import reference_oriented_image, sitk_to_oriented_image

SEGMENTATION_SUFFIX = " lumbar vertebrae"
# The terminology this extension ships (LumbarSeg/Resources/<TERMINOLOGY_FILE_NAME>, loaded at Slicer start):
# L1-L5 with their SNOMED CT codes and colours, context constants.TERMINOLOGY_CONTEXT. Segments are tagged
# against it.
TERMINOLOGY_FILE_NAME = "SegmentationCategoryTypeModifier-LumbarSeg.term.json"
DEFAULT_SMOOTHING = 0.5


def load_terminology(terminologies_logic, path) -> str:
    """Load the extension's terminology file into a ``vtkSlicerTerminologiesModuleLogic``; returns its
    context name (Slicer then lists L1-L5 with their codes and colours, and "Use standard segment names"
    shows "L1 vertebra" ...)."""
    name = terminologies_logic.LoadTerminologyFromFile(str(path))
    if name != TERMINOLOGY_CONTEXT:
        raise RuntimeError(f"Could not load the LumbarSeg terminology from {path} (got context {name!r}).")
    return name


def terminology_entry_string(label: int) -> str:
    """Slicer's serialized terminology entry for vertebra ``label`` (1..5), with SNOMED CT codes."""
    slicer = slicer_module()
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


def segmentation_content_hash(segmentation_node) -> str:
    """Hash of segment names and voxels (cropped to each segment's non-empty box, in world mm).

    Independent of labelmap padding/extent and of derived representations (closed surfaces), so it
    changes exactly when a segment is painted, erased, added, removed or renamed.
    """
    from vtk.util import numpy_support

    slicer = slicer_module()
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
        m = vtk_module().vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(m)
        mat = matrix_to_numpy(m)
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
                                   unique_name(scene, name or (volume_node.GetName() + SEGMENTATION_SUFFIX)))
    return node


def labels_to_segmentation(scene, labels: sitk.Image, volume_node, segmentation_node=None,
                           smoothing: float = DEFAULT_SMOOTHING, name=None):
    """Put a 0..5 label image into a segmentation node: one segment per vertebra present (L1..L5).

    Segments get the fixed colours and SNOMED CT terminology from :mod:`constants`; the closed surface is
    built (smoothed) and shown in 3D, slices show fill and outline. ``segmentation_node`` is reused
    (its segments replaced) when given, otherwise a new node is created. The node remembers a content
    hash so a later run can tell whether the user edited it.
    """
    slicer = slicer_module()
    ensure_segmentations_logic(scene)
    if segmentation_node is None:
        segmentation_node = _new_segmentation_node(scene, volume_node, name)
    segmentation = segmentation_node.GetSegmentation()
    was = segmentation_node.StartModify()
    segmentation.RemoveAllSegments()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    segmentation_node.SetNodeReferenceID(REF_SOURCE_VOLUME, volume_node.GetID())
    place_like(segmentation_node, volume_node)
    place_in_study(segmentation_node, volume_node)

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
    segmentation_node.SetAttribute(ATTR_NOTICE, RESEARCH_NOTICE)
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


def set_smoothing(segmentation_node, value: float) -> bool:
    """Set the closed-surface smoothing factor; existing surfaces are rebuilt only when the value changes
    (loading settings into a GUI sets the same value again). Returns True when it changed.

    A smoothing change does not touch voxels, so the content hash (edit detection) stays valid."""
    slicer = slicer_module()
    segmentation = segmentation_node.GetSegmentation()
    text = str(float(value))
    if segmentation.GetConversionParameter("Smoothing factor") == text:
        return False
    segmentation.SetConversionParameter("Smoothing factor", text)
    if segmentation.ContainsRepresentation(slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()):
        segmentation_node.RemoveClosedSurfaceRepresentation()
        segmentation_node.CreateClosedSurfaceRepresentation()
    return True


def segment_ids_by_vertebra(segmentation_node) -> dict[int, str]:
    """{1..5: segment ID} for segments whose name names a lumbar vertebra (first match wins); trabecular
    ROI segments ("L1 trabecular ROI", :mod:`LumbarSegLib.measures.trabecular`) are regions inside one, not one."""
    from ..measures.trabecular import roi_segment_kind

    segmentation = segmentation_node.GetSegmentation()
    out = {}
    for i in range(segmentation.GetNumberOfSegments()):
        name = segmentation.GetNthSegment(i).GetName()
        label = None if roi_segment_kind(name) else vertebra_label_from_name(name)
        if label is not None and label not in out:
            out[label] = segmentation.GetNthSegmentID(i)
    return out


def segmentation_to_label_array(segmentation_node, volume_node) -> np.ndarray:
    """uint8 (k, j, i) array on ``volume_node``'s grid: 1..5 where segments named L1..L5 are (by name)."""
    reference = reference_oriented_image(volume_node)
    dims = volume_node.GetImageData().GetDimensions()
    out = np.zeros(dims[::-1], dtype=np.uint8)
    ids = segment_ids_by_vertebra(segmentation_node)
    if not ids:
        return out
    transform = _transform_to_volume(segmentation_node, volume_node)
    for label, segment_id in sorted(ids.items()):
        mask = segment_mask(segmentation_node, segment_id, volume_node, reference, transform)
        if mask is not None:
            out[mask] = label
    return out


def _transform_to_volume(segmentation_node, volume_node):
    if segmentation_node.GetParentTransformNode() is volume_node.GetParentTransformNode():
        return None
    slicer = slicer_module()
    transform = vtk_module().vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(
        segmentation_node.GetParentTransformNode(), volume_node.GetParentTransformNode(), transform)
    return transform


def segment_mask(segmentation_node, segment_id, volume_node, reference=None, transform=False) -> np.ndarray | None:
    """bool (k, j, i) array on ``volume_node``'s grid where segment ``segment_id`` is; None when it has no
    voxels. ``reference`` / ``transform`` may be passed in when called for several segments."""
    from vtk.util import numpy_support

    slicer = slicer_module()
    if reference is None:
        reference = reference_oriented_image(volume_node)
    if transform is False:
        transform = _transform_to_volume(segmentation_node, volume_node)
    binary_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation_node.GetSegmentation().ContainsRepresentation(binary_name):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    labelmap = slicer.vtkOrientedImageData()
    if not segmentation_node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        return None
    if labelmap.GetPointData().GetScalars() is None:
        return None
    resampled = slicer.vtkOrientedImageData()
    if transform is None:
        ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True)
    else:
        ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, True, transform)
    if not ok or resampled.GetPointData().GetScalars() is None:
        return None
    # Resampling may keep a sub-extent; paste it at its place in the full grid.
    dims = volume_node.GetImageData().GetDimensions()
    out = np.zeros(dims[::-1], dtype=bool)
    ext = resampled.GetExtent()
    ref_ext = reference.GetExtent()
    rdims = resampled.GetDimensions()
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(rdims[::-1])
    lo = [ext[4] - ref_ext[4], ext[2] - ref_ext[2], ext[0] - ref_ext[0]]
    src = [slice(max(0, -l), min(r, o - l)) for l, r, o in zip(lo, rdims[::-1], out.shape)]
    dst = [slice(max(0, l), max(0, l) + (s.stop - s.start)) for l, s in zip(lo, src)]
    if any(s.stop <= s.start for s in src):
        return None
    out[tuple(dst)] = values[tuple(src)] != 0
    return out
