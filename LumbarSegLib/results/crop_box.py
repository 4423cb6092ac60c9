"""``report.json``'s crop box: in LPS millimetres, in voxel indices on the input file's own axes, and in the
internal grid's indices, each named for what it is.

The engine works on the CT reoriented to LPS axes (:func:`preprocess.to_canonical`, an exact permutation and
flip of the file's axes); its box indices refer to that grid. A reader opening the file sees its own axes,
so ``index_lo_xyz`` / ``index_hi_xyz`` are given on those (i, j, k as stored; for a DICOM series, as its
slices are stacked), and the internal ones are kept as ``canonical_index_lo_xyz`` / ``canonical_index_hi_xyz``.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

FILE_INDEX_SPACE = "the input's own voxel axes (i, j, k as stored in the file or as its DICOM slices stack), hi exclusive"
CANONICAL_INDEX_SPACE = "LumbarSeg's internal grid: the input's axes permuted and flipped to LPS, hi exclusive"


def _axis_map(image: sitk.Image) -> list[tuple[int, bool]]:
    """For each canonical (LPS-reoriented) axis: (the file's axis it is, whether it runs the other way)."""
    from ..inference.preprocess import to_canonical

    probe = sitk.GetImageFromArray(np.arange(8, dtype=np.uint8).reshape(2, 2, 2))  # value = x + 2y + 4z
    probe.SetDirection(image.GetDirection())
    canonical = sitk.GetArrayFromImage(to_canonical(probe))  # (z, y, x) of the canonical grid
    origin = int(canonical[0, 0, 0])
    out = []
    for axis in range(3):
        step = [0, 0, 0]
        step[axis] = 1
        delta = int(canonical[tuple(step[::-1])]) - origin
        file_axis = {1: 0, 2: 1, 4: 2}[abs(delta)]
        out.append((file_axis, delta < 0))
    return out


def file_index_box(image: sitk.Image, lo, hi) -> tuple[list[int], list[int]]:
    """The canonical voxel box [lo, hi) as a box [lo, hi) of ``image``'s own voxel axes (x, y, z order)."""
    size = image.GetSize()
    file_lo, file_hi = [0, 0, 0], [0, 0, 0]
    for c, (axis, flipped) in enumerate(_axis_map(image)):
        a, b = int(lo[c]), int(hi[c])
        file_lo[axis], file_hi[axis] = (size[axis] - b, size[axis] - a) if flipped else (a, b)
    return file_lo, file_hi


def crop_box_report(image: sitk.Image, box_index, box_lps) -> dict | None:
    """The ``crop_box`` entry of ``report.json`` for the engine's box (None when there is none)."""
    if box_index is None:
        return None
    lo, hi = file_index_box(image, *box_index)
    return {"index_lo_xyz": lo, "index_hi_xyz": hi, "index_space": FILE_INDEX_SPACE,
            "canonical_index_lo_xyz": list(box_index[0]), "canonical_index_hi_xyz": list(box_index[1]),
            "canonical_index_space": CANONICAL_INDEX_SPACE,
            "lps_min_mm": list(box_lps[0]) if box_lps else None,
            "lps_max_mm": list(box_lps[1]) if box_lps else None}
