"""Reading reference label maps into LumbarSeg's 0..5 labels, and writing label maps (also as Slicer
``.seg.nrrd`` with segment names, colours and terminology).

Label schemes of reference segmentations (``read_labelmap``):

* ``internal``  - LumbarSeg's own 0 = background, 1..5 = L1..L5.
* ``verse``     - VerSe codes (Loeffler et al. 2020): 20..24 = L1..L5 (other vertebrae are dropped).
* ``totalseg``  - TotalSegmentator v2 codes: 31 = L1, 30 = L2, 29 = L3, 28 = L4, 27 = L5 (others dropped).

``auto`` picks by the values present: any of 27 or 29..44 means TotalSegmentator (VerSe never uses 27 nor
anything above 28); otherwise any value in 6..28 means VerSe; otherwise (only 0..5) internal. A single
binary mask (0/1) therefore reads as L1 - pass the scheme explicitly when that is wrong. The chosen scheme
is stored on the returned image under the metadata key :data:`LABEL_SCHEME_KEY`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import (ANATOMIC_CONTEXT, LABEL_COLORS, LABEL_NAMES, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA,
                         TERMINOLOGY_CONTEXT, VERSE_LUMBAR, VERSE_NAMES)
from ..errors import InputError
from . import images
from .images import _first_line, _suffix

LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")

# TotalSegmentator v2: 31 = L1 ... 27 = L5.
TOTALSEG_LUMBAR = {31: 1, 30: 2, 29: 3, 28: 4, 27: 5}
LABEL_SCHEMES = ("auto", "internal", "verse", "totalseg")
LABEL_SCHEME_KEY = "lumbarseg_label_scheme"
SOURCE_LABELS_KEY = "lumbarseg_source_labels"  # label codes of the file before reduction to L1-L5
# TotalSegmentator v2 vertebra codes: 25 sacrum, 26 S1, 27..31 L5..L1, 32..43 T12..T1, 44..50 C7..C1.
TOTALSEG_NAMES = {25: "sacrum", 26: "S1", **{27 + i: f"L{5 - i}" for i in range(5)},
                  **{32 + i: f"T{12 - i}" for i in range(12)}, **{44 + i: f"C{7 - i}" for i in range(7)}}


def detect_label_scheme(values) -> str:
    """Guess the label scheme from the label values present (see the module docstring for the rule)."""
    values = {int(v) for v in values} - {0}
    if any(v == 27 or 29 <= v <= 44 for v in values):
        return "totalseg"
    if any(6 <= v <= 28 for v in values):
        return "verse"
    return "internal"


def to_internal_labels(array: np.ndarray, scheme: str) -> np.ndarray:
    """Map a label array of ``scheme`` to 0..5 (uint8); codes that are not L1..L5 become background.

    The one place where VerSe / TotalSegmentator codes become LumbarSeg labels (reading references,
    training targets, evaluation truth). Values outside the code range, and non-integer values, are background.
    """
    lut_source = {"internal": {k: k for k in LABEL_NAMES}, "verse": VERSE_LUMBAR, "totalseg": TOTALSEG_LUMBAR}
    if scheme not in lut_source:
        raise InputError(f"Unknown label scheme '{scheme}': choose one of {', '.join(LABEL_SCHEMES)}.")
    lut = np.zeros(256, dtype=np.uint8)
    for code, label in lut_source[scheme].items():
        lut[code] = label
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return lut[array]
    out = np.zeros(array.shape, dtype=np.uint8)
    inside = (array >= 0) & (array < 256)
    if not np.issubdtype(array.dtype, np.integer):
        inside &= array == np.floor(array)
    out[inside] = lut[array[inside].astype(np.int64)]
    return out


def label_scheme_of(image: sitk.Image) -> str | None:
    return image.GetMetaData(LABEL_SCHEME_KEY) if image.HasMetaDataKey(LABEL_SCHEME_KEY) else None


def read_labelmap(path, scheme: str = "auto") -> sitk.Image:
    """Read a reference segmentation and map it to LumbarSeg's 0..5 labels (uint8, same grid).

    Accepts a label map file or a Slicer ``.seg.nrrd`` whose voxels hold label values (one layer).
    """
    path = Path(path)
    if scheme not in LABEL_SCHEMES:
        raise InputError(f"Unknown label scheme '{scheme}': choose one of {', '.join(LABEL_SCHEMES)}.")
    image = images.read_image(path)  # the module's, so a test's stand-in for it applies here too
    return labelmap_from_image(image, scheme, what=str(path))


def labelmap_from_image(image: sitk.Image, scheme: str = "auto", what: str = "The label map") -> sitk.Image:
    """A label map already in memory, checked and mapped to LumbarSeg's 0..5 labels as :func:`read_labelmap`
    does for a file (``what`` names it in errors)."""
    path = what
    if scheme not in LABEL_SCHEMES:
        raise InputError(f"Unknown label scheme '{scheme}': choose one of {', '.join(LABEL_SCHEMES)}.")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a label map must be a single-component 3D image (this one is "
                         f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} components; "
                         f"a multi-layer .seg.nrrd is not supported - export it as a label map).")
    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(np.equal(np.round(array), array)):
            raise InputError(f"{path}: the label map holds non-integer values; expected integer labels "
                             f"(0-5, VerSe 20-24 or TotalSegmentator 27-31 for L1-L5).")
        array = np.round(array).astype(np.int64)
    values = np.unique(array)
    if values.size and (values[0] < 0 or values[-1] > 255 or values.size > 256):
        raise InputError(f"{path}: this does not look like a label map (values {values[0]:g}..{values[-1]:g}, "
                         f"{values.size} distinct) - was a CT given instead? Expected integer labels: 0-5, "
                         f"VerSe 20-24 or TotalSegmentator 27-31 for L1-L5.")
    if scheme == "auto":
        scheme = detect_label_scheme(values)
    labels = sitk.GetImageFromArray(to_internal_labels(array, scheme))
    labels.CopyInformation(image)
    labels.SetMetaData(LABEL_SCHEME_KEY, scheme)
    labels.SetMetaData(SOURCE_LABELS_KEY, " ".join(str(int(v)) for v in values if v != 0))
    return labels


def label_code_name(code: int, scheme: str) -> str:
    """'T12' for VerSe 19 or TotalSegmentator 32; 'label N' for codes without a vertebra name."""
    names = {"internal": LABEL_NAMES, "verse": VERSE_NAMES, "totalseg": TOTALSEG_NAMES}.get(scheme, {})
    return names.get(int(code), f"label {int(code)}")


def reference_without_lumbar_note(reference: sitk.Image) -> str | None:
    """A note for a reference that holds no L1-L5 (e.g. a thoracic scan's labels), None otherwise."""
    if sitk.GetArrayViewFromImage(reference).any():
        return None
    scheme = label_scheme_of(reference) or "internal"
    codes = [int(v) for v in reference.GetMetaData(SOURCE_LABELS_KEY).split()] \
        if reference.HasMetaDataKey(SOURCE_LABELS_KEY) else []
    # Name the vertebrae; a whole-body map (TotalSegmentator: organs too) would list dozens of bare codes.
    named = [label_code_name(c, scheme) for c in codes if not label_code_name(c, scheme).startswith("label ")]
    others = len(codes) - len(named)
    plural = "s" if others > 1 else ""
    if not codes:
        held = "it is empty"
    elif named:
        held = (f"its labels are {', '.join(named)}" + (f" and {others} other label{plural}" if others else "")
                + f" ({scheme} codes)")
    else:
        held = f"its {others} label{plural} ({scheme} codes) name no vertebra"
    return (f"The reference holds no L1-L5 vertebra ({held}); every lumbar vertebra found counts as extra.")


def _segment_tags(label: int) -> str:
    """Segment tags with the Slicer terminology entry (the extension's own terminology, as the module tags
    its segments) so the segment shows as 'Lx vertebra' in the Segment Editor."""
    code, meaning = SNOMED_VERTEBRA[label]
    cat_code, cat_meaning = SNOMED_BONE_CATEGORY
    return (f"Segmentation.Status:completed|TerminologyEntry:{TERMINOLOGY_CONTEXT}~SCT^{cat_code}^{cat_meaning}"
            f"~SCT^{code}^{meaning}~^^~{ANATOMIC_CONTEXT}~^^~^^|")


def write_labelmap(labels: sitk.Image, path) -> Path:
    """Write 0..5 labels; the format follows the extension (.nii.gz, .nii, .nrrd, .seg.nrrd).

    ``.seg.nrrd`` is a Slicer segmentation: one layer whose voxel values are the label values, with the
    per-segment keys that ``vtkMRMLSegmentationStorageNode`` reads (``Segment{i}_ID``, ``_Name``,
    ``_Color``, ``_LabelValue``, ``_Layer``, ``_Extent``, ``_Tags``), so Slicer opens it with names, colours
    and terminology instead of "Segment_1".
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in LABELMAP_SUFFIXES:
        raise InputError(f"{path}: unsupported label map format; use .nii.gz, .nii, .nrrd or .seg.nrrd.")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = sitk.Cast(labels, sitk.sitkUInt8)
    for key in out.GetMetaDataKeys():
        out.EraseMetaData(key)
    if suffix == ".seg.nrrd":
        present = sorted(set(np.unique(sitk.GetArrayViewFromImage(out)).tolist()) - {0})
        size = out.GetSize()
        extent = f"0 {size[0] - 1} 0 {size[1] - 1} 0 {size[2] - 1}"
        out.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
        out.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
        out.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
        out.SetMetaData("Segmentation_ConversionParameters", "")
        for i, label in enumerate(present):
            name = LABEL_NAMES.get(label, f"Label{label}")
            color = LABEL_COLORS.get(label, (0.5, 0.5, 0.5))
            prefix = f"Segment{i}_"
            out.SetMetaData(prefix + "ID", name)
            out.SetMetaData(prefix + "Name", name)
            out.SetMetaData(prefix + "NameAutoGenerated", "0")
            out.SetMetaData(prefix + "Color", " ".join(f"{c:g}" for c in color))
            out.SetMetaData(prefix + "ColorAutoGenerated", "0")
            out.SetMetaData(prefix + "LabelValue", str(label))
            out.SetMetaData(prefix + "Layer", "0")
            out.SetMetaData(prefix + "Extent", extent)
            if label in SNOMED_VERTEBRA:
                out.SetMetaData(prefix + "Tags", _segment_tags(label))
    try:
        sitk.WriteImage(out, str(path), useCompression=suffix != ".nii")
    except RuntimeError as exc:  # ITK reports a full disk or a vanished folder as RuntimeError
        raise OSError(f"could not write the label map {path} ({_first_line(exc)})") from None
    return path
