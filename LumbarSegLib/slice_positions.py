"""Whether the slices of a DICOM series stack into one volume with a true geometry.

GDCM sorts a series by Image Position (Patient) along the slice normal. When it cannot - two instances at
the same position (an image exported twice), or an instance without a position - it silently falls back
to the order of the file names, and ITK stacks the slices in that order with a made-up slice spacing
(1 mm): a scrambled CT that still segments, with wrong volumes and heights. A missing slice gives a gap
that ITK spreads evenly over the whole volume. Both are checked here on the headers, before the voxels
are read, and refused with a message that names the problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

DUPLICATE_MM = 0.01  # two slices closer than this lie at the same position
GAP_TOLERANCE = 0.1  # a gap this much (relative) off the typical one means a missing slice or mixed stacks


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
    if np.any(np.abs(gaps - typical) > GAP_TOLERANCE * typical + DUPLICATE_MM):
        return (f"its slice spacing is not uniform (gaps of {gaps.min():.3g} to {gaps.max():.3g} mm, mostly "
                f"{typical:.3g} mm): slices are missing, or it mixes stacks. A volume made from it would have a "
                f"wrong geometry. Export the complete series again.")
    return None


def check_series_files(files, where) -> None:
    """Read the positions of a series' files (headers only) and raise :class:`InputError` for a series that
    does not stack into one regular volume (:func:`slice_position_problem`)."""
    import pydicom

    if len(files) < 2:  # a single file: one slice, or an enhanced multi-frame image with its own geometry
        return
    positions, orientation = [], None
    for name in files:
        ds = pydicom.dcmread(name, stop_before_pixels=True,
                             specific_tags=["ImagePositionPatient", "ImageOrientationPatient"])
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise InputError(f"{where}: the DICOM file {Path(name).name} has no Image Position/Orientation "
                             f"(Patient), so the slices cannot be put in order. Export the series again, or "
                             f"convert it to NIfTI.")
        positions.append([float(v) for v in ds.ImagePositionPatient])
        if orientation is None:
            orientation = [float(v) for v in ds.ImageOrientationPatient]
    problem = slice_position_problem(positions, orientation)
    if problem:
        raise InputError(f"{where}: the DICOM series is unusable: {problem}")
