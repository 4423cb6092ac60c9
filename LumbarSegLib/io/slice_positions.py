"""Whether the slices of a DICOM series stack into one volume with a true geometry.

GDCM sorts a series by Image Position (Patient) along the slice normal. When it cannot - two instances at
the same position (an image exported twice), or an instance without a position - it silently falls back
to the order of the file names, and ITK stacks the slices in that order with a made-up slice spacing
(1 mm): a scrambled CT that still segments, with wrong volumes and heights. A missing slice gives a gap
that ITK spreads evenly over the whole volume. Both are checked here on the headers, before the voxels
are read, and refused with a message that names the problem.

A series acquired with a gantry tilt has sheared slices: each slice's position moves along the slice
plane as well as along its normal. ITK stacks them as if they were straight above each other, so the
volume lies up to centimetres off the patient and is too large by 1 / cos(tilt). Such a series is
resampled here onto a regular grid (:func:`regularize_sheared_series`), as 3D Slicer's DICOM loader does
with its acquisition-geometry regularization, and the caller says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

TILT_TOLERANCE = 1e-3  # in-plane shift per mm of slice step below this (0.06 degrees) is no tilt
SHEAR_RESIDUAL_MM = 0.1  # slices shifting in-plane by more than this off one straight line are irregular
DUPLICATE_MM = 0.01  # two slices closer than this lie at the same position
# A slice this far (relative to the mean step) off the regular stack that ITK makes of the series (slice k at the
# first position + k mean steps) means a missing slice, mixed stacks or a drifting spacing: the volume's anatomy
# would lie that far off. POSITION_ROUNDING_MM allows positions written to 0.1 mm (0.625 mm slices at 0.6/0.7).
GAP_TOLERANCE = 0.2
POSITION_ROUNDING_MM = 0.05


def slice_position_problem(positions, orientation) -> str | None:
    """Why slices at ``positions`` (Image Position (Patient), in the order they will be stacked) with
    Image Orientation (Patient) ``orientation`` do not make one regular volume; None when they do."""
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    if len(positions) < 2:
        return None
    orientation = np.asarray(orientation, dtype=float).reshape(2, 3)
    along = positions @ np.cross(orientation[0], orientation[1])  # mm along the slice normal
    ordered = np.sort(along)
    duplicates = int(np.count_nonzero(np.diff(ordered) < DUPLICATE_MM))
    if duplicates:
        return (f"{duplicates} of its {len(along)} slices lie at the same position as another one (an image "
                f"stored twice?), so they cannot be stacked into one volume. Keep one image per position, or "
                f"export the series again.")
    gaps = np.diff(along)
    if not (np.all(gaps > 0) or np.all(gaps < 0)):
        return ("its slices are not in the order of their positions, so they cannot be stacked into one volume. "
                "Export the series again, or convert it to NIfTI.")
    gaps = np.abs(gaps)
    typical = float(np.median(gaps))
    mean = (along[-1] - along[0]) / (len(along) - 1)
    off = np.abs(along - (along[0] + mean * np.arange(len(along))))
    if float(off.max()) > GAP_TOLERANCE * abs(mean) + POSITION_ROUNDING_MM:
        return (f"its slice spacing is not uniform (gaps of {gaps.min():.3g} to {gaps.max():.3g} mm, mostly "
                f"{typical:.3g} mm): slices are missing, or it mixes stacks (a slice lies {off.max():.2g} mm off an "
                f"evenly spaced stack). A volume made from it would have a wrong geometry. Export the complete "
                f"series again.")
    return None


@dataclass(frozen=True)
class SeriesGeometry:
    """Image Position (Patient) of each slice, in the order of the files, and the series' orientation."""

    positions: np.ndarray  # (n, 3) mm
    orientation: np.ndarray  # (2, 3): row and column direction cosines

    @property
    def step(self) -> np.ndarray:
        """The mean vector from one slice's position to the next (mm)."""
        return (self.positions[-1] - self.positions[0]) / (len(self.positions) - 1)

    def tilt_degrees(self) -> float:
        """The angle between the slice step and the slice normal: the gantry tilt (0 for a straight stack)."""
        return gantry_tilt_degrees(self.positions, self.orientation)


def gantry_tilt_degrees(positions, orientation) -> float:
    """The angle (degrees) between the stack's step and the slice normal; 0.0 below TILT_TOLERANCE."""
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    if len(positions) < 2:
        return 0.0
    orientation = np.asarray(orientation, dtype=float).reshape(2, 3)
    normal = np.cross(orientation[0], orientation[1])
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    along = float(abs(step @ normal))
    across = float(np.linalg.norm(step - (step @ normal) * normal))
    if along == 0 or across <= TILT_TOLERANCE * along:
        return 0.0
    return math.degrees(math.atan2(across, along))


