"""Checks on an input before it is read (what kind of file it is) and after (whether its grid is one the
pipeline can keep), each raising :class:`errors.InputError` with what was wrong and what is accepted.

* A named pipe (FIFO), a socket or a device given as the input would block a reader forever (a FIFO waits
  for a writer) or read endless data: it is refused before anything opens it.
* A direction matrix whose axes are not perpendicular (a sheared grid, possible in NRRD and MetaImage
  headers) cannot be kept: the canonical reorientation and NIfTI output both coerce it to an orthogonal
  one, so the label map would not overlay the CT. It is refused, naming the angle between the axes.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

# Axes whose cosine deviates from 0 by more than this (0.06 degrees) are not perpendicular; files written by
# ITK, Slicer and scanners stay below 1e-5.
ORTHOGONALITY_TOLERANCE = 1e-3


def check_input_kind(path) -> None:
    """Refuse a named pipe, socket or device as an input (a regular file or a folder is accepted)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing or unreadable: the reader's own message names it
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    for test, kind in kinds:
        if test(mode):
            raise InputError(f"{path} is {kind}, not a file: reading it could block or never end. Give a CT "
                             f"file (NIfTI, NRRD, MetaImage) or a DICOM folder; write a pipe's data to a file first.")


def direction_problem(direction) -> str | None:
    """Why the 3x3 direction matrix (row-major, columns = axes) is not an orthogonal one; None when it is."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(matrix)):
        return "it holds values that are not numbers"
    norms = np.linalg.norm(matrix, axis=0)
    if np.any(norms < 1e-6):
        return "one of its axes has zero length"
    unit = matrix / norms
    worst = None
    for a, b in ((0, 1), (0, 2), (1, 2)):
        cosine = float(unit[:, a] @ unit[:, b])
        if abs(cosine) > ORTHOGONALITY_TOLERANCE and (worst is None or abs(cosine) > abs(worst[2])):
            worst = (a, b, cosine)
    if worst is None:
        return None
    a, b, cosine = worst
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cosine))))
    return (f"its axes are not orthogonal (voxel axes {'ijk'[a]} and {'ijk'[b]} meet at {angle:.1f} degrees instead "
            f"of 90: a sheared grid)")


def check_orthogonal_direction(image: sitk.Image, name: str = "The image") -> None:
    """Refuse an image whose direction matrix is not orthogonal (see the module docstring)."""
    if image.GetDimension() != 3:
        return
    problem = direction_problem(image.GetDirection())
    if problem:
        raise InputError(f"{name}: the direction matrix in its header is not orthogonal - {problem}. LumbarSeg "
                         f"keeps results on the CT's own grid and cannot keep a sheared one. Resample the CT onto a "
                         f"regular grid first (e.g. 3D Slicer: Resample Scalar/Vector/DWI Volume, or harden the "
                         f"transform), or correct the header's space directions.")
