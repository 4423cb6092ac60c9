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
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .constants import LABEL_COLORS, LABEL_NAMES, SNOMED_BONE_CATEGORY, SNOMED_VERTEBRA, VERSE_LUMBAR
from .errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd")

# TotalSegmentator v2: 31 = L1 ... 27 = L5.
TOTALSEG_LUMBAR = {31: 1, 30: 2, 29: 3, 28: 4, 27: 5}
LABEL_SCHEMES = ("auto", "internal", "verse", "totalseg")
LABEL_SCHEME_KEY = "lumbarseg_label_scheme"

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
    return "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd) or a folder with one DICOM series"


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

def dicom_series_files(folder: Path) -> list[str]:
    """File names of the largest DICOM series in ``folder`` (a folder may hold a scout and the CT)."""
    reader = sitk.ImageSeriesReader()
    try:
        series_ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    except RuntimeError:
        series_ids = ()
    best: list[str] = []
    for series_id in series_ids:
        files = list(reader.GetGDCMSeriesFileNames(str(folder), series_id))
        if len(files) > len(best):
            best = files
    if not best:
        raise InputError(f"{folder}: this folder contains no DICOM series. Give a folder holding the CT's "
                         f"DICOM files, or a single image file: {_accepted_formats()}.")
    return best


def image_information(path) -> tuple[tuple[int, ...], int]:
    """(size, components per voxel) from the file header only, so a huge volume is refused before it is
    loaded into memory."""
    path = Path(path)
    if path.is_dir():
        files = dicom_series_files(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        size = tuple(reader.GetSize()[:2]) + (len(files),)
        return size, reader.GetNumberOfComponents()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(reader.GetSize()), reader.GetNumberOfComponents()


def read_image(path) -> sitk.Image:
    """Read an image file or a DICOM series folder, keeping its geometry.

    A missing, unreadable or corrupt file is an :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Give a CT as {_accepted_formats()}.")
    if path.is_dir():
        files = dicom_series_files(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: the DICOM series could not be read ({_first_line(exc)}). "
                             f"Check that the series is complete, or convert it to NIfTI.") from None
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes). Give a CT as {_accepted_formats()}.")
    _check_nifti_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: the file could not be read as an image - it is corrupt, truncated or not "
                         f"an image format ({_first_line(exc)}). Accepted: {_accepted_formats()}.") from None


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header + voxel bytes a complete NIfTI-1/-2 file holds, or None when the header is not parseable."""
    import struct

    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = struct.unpack(endian + "f", header[108:112])[0]
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", header[16:80])
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:ndim + 1]):
        return None
    return int(vox_offset) + int(np.prod(dims[1:ndim + 1], dtype=np.int64)) * bitpix // 8


def _check_nifti_complete(path: Path) -> None:
    """ITK's NIfTI reader silently zero-fills a truncated file (e.g. an interrupted download), which would
    give a half-empty CT and a confident wrong result; NRRD and MetaImage readers already fail loudly."""
    import gzip
    import zlib

    name = path.name.lower()
    truncated = False
    try:
        if name.endswith(".nii"):
            with path.open("rb") as fh:
                expected = _nifti_expected_bytes(fh.read(540))
            truncated = expected is not None and path.stat().st_size < expected
        elif name.endswith(".nii.gz"):
            with gzip.open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(540))
            if expected is None:
                return
            with path.open("rb") as fh:  # gzip trailer: uncompressed size mod 2**32 - a cheap first test
                fh.seek(-4, 2)
                isize = int.from_bytes(fh.read(4), "little")
            if isize != expected % 2**32:  # suspicious: decompress to be sure (multi-member gzip also ends here)
                total = 0
                with gzip.open(path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        total += len(chunk)
                truncated = total < expected
    except (EOFError, zlib.error):
        truncated = True
    except OSError:  # includes gzip.BadGzipFile
        return  # unreadable header: ITK will give its own, more specific error
    if truncated:
        raise InputError(f"{path}: the file is truncated or its compressed data is damaged (shorter than its "
                         f"header says) - probably an interrupted download or copy. Copy or export it again.")


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
    size = image.GetSize()
    if min(size) < 1 or int(np.prod(size)) == 0:
        raise InputError(f"{name} is empty (size {size}); give a 3D CT volume.")
    if min(size) < 2:
        raise InputError(f"{name} has only one voxel along an axis (size {'x'.join(map(str, size))}); "
                         f"LumbarSeg needs a 3D CT volume, not a single slice.")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(f"{name} has voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm, outside "
                         f"the plausible CT range {MIN_SPACING_MM}-{MAX_SPACING_MM} mm per axis. The header's "
                         f"geometry is probably wrong (e.g. spacing in metres, or a lost slice thickness); fix "
                         f"the spacing in the file header.")
    check_memory(size, memory_limit_bytes, what=name)
    pixel = image.GetPixelID()
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    lo, hi = stats.GetMinimum(), stats.GetMaximum()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"{name} contains NaN or infinite values; expected a CT in Hounsfield units.")
    if lo == hi:
        raise InputError(f"{name} is constant (every voxel is {lo:g}); it holds no image data. "
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


def read_ct(path, memory_limit_bytes: int | None = None) -> sitk.Image:
    """Read and validate a CT; the size check runs on the header before the voxels are loaded."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder. Give a CT as {_accepted_formats()}.")
    try:
        size, _ = image_information(path)
    except InputError:
        raise
    except RuntimeError:
        size = None  # let read_image produce the specific "corrupt file" message
    if size is not None and len(size) >= 3:
        check_memory(size, memory_limit_bytes, what=str(path))
    image = read_image(path)
    validate_ct(image, memory_limit_bytes, name=str(path))
    return image


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
    """Map a label array of ``scheme`` to 0..5 (uint8); codes that are not L1..L5 become background."""
    lut_source = {"internal": {k: k for k in LABEL_NAMES}, "verse": VERSE_LUMBAR, "totalseg": TOTALSEG_LUMBAR}
    if scheme not in lut_source:
        raise InputError(f"Unknown label scheme '{scheme}': choose one of {', '.join(LABEL_SCHEMES)}.")
    array = np.asarray(array)
    out = np.zeros(array.shape, dtype=np.uint8)
    for code, label in lut_source[scheme].items():
        out[array == code] = label
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
    return labels


def _segment_tags(label: int) -> str:
    """Slicer terminology entry so the segment shows as 'Lx vertebra' in the Segment Editor."""
    code, meaning = SNOMED_VERTEBRA[label]
    cat_code, cat_meaning = SNOMED_BONE_CATEGORY
    return ("Segmentation.Status:completed|TerminologyEntry:Segmentation category and type - 3D Slicer General "
            f"Anatomy list~SCT^{cat_code}^{cat_meaning}~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master "
            "list~^^~^^|")


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
    sitk.WriteImage(out, str(path), useCompression=suffix != ".nii")
    return path


def output_stem(path) -> str:
    """'case01' for case01.nii.gz / case01.seg.nrrd / a DICOM folder 'case01/'."""
    path = Path(os.path.normpath(str(path)))
    name = path.name
    suffix = _suffix(path)
    if not path.is_dir() and name.lower().endswith(suffix) and suffix:
        name = name[: -len(suffix)]
    return name or "image"
