"""DICOM Segmentation (SEG) output for a DICOM CT series, written with highdicom.

One segment per vertebra found (and one per measured trabecular ROI, after them, coded as bone tissue in
its vertebra), the vertebrae coded with the same SNOMED CT category and types as everywhere else
(:mod:`constants`), referencing the source series and each
of its instances, so a PACS or viewer shows the result on the CT it came from. The SEG carries the research-use notice in its series and content
descriptions.

The label map must be on the grid SimpleITK reads from the series (``io.read_ct`` of the folder), which
is what ``pipeline.segment`` returns. Frames are matched to source instances by their position in space,
not by file order, so a series written in any order maps correctly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..constants import LABEL_COLORS, LABEL_NAMES, RESEARCH_NOTICE, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA
from ..errors import InputError
from .slice_positions import gantry_tilt_degrees, slice_position_problem

SERIES_DESCRIPTION = "LumbarSeg L1-L5 (research use)"
# Copied from the source series into the SEG, where each may hold one value only.
SINGLE_VALUED_COPIES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
                        "StudyID", "AccessionNumber", "StudyDate", "StudyTime")


class DicomSegError(InputError):
    """The segmentation ran, but its DICOM SEG could not be made from the source series' headers."""
SERIES_NUMBER = 9901  # a high number so the SEG sorts after the scanner's own series


def read_source_series(folder, series_uid: str | None = None) -> list:
    """The DICOM datasets (headers, no pixel data) of the series in ``folder`` that ``io.read_ct`` reads
    (``series_uid``, by default the series with the most slices)."""
    import pydicom

    from .images import dicom_series_files
    from .slice_positions import along_normal, main_stack, stack_key

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: --dicom-seg needs a DICOM series folder as input (a DICOM SEG references "
                         "the source instances); this input is a file.")
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_series_files(folder, series_uid)]
    keep = main_stack([stack_key(ds) for ds in datasets])  # the slices io.read_ct stacks, not a localizer beside them
    if keep is not None:
        # in stack order, as io.read_ct reads them (check_references refuses a stack without positions cleanly)
        if "ImageOrientationPatient" in datasets[keep[0]] and all("ImagePositionPatient" in datasets[i] for i in keep):
            keep = along_normal(keep, [ds.get("ImagePositionPatient") for ds in datasets],
                                datasets[keep[0]].ImageOrientationPatient)
        datasets = [datasets[i] for i in keep]
    check_references(datasets, folder)
    return datasets


def check_references(datasets, where="the DICOM series") -> None:
    """Make sure a SEG can reference ``datasets``: every instance has its SOP Class and Instance UIDs and
    all share one Study, Series and Frame of Reference UID. An empty SOP Class/Instance UID is taken from
    the file's meta information (the same UIDs, kept there by some anonymisers); missing study or series
    UIDs cannot be recovered, and a SEG with made-up ones would not attach to the CT in a PACS. Frames are
    matched to instances by ImagePositionPatient, so each instance must be one slice that has it (an
    enhanced multi-frame CT keeps its positions per frame instead), and the slices must stack into one
    regular volume (:func:`slice_positions.slice_position_problem`, as when the CT is read)."""
    for ds in datasets:
        if int(ds.get("NumberOfFrames", 1) or 1) != 1 or "ImagePositionPatient" not in ds \
                or "ImageOrientationPatient" not in ds:
            raise InputError(f"{where}: --dicom-seg needs a series of single-slice images with an Image Position "
                             f"and Orientation (Patient), such as CT Image Storage; instance "
                             f"{ds.get('SOPInstanceUID', '?')} is a multi-frame image or has no position. Segment "
                             "without --dicom-seg.")
        meta = getattr(ds, "file_meta", None)
        for attr, meta_attr in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(attr, "") or "") and meta is not None and str(meta.get(meta_attr, "") or ""):
                setattr(ds, attr, meta.get(meta_attr))
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPClassUID", "SOPInstanceUID"):
        values = {str(ds.get(attr, "") or "") for ds in datasets}
        if "" in values:
            raise InputError(f"{where}: {attr} is empty in the DICOM files (removed by anonymisation?); a DICOM SEG "
                             "must reference it, so none can be written. Segment without --dicom-seg.")
        if attr not in ("SOPInstanceUID",) and len(values) > 1:
            raise InputError(f"{where}: the instances have {len(values)} different {attr}s; a DICOM SEG needs one "
                             "series of one study. Segment without --dicom-seg.")
    positions = [[float(v) for v in ds.ImagePositionPatient] for ds in datasets]  # in the order io reads them
    problem = slice_position_problem(positions, [float(v) for v in datasets[0].ImageOrientationPatient])
    if problem:
        raise InputError(f"{where}: the DICOM series is unusable: {problem}")
    tilt = gantry_tilt_degrees(positions, [float(v) for v in datasets[0].ImageOrientationPatient])
    if tilt:  # io resamples a tilted series onto a regular grid, whose slices are not the source instances
        raise InputError(f"{where}: --dicom-seg cannot be used with this series: it was acquired with a gantry tilt "
                         f"of {tilt:.1f} degrees (its slices are sheared), so it is segmented on a regular grid "
                         f"resampled from it, and a DICOM SEG must lie on the source slices. Segment without "
                         f"--dicom-seg (the label map is written on the regular grid).")