def shear_problem(geometry: SeriesGeometry) -> str | None:
    """Why a tilted series' slices do not shift along one straight line (None when they do)."""
    k = np.arange(len(geometry.positions))[:, None]
    expected = geometry.positions[0] + k * geometry.step
    residual = float(np.abs(geometry.positions - expected).max())
    if residual > SHEAR_RESIDUAL_MM:
        return (f"its slices shift sideways irregularly (up to {residual:.2g} mm off a straight line), as in a series "
                f"that mixes acquisitions; it cannot be made into one regular volume. Export the series again.")
    return None


def regularize_sheared_series(slices: np.ndarray, geometry: SeriesGeometry, pixel_spacing_xy, air: float):
    """The sheared stack ``slices`` ((z, y, x) in file order) resampled onto a regular grid.

    The output has the series' row and column directions and its slice normal (pointing the way the slices
    advance), the series' pixel spacing and the slice distance along the normal; it covers every slice
    entirely, so it is wider than the series along the tilt. Linear interpolation; outside the stack: ``air``.
    """
    import SimpleITK as sitk

    row, col = geometry.orientation
    step = geometry.step
    normal = np.cross(row, col)
    if step @ normal < 0:
        normal = -normal
    sheared = sitk.GetImageFromArray(np.asarray(slices, dtype=np.float32))
    sheared.SetOrigin([float(v) for v in geometry.positions[0]])
    dx, dy = (float(v) for v in pixel_spacing_xy)
    sheared.SetSpacing([dx, dy, float(np.linalg.norm(step))])
    sheared.SetDirection(np.column_stack([row, col, step / np.linalg.norm(step)]).ravel().tolist())
    frame = np.column_stack([row, col, normal])  # orthonormal: world = origin + frame @ local
    size = sheared.GetSize()
    corners = np.array([sheared.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, size[0] - 1)
                        for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    local = (corners - geometry.positions[0]) @ frame
    spacing = np.array([dx, dy, float(step @ normal)])
    lo, hi = local.min(axis=0), local.max(axis=0)
    out_size = [int(v) for v in np.floor((hi - lo) / spacing + 1e-6) + 1]
    reference = sitk.Image(out_size, sitk.sitkFloat32)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection(frame.ravel().tolist())
    reference.SetOrigin((geometry.positions[0] + frame @ lo).tolist())
    return sitk.Resample(sheared, reference, sitk.Transform(), sitk.sitkLinear, float(air), sitk.sitkFloat32)


def read_series_headers(files) -> tuple[list, list]:
    """Each file's Image Position (Patient) (None where it has none) and stack key (:func:`stack_key`), in the
    order of ``files`` (headers only)."""
    import pydicom

    positions, keys = [], []
    for name in files:
        ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=[
            "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns", "ImageType"])
        position = ds.get("ImagePositionPatient")
        positions.append([float(v) for v in position] if position else None)
        keys.append(stack_key(ds))
    return positions, keys


ORIENTATION_SAME = 1e-3  # direction cosines closer than this are one orientation


def stack_key(ds) -> tuple:
    """(orientation (6 cosines), (rows, columns), whether a localizer) of a DICOM dataset; None for the
    orientation it lacks."""
    orientation = ds.get("ImageOrientationPatient")
    image_type = ds.get("ImageType") or ()
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    return (tuple(float(v) for v in orientation) if orientation else None,
            (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)),
            any(str(v).upper() == "LOCALIZER" for v in image_type))


def main_stack(keys) -> list[int] | None:
    """The indices of the largest group of files that share an orientation and an image size and are not
    localizers (ImageType LOCALIZER), when ``keys`` (:func:`stack_key`, one per file of a series) hold more than
    one group; None when they are one stack. A localizer or a screen capture stored in the CT's series made
    the whole series look like one with missing slices, and a sound CT was refused."""
    groups: list[tuple[tuple, list[int]]] = []
    for i, (orientation, size, localizer) in enumerate(keys):
        for (o, sz, loc), members in groups:
            if sz == size and loc == localizer and (o is None) == (orientation is None) and (
                    o is None or np.abs(np.subtract(o, orientation)).max() < ORIENTATION_SAME):
                members.append(i)
                break
        else:
            groups.append(((orientation, size, localizer), [i]))
    if len(groups) < 2:
        return None
    return max(groups, key=lambda g: (not g[0][2], len(g[1])))[1]  # a localizer stack only when nothing else


