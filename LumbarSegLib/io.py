"""Reading CTs and label maps, checking that a CT is usable, and writing label maps.

Every problem a user can fix raises :class:`errors.InputError` whose message says what was wrong, what is
accepted and what to do, because the CLI and the Slicer module show it as is (no traceback). Geometry
(origin, spacing, direction) is always kept: results are written back on the input's own grid.

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

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .constants import (ANATOMIC_CONTEXT, LABEL_COLORS, LABEL_NAMES, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA,
                        TERMINOLOGY_CONTEXT, VERSE_LUMBAR, VERSE_NAMES)
from . import nifti, nrrd
from .constants import ACCEPTED_CT_FORMATS
from .dicom_folders import (DicomSeries, describe_series_choice, dicom_series_files, list_dicom_series,  # noqa: F401
                            select_dicom_series)
from .errors import InputError
from .input_checks import check_input_kind, check_orthogonal_direction
from .slice_positions import REGULARIZED_NOTE_KEY, check_series_files, read_tilted_series

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")

# TotalSegmentator v2: 31 = L1 ... 27 = L5.
TOTALSEG_LUMBAR = {31: 1, 30: 2, 29: 3, 28: 4, 27: 5}
LABEL_SCHEMES = ("auto", "internal", "verse", "totalseg")
LABEL_SCHEME_KEY = "lumbarseg_label_scheme"
SOURCE_LABELS_KEY = "lumbarseg_source_labels"  # label codes of the file before reduction to L1-L5
# TotalSegmentator v2 vertebra codes: 25 sacrum, 26 S1, 27..31 L5..L1, 32..43 T12..T1, 44..50 C7..C1.
TOTALSEG_NAMES = {25: "sacrum", 26: "S1", **{27 + i: f"L{5 - i}" for i in range(5)},
                  **{32 + i: f"T{12 - i}" for i in range(12)}, **{44 + i: f"C{7 - i}" for i in range(7)}}

# Peak working memory of one segmentation, per input voxel: the HU image, its canonical copy, float
# resampling buffers, the label maps and STL meshing. benchmarks/bench_pipeline.py measured ~21 bytes per
# voxel above the interpreter+torch baseline on a 512x512x300 CT; rounded up.
BYTES_PER_VOXEL = 24
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def _accepted_formats() -> str:
    return ACCEPTED_CT_FORMATS


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def image_information(path, series_uid: str | None = None) -> tuple[tuple[int, ...], int]:
    """(size, components per voxel) from the file header only, so a huge volume is refused before it is
    loaded into memory."""
    path = Path(path)
    if path.is_dir():
        files = dicom_series_files(path, series_uid)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        size = tuple(reader.GetSize()[:2]) + (len(files),)
        return size, reader.GetNumberOfComponents()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize()), reader.GetNumberOfComponents()


def read_image(path, series_uid: str | None = None) -> sitk.Image:
    """Read an image file or a DICOM series folder, keeping its geometry.

    A DICOM folder gives the series ``series_uid``, by default the one with the most slices; a series whose
    slices do not stack into one regular volume is refused (:mod:`slice_positions`). A missing,
    unreadable or corrupt file is an :class:`InputError` naming the file. Non-finite values of a float
    NIfTI file are kept as they are in the file (see :func:`nifti.restore_nonfinite`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Give a CT as {_accepted_formats()}.")
    check_input_kind(path)  # a named pipe would block the reader forever
    if path.is_dir():
        files = dicom_series_files(path, series_uid)
        geometry = check_series_files(files, path)  # GDCM would stack duplicated or missing slices wrongly
        if geometry is not None and geometry.tilt_degrees():  # sheared slices: onto a regular grid
            return read_tilted_series(files, geometry, path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(files))
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: the DICOM series could not be read ({_first_line(exc)}). "
                             f"Check that the series is complete, or convert it to NIfTI.") from None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes). Give a CT as {_accepted_formats()}.")
    if _suffix(path) in (".nii", ".nii.gz"):
        nifti.check_complete(path)
    nrrd.check_header(path)  # any file with the NRRD magic, whatever its name
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: the file could not be read as an image - it is corrupt, truncated or not "
                         f"an image format ({_first_line(exc)}). Accepted: {_accepted_formats()}.") from None
    if _suffix(path) in (".nii", ".nii.gz"):
        image = nifti.restore_nonfinite(path, image)
    return image