def source_slice_indices(labels: sitk.Image, datasets) -> list[int]:
    """For each dataset, the z index of its slice in ``labels`` (matched by ImagePositionPatient)."""
    indices = []
    for ds in datasets:
        position = [float(v) for v in ds.ImagePositionPatient]
        index = labels.TransformPhysicalPointToContinuousIndex(position)
        k = int(round(index[2]))
        off_grid = abs(index[0]) > 0.01 or abs(index[1]) > 0.01 or abs(index[2] - k) > 0.01
        if off_grid or not 0 <= k < labels.GetSize()[2]:
            where = tuple(round(v, 2) for v in index)
            raise InputError(f"The label map is not on the grid of the DICOM series (instance "
                             f"{ds.SOPInstanceUID} at {position} mm falls at index {where}).")
        indices.append(k)
    if len(set(indices)) != len(indices):
        raise InputError("Two DICOM instances of the series fall on the same slice of the label map; cannot write "
                         "a DICOM SEG. Segment without --dicom-seg.")
    return indices


# A trabecular ROI is bone tissue measured inside a vertebra, not the vertebra: it is coded as tissue (DICOM
# CID 7150 category "Tissue", CID 7166 type "Bone"), with its vertebra as the anatomic region and its
# definition as the segment's description.
SNOMED_TISSUE_CATEGORY = ("85756007", "Tissue")
SNOMED_BONE_TISSUE = ("3138006", "Bone")
ROI_DESCRIPTIONS = {
    "core": "Trabecular bone ROI: 3D core of the vertebral body (LumbarSeg trabecular HU)",
    "single_slice": "Trabecular bone ROI: single-slice ellipse at mid-height (LumbarSeg screening HU)",
}


