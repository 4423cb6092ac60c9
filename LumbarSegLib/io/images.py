"""Reading CTs and checking that a CT is usable (label maps: :mod:`.label_maps`).

Every problem a user can fix raises :class:`errors.InputError` whose message says what was wrong, what is
accepted and what to do, because the CLI and the Slicer module show it as is (no traceback). Geometry
(origin, spacing, direction) is always kept: results are written back on the input's own grid.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import ACCEPTED_CT_FORMATS
from ..errors import InputError
from . import nifti, nrrd
from .dicom_folders import (DicomSeries, describe_series_choice, dicom_series_files, list_dicom_series,  # noqa: F401
                            select_dicom_series)
from .input_checks import check_input_kind, check_orthogonal_direction
from .slice_positions import REGULARIZED_NOTE_KEY, SERIES_NOTE_KEY, check_series_files, read_tilted_series

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha", ".mhd")

# Peak working memory of one segmentation, per input voxel: the HU image, its canonical copy, float
# resampling buffers, the label maps and STL meshing. benchmarks/bench_pipeline.py measured ~21 bytes per
# voxel above the interpreter+torch baseline on a 512x512x300 CT; rounded up. Freed memory kept for reuse while
# a study runs (inference.heap) adds 0.3-0.6 GiB whatever the CT's size (the networks' crops are fixed), not per
# voxel: 512x512x150, 300 and 500 slices measured +0.40, +0.6 and +0.26 GiB (session 17), so this stays.
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
        # GDCM would stack duplicated or missing slices wrongly, or a localizer stored in the series with them
        files, geometry, left_out = check_series_files(dicom_series_files(path, series_uid), path)
        if geometry is not None and geometry.tilt_degrees():  # sheared slices: onto a regular grid
            image = read_tilted_series(files, geometry, path)
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            try:
                image = reader.Execute()
            except RuntimeError as exc:
                raise InputError(f"{path}: the DICOM series could not be read ({_first_line(exc)}). "
                                 f"Check that the series is complete, or convert it to NIfTI.") from None
        if left_out:
            image.SetMetaData(SERIES_NOTE_KEY, left_out)
        return image
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
        note = nifti.orientation_note(path, image)
        if note:
            image.SetMetaData(nifti.ORIENTATION_NOTE_KEY, note)
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
    rest = beside_padding(image, lo) if lo < PADDING_BELOW_HU else None
    lowest = float(rest.min()) if rest is not None else None
    if lowest is not None and lowest > LOST_INTERCEPT_LOWEST:  # a CT in HU with padding stops here
        median = float(np.median(rest))  # a partial sort of the sample: only where the lowest value looks stored
        if median > LOST_INTERCEPT_MEDIAN:
            raise InputError(f"{name} has intensities {lo:g}..{hi:g}, but {lo:g} is padding outside the field of "
                             f"view and nothing else lies below {lowest:g} (half of it above "
                             f"{median:g}): no air and no fat, as in a CT stored without its rescale intercept (air "
                             f"near 0, soft tissue near 1000); {accepted}.")


# A lost rescale intercept with the scanner's padding value kept (GE stores -2000 outside the reconstructed circle)
# passed the range check above on the padding alone and was segmented 1024 HU off. Padding lies below any air
# (air is -1000, clipped at -1024 by some scanners) and fills a large share of the voxels; besides it, a CT in
# HU holds air or at least fat (-100, with noise lower still) somewhere in any field of view with a body, and
# half of its voxels lie below bone's HU, where stored values put soft tissue near 1000.
PADDING_BELOW_HU = -1100.0
PADDING_SHARE = 0.01
LOST_INTERCEPT_LOWEST = -50.0
LOST_INTERCEPT_MEDIAN = 300.0


def beside_padding(image: sitk.Image, lo: float) -> np.ndarray | None:
    """The values other than ``lo`` when ``lo`` fills at least :data:`PADDING_SHARE` of the voxels, else None (or
    when nothing else is there); read on every second voxel along each axis (an eighth of the time)."""
    sample = sitk.GetArrayViewFromImage(image)[::2, ::2, ::2]
    if np.count_nonzero(sample == lo) < PADDING_SHARE * sample.size:
        return None
    rest = sample[sample > lo]  # NaN compares false: left out
    return rest if rest.size else None


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
    # a tilted series resampled, a localizer left out of a series, a NIfTI's two orientations: say so
    for key in (REGULARIZED_NOTE_KEY, SERIES_NOTE_KEY, nifti.ORIENTATION_NOTE_KEY):
        if image.HasMetaDataKey(key):
            messages.append(image.GetMetaData(key))
    image, mask, warnings_ = prepare_ct(image, memory_limit_bytes, name=str(path))
    return LoadedCT(image, mask, messages + warnings_, chosen, series)


def read_ct(path, memory_limit_bytes: int | None = None, series_uid: str | None = None) -> sitk.Image:
    """:func:`load_ct` for scripts: just the image; its messages are issued as Python warnings."""
    import warnings

    loaded = load_ct(path, memory_limit_bytes, series_uid)
    for message in loaded.messages:
        warnings.warn(message, stacklevel=2)
    return loaded.image


def index_to_lps_matrix(image: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping a (continuous) voxel index (x, y, z, 1) of ``image`` to LPS mm: its direction and spacing
    in ``[:3, :3]``, its origin in ``[:3, 3]``. What every measure, surface and training target that reads voxel
    positions uses, oblique and permuted grids included."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(image.GetDirection(), float).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return m


def output_stem(path) -> str:
    """'case01' for case01.nii.gz / case01.seg.nrrd / a DICOM folder 'case01/'."""
    path = Path(os.path.normpath(str(path)))
    name = path.name
    suffix = _suffix(path)
    if not path.is_dir() and name.lower().endswith(suffix) and suffix:
        name = name[: -len(suffix)]
    return name or "image"
