"""Metal (pedicle screws, rods, vertebroplasty cement) in or near a trabecular ROI, decided by size and value.

A CT voxel above :data:`METAL_HU` may be metal, but dense cortex and sclerotic endplates reach about
2100 HU too, in a handful of voxels (the real VerSe CT sub-verse005 has four, 2047-2119 HU, and no implant).
Screws and cement are hundreds of voxels, far denser, with streaks. So the voxels above :data:`METAL_HU`
are grouped into connected pieces, and a piece is metal when it holds :data:`METAL_MIN_MM3` or more, or
when any of its voxels reaches :data:`METAL_CERTAIN_HU`, which no bone does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

METAL_HU = 2000.0  # above this a voxel may be metal; dense cortex and sclerotic endplates reach about 2100 HU
METAL_CERTAIN_HU = 3000.0  # no bone reaches this: metal at any size
METAL_MIN_MM3 = 30.0  # a piece above METAL_HU this large is metal or cement (a pedicle screw: about 1000 mm3)


def find_metal(ct_hu: np.ndarray, where: np.ndarray, spacing_zyx) -> str | None:
    """What says there is metal (screws, cement) among the voxels ``where`` of ``ct_hu``, or None.

    Voxels above :data:`METAL_HU` are grouped into connected pieces; a piece is metal when it holds
    :data:`METAL_MIN_MM3` or more, or any voxel reaches :data:`METAL_CERTAIN_HU`. A handful of voxels of
    dense cortex or a sclerotic endplate (up to about 2100 HU) is bone; a screw or cement is hundreds of
    voxels, far denser."""
    hot = np.asarray(where, bool) & (ct_hu > METAL_HU)
    if not hot.any():
        return None
    voxel_mm3 = float(np.prod(spacing_zyx))
    pieces, n = ndimage.label(hot, structure=np.ones((3, 3, 3), bool))
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(hot, pieces, index) * voxel_mm3
    peaks = ndimage.maximum(ct_hu, pieces, index)
    metal = (sizes >= METAL_MIN_MM3) | (peaks >= METAL_CERTAIN_HU)
    if not metal.any():
        return None
    count = int(sum(np.count_nonzero(pieces == i) for i in index[metal]))
    return (f"{count} voxels above {METAL_HU:g} HU in {int(metal.sum())} piece(s) of up to "
            f"{float(sizes[metal].max()):.0f} mm3 (max {float(peaks[metal].max()):.0f} HU)")