def segment_descriptions(labels_present, roi_segments=()):
    """highdicom segment descriptions, numbered 1..N in the order of ``labels_present`` (1..5 = L1..L5),
    then one per measured trabecular ROI (``trabecular.RoiSegment``): labelled with its own name ("L1
    trabecular ROI") and coded as what it is, bone tissue (SNOMED CT "Bone" in the category "Tissue"), in
    its vertebra (the vertebra's code as the anatomic region), with the ROI's kind as its description."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    algorithm = hd.AlgorithmIdentificationSequence(name="LumbarSeg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    vertebra_category = Code(SNOMED_BONE_CATEGORY[0], "SCT", SNOMED_BONE_CATEGORY[1])
    tissue_category = Code(SNOMED_TISSUE_CATEGORY[0], "SCT", SNOMED_TISSUE_CATEGORY[1])
    bone_tissue = Code(SNOMED_BONE_TISSUE[0], "SCT", SNOMED_BONE_TISSUE[1])
    out = []
    names = [(label, LABEL_NAMES[label], None) for label in labels_present] + \
        [(r.label, r.name, r) for r in roi_segments]
    for number, (label, name, roi) in enumerate(names, start=1):
        vertebra = Code(SNOMED_VERTEBRA[label][0], "SCT", SNOMED_VERTEBRA[label][1])
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=vertebra_category if roi is None else tissue_category,
            segmented_property_type=vertebra if roi is None else bone_tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"LumbarSeg {name}",
            tracking_uid=hd.UID(),
            anatomic_regions=None if roi is None else [vertebra],
            display_color=hd.color.CIELabColor.from_rgb(
                *[int(round(255 * c)) for c in LABEL_COLORS[label]]),
        )
        if roi is not None:
            description.SegmentDescription = ROI_DESCRIPTIONS.get(roi.kind, "Trabecular bone ROI")
        out.append(description)
    return out


def write_dicom_seg(labels: sitk.Image, source, path, roi_segments=()) -> Path | None:
    """Write the L1-L5 labels (0..5 on the series' grid) as a DICOM SEG referencing ``source``.

    ``source`` is the series folder or its datasets (:func:`read_source_series`). ``roi_segments``
    (``trabecular.RoiSegment``: name, vertebra, crop region and mask on the same grid) become segments of
    their own after the vertebrae; they overlap the vertebrae, which a BINARY SEG allows. Returns the path,
    or None when no vertebra is labelled (a SEG needs at least one segment; nothing is written).
    """
    import highdicom as hd

    if isinstance(source, (str, Path)):
        datasets = read_source_series(source)
    else:
        datasets = list(source)
        check_references(datasets)
    array = sitk.GetArrayViewFromImage(labels)
    present = sorted(set(np.unique(array).tolist()) & set(LABEL_NAMES))
    if not present:
        return None
    indices = source_slice_indices(labels, datasets)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    if array.shape[1:] != (rows, columns):
        raise InputError(f"The label map has {array.shape[2]}x{array.shape[1]} voxels per slice; the DICOM series "
                         f"has {columns}x{rows}.")
    # Segment numbers must run 1..N: renumber the labels present (e.g. L2, L3, L4 -> 1, 2, 3).
    renumber = np.zeros(256, np.uint8)
    for number, label in enumerate(present, start=1):
        renumber[label] = number
    pixel_array = renumber[np.asarray(array, np.uint8)[indices]]  # one frame per source instance, in order
    roi_segments = list(roi_segments)
    if roi_segments:  # overlapping segments: one binary plane per segment (frames, rows, columns, segments)
        planes = np.zeros(pixel_array.shape + (len(present) + len(roi_segments),), bool)
        for number in range(1, len(present) + 1):
            planes[..., number - 1] = pixel_array == number
        frame_of_slice = np.full(array.shape[0], -1)
        frame_of_slice[indices] = np.arange(len(indices))
        for n, roi in enumerate(roi_segments, start=len(present)):
            zs = np.arange(roi.region[0].start, roi.region[0].stop)
            for z, plane in zip(zs, roi.mask):
                if frame_of_slice[z] >= 0 and plane.any():
                    planes[frame_of_slice[z], roi.region[1], roi.region[2], n] |= plane
        pixel_array = planes

    first = datasets[0]
    try:
        seg = _segmentation(hd, datasets, pixel_array, present, first, roi_segments)
        seg.SeriesDescription = SERIES_DESCRIPTION
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(str(path))
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # highdicom refuses a source header
        Path(path).unlink(missing_ok=True)
        raise DicomSegError(f"No DICOM SEG was written: {_header_problem(first) or _one_line(exc)}.") from None
    return path


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"highdicom refused the source series' headers ({type(exc).__name__}: {text or 'no detail'})"


def _header_problem(ds) -> str | None:
    """Which copied attribute of the source series a SEG cannot hold (named, its values not shown)."""
    for keyword in SINGLE_VALUED_COPIES:
        value = ds.get(keyword)
        if value is not None and not isinstance(value, (str, bytes)) and hasattr(value, "__len__") \
                and len(value) > 1:
            return (f"the source series' {keyword} holds {len(value)} values, and a DICOM SEG copies it with "
                    f"one; correct the header (e.g. with dcmodify) to write a SEG")
    return None


def _segmentation(hd, datasets, pixel_array, present, first, roi_segments=()):
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(present, roi_segments),
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="LumbarSeg",
        manufacturer_model_name="LumbarSeg",
        software_versions=__version__,
        device_serial_number=str(getattr(first, "DeviceSerialNumber", "") or "none"),
        content_description=f"L1-L5, automatic. {RESEARCH_NOTICE}"[:64],
        content_label="LUMBARSEG",
        content_creator_name="LumbarSeg^Automatic",
    )
