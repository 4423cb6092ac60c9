"""Training windows of the finder (issue 23): the XUNet on a fixed 2 mm grid that slides along the spine.

The bundled XUNet sees one crop stretched to 64 x 64 x 128 voxels, with a channel holding z, so "the top of the
crop is L1" is a shortcut it could learn. The finder sees the CT alone on a fixed grid (:data:`GRID`), in
windows placed at any height along the spine: a window may hold only thoracic vertebrae, only L3 to the
sacrum, L1-L2, ... so where a vertebra lies in the window says nothing about its level.

Each sample (:meth:`FinderSampler.draw`) is drawn from the sources of :mod:`.vertebra_samples` (the labelled
real CTs, and real label maps without CT whose CT is synthesised on the window): a window centred up to
:data:`SHIFT_MM` above or below a random vertebra's centre, turned and scaled about that point, re-imaged
with thick slices and intensity jitter as stage 3's crops are. Its targets:

* ``classes``: background, L1-L5, thoracic, caudal (:func:`data.training_labels`: the bone of unlabelled
  neighbours beyond the labelled vertebrae is :data:`data.IGNORE`, not taught as background);
* ``centres``: a Gaussian (the grid's ``sigma_mm``) at every labelled vertebra's centre whatever its level,
  the instances the counting stage names (:mod:`..inference.naming`).
"""

from __future__ import annotations

import numpy as np

from ..inference.finder import FinderConfig
from ..inference.networks import CONTEXT_CLASSES
from ..inference.vertebra_stage import crop_grid
from .augmentation import rotation_matrix
from .data import training_labels
from .vertebra_samples import KindPool, Source, reimage, resample_turned, vertebra_centres


GRID = FinderConfig()  # the window: crop_zyx voxels of spacing_mm (the attributes crop_grid reads)
SHIFT_MM = 60.0  # the window's centre lies this far at most above or below the chosen vertebra's (two levels)
INPLANE_JITTER_MM = 8.0
ROTATE_DEG = (10.0, 5.0, 5.0)  # about x (sagittal tilt), y, z
SCALE = (0.9, 1.1)
# The sacrum is no instance of the counting stage, but its centre is a landmark all the same: with it the
# heatmap marks every segment of the column in view.
CENTRE_CODES = tuple(sorted(set(range(1, 27)) | {28}))


def centre_heatmap(centres_vox: np.ndarray, shape, spacing_mm: float, sigma_mm: float) -> np.ndarray:
    """(z, y, x) float32: the maximum of Gaussians (peak 1) at ``centres_vox`` (N, 3; voxels, z y x)."""
    out = np.zeros(shape, np.float32)
    if len(centres_vox) == 0:
        return out
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    for c in np.asarray(centres_vox, np.float32):
        d2 = [((a - ci) * spacing_mm) ** 2 for a, ci in zip(axes, c)]
        g = np.exp(-(d2[0][:, None, None] + d2[1][None, :, None] + d2[2][None, None, :]) / (2 * sigma_mm ** 2))
        np.maximum(out, g.astype(np.float32), out=out)
    return out


class FinderSampler:
    """Draws finder windows from real and label-map sources with the weights given per kind."""

    def __init__(self, sources: list[Source], grid: FinderConfig = GRID, weights: dict[str, float] | None = None,
                 seed: int = 0):
        self.grid = grid
        self.rng = np.random.default_rng(seed)
        by_kind: dict[str, list[tuple[Source, dict[int, np.ndarray]]]] = {}
        for src in sources:
            centres = {c: p for c, p in vertebra_centres(src.labels).items() if c in CENTRE_CODES}
            if centres:
                by_kind.setdefault(src.kind, []).append((src, centres))
        self.pool = KindPool(by_kind, weights or {"real": 0.6, "labelmap": 0.4}, "spine")

    def counts(self) -> dict[str, int]:
        return self.pool.counts()

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """(ct HU (z, y, x) float32, classes (z, y, x) uint8 (data.IGNORE where no loss is due), centre heatmap
        (z, y, x) float32, info)."""
        rng, grid = self.rng, self.grid
        src, centres = self.pool.pick(rng)
        codes = sorted(centres)
        anchor = np.asarray(centres[codes[int(rng.integers(len(codes)))]], float)
        # LPS: x, y in-plane, z along the spine
        middle = anchor + [rng.uniform(-INPLANE_JITTER_MM, INPLANE_JITTER_MM),
                           rng.uniform(-INPLANE_JITTER_MM, INPLANE_JITTER_MM), rng.uniform(-SHIFT_MM, SHIFT_MM)]
        rot = rotation_matrix(np.deg2rad([rng.uniform(-a, a) for a in ROTATE_DEG]))
        scale = rng.uniform(*SCALE)
        ref = crop_grid(middle, grid)
        ct, codes_arr = resample_turned(src, ref, middle, rot, scale, grid.spacing_mm, rng)  # about the middle
        classes = training_labels(codes_arr, ct, (grid.spacing_mm,) * 3, CONTEXT_CLASSES)
        # Each source centre q sits at p = m + (scale R)^-1 (q - m) in the window; as voxels (z, y, x).
        inverse = np.linalg.inv(rot * scale)
        origin = np.asarray(ref.GetOrigin(), float)
        vox = [((middle + inverse @ (np.asarray(centres[c]) - middle)) - origin)[::-1] / grid.spacing_mm
               for c in codes]
        heat = centre_heatmap(np.array(vox), grid.crop_zyx, grid.spacing_mm, grid.sigma_mm)
        info = {"source": src.name, "levels": [int(c) for c in np.unique(codes_arr) if c]}
        return reimage(ct, grid.spacing_mm, rng, info), classes, heat, info