def along_normal(indices, positions, orientation) -> list[int]:
    """``indices`` ordered by their ``positions`` (Image Position (Patient)) along the slice normal of
    ``orientation`` (six cosines), ascending, as GDCM orders a series."""
    row, col = np.asarray(orientation, float).reshape(2, 3)
    normal = np.cross(row, col)
    return sorted(indices, key=lambda i: float(np.asarray(positions[i], float) @ normal))


def check_series_files(files, where) -> tuple[list, SeriesGeometry | None, str | None]:
    """Read the positions of a series' files (headers only) and raise :class:`InputError` for a series that
    does not stack into one regular volume (:func:`slice_position_problem`, :func:`shear_problem`). Returns
    the files to stack (a series that mixes stacks keeps its largest, :func:`main_stack`, ordered along its
    slice normal as GDCM orders a series), its geometry (None for a single file), and a note on what was left
    out (None when nothing was)."""
    files = list(files)
    if len(files) < 2:  # a single file: one slice, or an enhanced multi-frame image with its own geometry
        return files, None, None
    positions, keys = read_series_headers(files)
    keep = main_stack(keys)
    note = None
    if keep is not None:
        note = (f"The DICOM series also holds {len(files) - len(keep)} image(s) of another orientation or size, or "
                f"localizers, beside its {len(keep)} slices; they were left out.")
    kept = keep if keep is not None else list(range(len(files)))
    for i in kept:
        if positions[i] is None or keys[i][0] is None:
            raise InputError(f"{where}: the DICOM file {Path(files[i]).name} has no Image Position/Orientation "
                             f"(Patient), so the slices cannot be put in order. Export the series again, or "
                             f"convert it to NIfTI.")
    orientation = np.asarray(keys[kept[0]][0], float).reshape(2, 3)
    if keep is not None:
        kept = along_normal(kept, positions, orientation)
        files = [files[i] for i in kept]
    geometry = SeriesGeometry(np.asarray([positions[i] for i in kept], float), orientation)
    problem = slice_position_problem(geometry.positions, geometry.orientation)
    if problem is None and geometry.tilt_degrees():
        problem = shear_problem(geometry)
    if problem:
        raise InputError(f"{where}: the DICOM series is unusable: {problem}")
    return files, geometry, note


SERIES_NOTE_KEY = "lumbarseg_series_note"  # metadata of an image read from part of a series: what was left out
REGULARIZED_NOTE_KEY = "lumbarseg_geometry_note"  # metadata of a regularized image: what was done, for messages
AIR_HU = -1024.0


def read_tilted_series(files, geometry: SeriesGeometry, where):
    """Read a gantry-tilted series slice by slice (in the order of ``files``) and regularize it
    (:func:`regularize_sheared_series`); the image carries a note saying so under REGULARIZED_NOTE_KEY."""
    import SimpleITK as sitk

    slices, spacing = [], None
    for name in files:
        try:
            image = sitk.ReadImage(str(name))
        except RuntimeError as exc:
            raise InputError(f"{where}: the DICOM file {Path(name).name} could not be read "
                             f"({str(exc).strip().splitlines()[-1][:200]}).") from None
        array = sitk.GetArrayFromImage(image)
        slices.append(array.reshape(array.shape[-2:]))
        spacing = spacing or image.GetSpacing()[:2]
    if len({s.shape for s in slices}) != 1:
        raise InputError(f"{where}: the DICOM series is unusable: its slices differ in size.")
    tilt = geometry.tilt_degrees()
    stack = np.stack(slices)
    # the wedges outside the sheared stack read as air - unless the stack itself holds none (stored values without
    # their rescale, 0..4095): then as its own darkest value, so the HU check that follows still sees that
    outside = AIR_HU if float(stack.min()) <= AIR_HU / 2 else float(stack.min())
    regular = regularize_sheared_series(stack, geometry, spacing, outside)
    size = "x".join(str(v) for v in regular.GetSize())
    regular.SetMetaData(REGULARIZED_NOTE_KEY, (
        f"The DICOM series was acquired with a gantry tilt of {tilt:.1f} degrees (its slices are sheared); it was "
        f"resampled onto a regular {size} grid (as 3D Slicer's acquisition-geometry regularization does) before "
        f"segmenting, and the label map lies on that grid."))
    return regular