def _first_line(exc: Exception) -> str:
    """ITK errors are multi-line with C++ file names; the last meaningful line is what a user needs."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = [ln for ln in lines if ln.lower().startswith(("description:", "itk::error"))]
    text = (detail[-1] if detail else lines[-1] if lines else type(exc).__name__)
    return text.replace("Description:", "").strip()[:200]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def available_memory_bytes() -> int | None:
    """Memory the process could still use (MemAvailable), or None when unknown. Tests monkeypatch this."""
    try:
        import psutil  # type: ignore

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(size, memory_limit_bytes: int | None = None, what: str = "This CT") -> None:
    """Refuse volumes whose processing would exhaust memory: better a clear message than a killed process."""
    n_voxels = int(np.prod([int(s) for s in size], dtype=np.int64))
    limit = memory_limit_bytes if memory_limit_bytes is not None else available_memory_bytes()
    if limit is None:
        return
    needed = n_voxels * BYTES_PER_VOXEL
    if needed > limit:
        dims = "x".join(str(int(s)) for s in size)
        factor = max(2, math.ceil((needed / max(limit, 1)) ** (1.0 / 3.0)))
        raise InputError(
            f"{what} is too large for the available memory: {dims} voxels need about {needed / 2**30:.1f} GiB, "
            f"but only {limit / 2**30:.1f} GiB is available. Crop it to the lumbar region or downsample it "
            f"(e.g. by {factor} per axis), for instance with: "
            f"python -c \"import SimpleITK as s; s.WriteImage(s.BinShrink(s.ReadImage('in.nii.gz'), "
            f"[{factor}, {factor}, {factor}]), 'small.nii.gz')\", then run LumbarSeg on the smaller image.")


def validate_ct(image: sitk.Image, memory_limit_bytes: int | None = None, name: str = "The image") -> None:
    """Refuse images the networks cannot meaningfully segment, with a message that says how to fix it.

    The networks were trained on CT in Hounsfield units with a bone window; anything else (MR, PNG
    screenshots, 8-bit exports, raw stored values) gives confident nonsense rather than an error, so it is
    rejected here.
    """
    if image.GetDimension() != 3:
        raise InputError(f"{name} is {image.GetDimension()}D ({'x'.join(map(str, image.GetSize()))}); "
                         f"LumbarSeg needs a 3D CT volume. Give the whole series (a DICOM folder or a 3D "
                         f"NIfTI/NRRD), not a single slice.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (a colour "
                         f"or vector image); LumbarSeg needs a single-channel CT in Hounsfield units.")
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{name} holds complex-valued voxels ({image.GetPixelIDTypeAsString()}, as MR raw or "
                         f"phase data is stored); LumbarSeg needs a real-valued CT in Hounsfield units.")
    size = image.GetSize()
    if min(size) < 1 or int(np.prod(size)) == 0:
        raise InputError(f"{name} is empty (size {size}); give a 3D CT volume.")
    if min(size) < 2:
        raise InputError(f"{name} has only one voxel along an axis (size {'x'.join(map(str, size))}); "
                         f"LumbarSeg needs a 3D CT volume, not a single slice.")
    check_orthogonal_direction(image, name)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(f"{name} has voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm, outside "
                         f"the plausible CT range {MIN_SPACING_MM}-{MAX_SPACING_MM} mm per axis. The header's "
                         f"geometry is probably wrong (e.g. spacing in metres, or a lost slice thickness); fix "
                         f"the spacing in the file header.")
    check_memory(size, memory_limit_bytes, what=name)
    pixel = image.GetPixelID()
    lo, hi, nonfinite = finite_range(image)
    if nonfinite == image.GetNumberOfPixels():
        raise InputError(f"{name} holds no numbers at all: every voxel ({nonfinite}) is NaN (not a number) or "
                         f"infinite. Check that the right file was given, or export the CT again.")
    if lo == hi:
        what = f"every voxel is {lo:g}" if not nonfinite else f"every voxel that is a number is {lo:g}"
        raise InputError(f"{name} is constant ({what}); it holds no image data. "
                         f"Check that the right file or series was given.")
    accepted = ("expected a CT in Hounsfield units (air about -1000, bone several hundred and above). Give the "
                "original CT (DICOM, or NIfTI/NRRD converted with the rescale slope/intercept applied)")
    if pixel in (sitk.sitkUInt8, sitk.sitkInt8):
        raise InputError(f"{name} is an 8-bit image (values {lo:g}..{hi:g}); {accepted}, not an 8-bit export "
                         f"or screenshot.")
    if lo >= 0 and hi <= 255:
        raise InputError(f"{name} only holds values {lo:g}..{hi:g} (an 8-bit range); {accepted}.")
    if lo > -500 or hi < 200:
        hint = (" It looks like an MR image or a CT stored without its rescale intercept." if lo >= 0
                else " It has no air and/or no bone, as in an MR image or a tight crop.")
        raise InputError(f"{name} has intensities {lo:g}..{hi:g}; {accepted}.{hint}")


AIR_HU = -1000.0


def finite_range(image: sitk.Image) -> tuple[float, float, int]:
    """(min, max) over the finite voxels and the number of NaN/infinite voxels.

    ITK's MinimumMaximumImageFilter skips NaN silently (every comparison with NaN is false), so float
    images are checked with numpy; integer images cannot hold NaN.
    """
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        stats = sitk.MinimumMaximumImageFilter()
        stats.Execute(image)
        return stats.GetMinimum(), stats.GetMaximum(), 0
    array = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(array)
    n_finite = int(np.count_nonzero(finite))
    if n_finite == 0:
        return float("nan"), float("nan"), int(array.size)
    if n_finite == array.size:
        return float(array.min()), float(array.max()), 0
    values = array[finite]
    return float(values.min()), float(values.max()), int(array.size - n_finite)


def replace_nonfinite(image: sitk.Image, name: str = "The image") -> tuple[sitk.Image, np.ndarray | None, str | None]:
    """NaN/infinite voxels set to air, with the (z, y, x) mask of those voxels and a warning (None, None
    when every voxel is a number).

    Air, because NaN in a CT almost always marks "no data": padding outside the scanned field of view
    left by a resampling or reformatting tool, where a scanner would have reported air. Segmenting after
    a visible warning is more useful than refusing such common files, and the caller reports how many of
    those voxels lie near the result (:func:`nonfinite_near` - a CT with NaN inside the spine is damaged).
    """
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return image, None, None
    array = sitk.GetArrayFromImage(image)
    mask = ~np.isfinite(array)
    count = int(np.count_nonzero(mask))
    if count == 0:
        return image, None, None
    n_nan = int(np.count_nonzero(np.isnan(array[mask])))
    kinds = " and ".join(k for k, n in (("NaN", n_nan), ("infinite", count - n_nan)) if n)
    array[mask] = AIR_HU
    clean = sitk.GetImageFromArray(array)
    clean.CopyInformation(image)
    warning = (f"WARNING: {name} has {count} voxels ({100.0 * count / array.size:.3g} %) that are not numbers "
               f"({kinds}); they were set to air ({AIR_HU:g} HU) before segmenting. NaN usually marks padding "
               f"outside the scanned field of view; where it lies inside the body the result is unreliable.")
    return clean, mask, warning


def nonfinite_near(mask: np.ndarray | None, labels: np.ndarray, spacing_xyz, margin_mm: float = 10.0) -> int:
    """How many replaced (NaN/infinite) voxels lie within ``margin_mm`` of the found vertebrae's bounding box
    (0 when there are none or nothing was found)."""
    if mask is None or not np.any(labels):
        return 0
    nz = np.nonzero(labels)
    margin = [int(math.ceil(margin_mm / float(s))) for s in spacing_xyz[::-1]]
    box = tuple(slice(max(int(idx.min()) - m, 0), int(idx.max()) + 1 + m) for idx, m in zip(nz, margin))
    return int(np.count_nonzero(mask[box]))


def prepare_ct(image: sitk.Image, memory_limit_bytes: int | None = None,
               name: str = "The image") -> tuple[sitk.Image, np.ndarray | None, list[str]]:
    """Validate a CT and make it safe to segment: (image with NaN set to air, mask of those voxels or None,
    warnings). Raises :class:`InputError` for an image that cannot be segmented (see :func:`validate_ct`)."""
    validate_ct(image, memory_limit_bytes, name=name)
    clean, mask, warning = replace_nonfinite(image, name)
    return clean, mask, [warning] if warning else []


@dataclass
class LoadedCT:
    """A CT read from disk and made safe to segment (see :func:`load_ct`)."""

    image: sitk.Image
    nonfinite_mask: np.ndarray | None  # (z, y, x) voxels that were NaN/infinite and are now air
    messages: list[str]  # warnings and notes for the user (console, report.json)
    series: DicomSeries | None = None  # the DICOM series read, for a folder
    all_series: list[DicomSeries] | None = None


def load_ct(path, memory_limit_bytes: int | None = None, series_uid: str | None = None) -> LoadedCT:
    """Read and validate a CT; the size check runs on the header before the voxels are loaded.

    A DICOM folder gives the series ``series_uid``, by default the one with the most slices (named in the
    messages when the folder holds several). NaN voxels are set to air with a warning (:func:`prepare_ct`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Give a CT as {_accepted_formats()}.")
    check_input_kind(path)  # before the header is read: a named pipe would block forever
    messages: list[str] = []
    chosen = series = None
    if path.is_dir():
        chosen, series = select_dicom_series(path, series_uid)
        choice = describe_series_choice(path, chosen, series)
        if choice:
            messages.append(choice)
    try:
        size, _ = image_information(path, series_uid)
    except InputError:
        raise
    except RuntimeError:
        size = None  # let read_image produce the specific "corrupt file" message
    if size is not None and len(size) >= 3:
        check_memory(size, memory_limit_bytes, what=str(path))
    image = read_image(path, series_uid)
    if image.HasMetaDataKey(REGULARIZED_NOTE_KEY):  # a gantry-tilted series, resampled: say so
        messages.append(image.GetMetaData(REGULARIZED_NOTE_KEY))
    image, mask, warnings_ = prepare_ct(image, memory_limit_bytes, name=str(path))
    return LoadedCT(image, mask, messages + warnings_, chosen, series)


def read_ct(path, memory_limit_bytes: int | None = None, series_uid: str | None = None) -> sitk.Image:
    """:func:`load_ct` for scripts: just the image; its messages are issued as Python warnings."""
    import warnings

    loaded = load_ct(path, memory_limit_bytes, series_uid)
    for message in loaded.messages:
        warnings.warn(message, stacklevel=2)
    return loaded.image


# --------------------------------------------------------------------------------------------------
# Label maps
# --------------------------------------------------------------------------------------------------

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
    image = read_image(path)
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


def output_stem(path) -> str:
    """'case01' for case01.nii.gz / case01.seg.nrrd / a DICOM folder 'case01/'."""
    path = Path(os.path.normpath(str(path)))
    name = path.name
    suffix = _suffix(path)
    if not path.is_dir() and name.lower().endswith(suffix) and suffix:
        name = name[: -len(suffix)]
    return name or "image"
