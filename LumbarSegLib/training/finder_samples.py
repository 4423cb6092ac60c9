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

On :data:`FOV_CUT_FRACTION` of windows the field of view is cut (:func:`cut_field_of_view`): most real spine CTs
are crops 80-110 mm wide around the column, with no rib tip, iliac wing or sacral ala in view, while the
phantoms and label-map CTs show the whole body. Held out, the finder trained without the cut read L1 as thoracic
and L5 as L3-L4 on such crops (it had the levels from the ribs and the pelvis, not from the vertebrae).
"""

from __future__ import annotations

import numpy as np

from ..inference.finder import FinderConfig
from ..inference.networks import CONTEXT_CLASSES
from ..inference.vertebra_stage import OUTSIDE_HU, crop_grid
from ..io.images import index_to_lps_matrix
from .augmentation import rotation_matrix
from .data import training_labels
from .vertebra_samples import KindPool, Source, reimage, resample_turned, vertebra_centres


GRID = FinderConfig()  # the window: crop_zyx voxels of spacing_mm (the attributes crop_grid reads)
SHIFT_MM = 60.0  # the window's centre lies this far at most above or below the chosen vertebra's (two levels)
INPLANE_JITTER_MM = 8.0
ROTATE_DEG = (10.0, 5.0, 5.0)  # about x (sagittal tilt), y, z
SCALE = (0.9, 1.1)
# The sacrum is no instance of the counting stage, but its first segment's centre is a landmark all the same: with it
# the heatmap marks every segment of the column in view, and the count's sacrum anchor (a caudal-looking peak right
# below L5, :mod:`..inference.peak_naming`) has a peak to find. Its centre is that of the sacrum's top SACRUM_TOP_MM
# (S1's body and alae, about one gap below L5's centre as a vertebra's would be), not the whole sacrum's (40-70 mm
# below L5: a count would take the gap for a missed vertebra). Until session 18 the centres came from
# vertebra_centres alone, which leaves the sacrum out, so no finder trained before then learned a sacral peak: on
# pelvic phantoms its centre channel stayed under 0.2 below L5 and the sacrum anchor never fired.
CENTRE_CODES = tuple(sorted(set(range(1, 27)) | {28}))
SACRUM_CODE = 26
SACRUM_TOP_MM = 30.0
# The field-of-view cut: the share of windows cut, the half-width kept left-right and the reach kept in front of
# and behind the window's middle (mm; the real crops in ../shared are 78-110 mm wide, the window 128 mm), and the
# share of cut windows whose top or bottom also ends within the window (a crop's end in the middle of a vertebra).
FOV_CUT_FRACTION = 0.5
FOV_HALF_WIDTH_MM = (35.0, 64.0)
FOV_REACH_MM = (40.0, 64.0)
FOV_END_FRACTION = 0.3


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


def sacrum_top_centre(labels) -> np.ndarray | None:
    """The centre (LPS mm) of the sacrum's top :data:`SACRUM_TOP_MM` (the most superior voxels of VerSe code
    :data:`SACRUM_CODE` in ``labels``, a SimpleITK image); None without a sacrum."""
    import SimpleITK as sitk

    idx = np.argwhere(sitk.GetArrayViewFromImage(labels) == SACRUM_CODE)[:, ::-1].astype(float)  # (x, y, z) indices
    if not len(idx):
        return None
    matrix = index_to_lps_matrix(labels)
    points = matrix[:3, 3] + idx @ matrix[:3, :3].T
    return points[points[:, 2] >= points[:, 2].max() - SACRUM_TOP_MM].mean(axis=0)


def column_centres(labels) -> dict[int, np.ndarray]:
    """VerSe code -> centre (LPS mm) of every segment of the column in ``labels`` that the centre channel marks:
    each vertebra's centroid (:func:`.vertebra_samples.vertebra_centres`) and the sacrum's top
    (:func:`sacrum_top_centre`)."""
    centres = {c: p for c, p in vertebra_centres(labels).items() if c in CENTRE_CODES}
    sacrum = sacrum_top_centre(labels)
    if sacrum is not None:
        centres[SACRUM_CODE] = sacrum
    return centres


class FinderSampler:
    """Draws finder windows from real and label-map sources with the weights given per kind."""

    def __init__(self, sources: list[Source], grid: FinderConfig = GRID, weights: dict[str, float] | None = None,
                 seed: int = 0):
        self.grid = grid
        self.rng = np.random.default_rng(seed)
        by_kind: dict[str, list[tuple[Source, dict[int, np.ndarray]]]] = {}
        for src in sources:
            centres = column_centres(src.labels)
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
        ct = reimage(ct, grid.spacing_mm, rng, info)
        if rng.random() < FOV_CUT_FRACTION:
            info["fov"] = cut_field_of_view(ct, classes, heat, grid.spacing_mm, rng)
        return ct, classes, heat, info


def cut_field_of_view(ct: np.ndarray, classes: np.ndarray, heat: np.ndarray, spacing_mm: float,
                      rng: np.random.Generator) -> dict:
    """Cut a window (z, y, x; in place) to a narrower scan's field of view, as the finder's strip shows one at
    inference (outside the scan: :data:`OUTSIDE_HU`, background, no centre): left-right to a random half-width,
    front and back to a random reach, and on :data:`FOV_END_FRACTION` of them the top or the bottom. Returns what
    was kept (voxels)."""
    nz, ny, nx = ct.shape
    keep = np.zeros(ct.shape, bool)
    mid_y, mid_x = (ny - 1) / 2, (nx - 1) / 2
    half = rng.uniform(*FOV_HALF_WIDTH_MM) / spacing_mm
    x0 = int(round(mid_x + rng.uniform(-4.0, 4.0) / spacing_mm - half))
    x1 = int(round(mid_x + rng.uniform(-4.0, 4.0) / spacing_mm + half)) + 1
    y0 = int(round(mid_y - rng.uniform(*FOV_REACH_MM) / spacing_mm))
    y1 = int(round(mid_y + rng.uniform(*FOV_REACH_MM) / spacing_mm)) + 1
    z0, z1 = 0, nz
    if rng.random() < FOV_END_FRACTION:
        end = int(rng.integers(nz // 6, nz // 3))
        z0, z1 = (end, nz) if rng.random() < 0.5 else (0, nz - end)
    keep[z0:z1, max(0, y0):y1, max(0, x0):x1] = True
    ct[~keep] = OUTSIDE_HU
    classes[~keep] = 0
    heat[~keep] = 0.0
    return {"z": (z0, z1), "y": (max(0, y0), min(ny, y1)), "x": (max(0, x0), min(nx, x1))}
