"""Whether each vertebra found lies on the spinal column: a "vertebra" off the column is never reported.

On a chest the networks can take a stretch of chest wall for lumbar vertebrae: thoracic-only phantoms drew
L1-L5 pieces 90-160 mm lateral and anterior to the spine, each on ribs and the soft tissue between them
(mean HU 103-226, so :func:`by_vertebra.drop_soft_tissue` kept most of them). The column is found in the CT itself, independently of the networks: over a slab of at least two vertebrae
around each piece, the densest structure about a vertebral body wide (the mean over the slab of how far each
voxel is above bone's HU, summed over BODY_MM) near the image's left-right centre, where a CT puts the
patient's midline (:func:`column_centre`). A piece whose centre lies more than :data:`OFF_COLUMN_MM` from it,
and as far from the line through the pieces that do lie on it (beside the pelvis or an enhanced aorta the
densest structure may not be the spine), is dropped, and the result says so (:func:`drop_off_column`).

Measured with the bundled model (``tools/measure_false_refusals.py``, docs/accuracy.md): the vertebrae found
on the four real CTs of ``../shared/data/real`` lie 4-29 mm from the column's centre; the chest-wall pieces
on thoracic-only phantoms 70-217 mm.

Pure numpy/scipy on (z, y, x) arrays in LPS orientation, as :mod:`pipeline` holds them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..constants import LABEL_NAMES
from . import morphology

# Bone is what is denser than this; the column is where most of it is over a slab's height, weighted by how
# much denser (up to BONE_CAP_HU above): a vertebral body is the widest dense structure of the axial plane.
BONE_HU = 100.0
BONE_CAP_HU = 900.0
# The dense mass is summed over a disc of this diameter, a vertebral body's width: it outweighs a thin table
# top, a rib crossing the slab or a vessel with contrast beside the spine.
BODY_MM = 30.0
# The column is looked for within this distance left and right of the image's centre.
CENTRAL_BAND_MM = 80.0
# The slab is the piece's own height, and at least this (two vertebrae, so that the discs do not decide).
MIN_SLAB_MM = 60.0
# A piece whose centre lies further than this from the column's centre (in-plane) is not a vertebra:
# a vertebral body and its arch reach about 40 mm from the body's centre.
OFF_COLUMN_MM = 50.0


def column_centre(hu_slab: np.ndarray, spacing_yx) -> tuple[float, float] | None:
    """(y, x) voxel position of the densest BODY_MM-wide structure of the slab ``hu_slab`` (z, y, x): the mean
    over the slab of how far each voxel is above BONE_HU (capped), summed over a square of BODY_MM; None
    when nothing in the slab is bone."""
    size = np.maximum(1, np.round(BODY_MM / np.asarray(spacing_yx, float)).astype(int))
    # a CT is centred on the patient, and the spine on the patient's midline: the arms, the hips and the
    # chest wall lie further out to the sides
    band = int(round(CENTRAL_BAND_MM / float(spacing_yx[1])))
    middle = np.shape(hu_slab)[2] // 2
    # only the band and the disc's reach beyond it decide (half of a 512-wide CT at 0.8 mm: 0.2 s of a study);
    # the whole slab only when the band holds no bone
    start = max(0, middle - band - int(size[1]) // 2 - 1)
    stop = middle + band + int(size[1]) // 2 + 2
    for lo, hi in ((start, stop), (0, None)):
        excess = np.clip(np.asarray(hu_slab[:, :, lo:hi], np.float32) - BONE_HU, 0.0, BONE_CAP_HU).mean(axis=0)
        if excess.any():
            break
    else:
        return None
    mass = ndimage.uniform_filter(excess, size=tuple(size), mode="constant")
    mass[:, :max(0, middle - band - lo)] = 0.0
    mass[:, max(0, middle + band + 1 - lo):] = 0.0
    y, x = np.unravel_index(int(np.argmax(mass)), mass.shape)
    return float(y), float(x + lo)


def distances_from_column(labels: np.ndarray, hu: np.ndarray, spacing_zyx, pieces=None) -> dict[int, float | None]:
    """Label -> in-plane distance (mm) of the piece's centre from the column's centre over the piece's slab
    (None when the slab holds no bone: the image cannot tell, and the piece is kept). ``pieces``: those of
    :func:`_pieces`, when already known."""
    spacing_zyx = np.asarray(spacing_zyx, float)
    out = {}
    for label, (region, centre) in (pieces or _pieces(labels)).items():
        half = max(region[0].stop - region[0].start, MIN_SLAB_MM / spacing_zyx[0]) / 2.0
        slab = slice(max(0, int(round(centre[0] - half))), min(labels.shape[0], int(round(centre[0] + half)) + 1))
        point = column_centre(np.asarray(hu[slab]), spacing_zyx[1:])
        out[label] = None if point is None else float(np.hypot(*((np.asarray(point) - centre[1:]) * spacing_zyx[1:])))
    return out


def _pieces(labels: np.ndarray) -> dict[int, tuple]:
    """Label -> (its box, its centre (z, y, x) in voxels): one find_objects pass, then per-box work."""
    return {lab: (box, morphology.centre_of(labels, box, lab)) for lab, box in morphology.label_boxes(labels).items()}


def off_the_line(centres: dict[int, np.ndarray], anchors: list[int]) -> dict[int, float]:
    """Label -> in-plane distance (mm) of each centre from the line through the ``anchors``' centres (y and x
    fitted as straight lines of z; a constant through one anchor); empty without anchors."""
    if not anchors:
        return {}
    pts = np.array([centres[a] for a in anchors])
    if len(anchors) == 1 or np.ptp(pts[:, 0]) == 0:
        fit = [np.poly1d([float(pts[:, k].mean())]) for k in (1, 2)]
    else:
        fit = [np.poly1d(np.polyfit(pts[:, 0], pts[:, k], 1)) for k in (1, 2)]
    return {lab: float(np.hypot(c[1] - fit[0](c[0]), c[2] - fit[1](c[0]))) for lab, c in centres.items()}


def drop_off_column(labels: np.ndarray, hu: np.ndarray, spacing_zyx, messages: list[str]) -> np.ndarray:
    """``labels`` without the pieces off the spinal column; each named. A piece is off it when its centre
    lies more than OFF_COLUMN_MM from the column's centre at its height (:func:`distances_from_column`) and
    as far from the line through the pieces that lie on it: next to the pelvis or a dense vessel the densest
    structure may not be the spine, but the vertebrae found on it still line up with the others."""
    pieces = _pieces(labels)
    distances = distances_from_column(labels, hu, spacing_zyx, pieces)
    far = {lab for lab, d in distances.items() if d is not None and d > OFF_COLUMN_MM}
    if not far:
        return labels
    centres = {lab: centre * np.asarray(spacing_zyx, float) for lab, (_, centre) in pieces.items()}  # mm
    from_line = off_the_line(centres, [lab for lab in distances if lab not in far])
    off = {lab: distances[lab] for lab in far if from_line.get(lab, np.inf) > OFF_COLUMN_MM}
    if not off:
        return labels
    messages.append("Not reported, as they lie off the spinal column (a vertebra's centre lies within "
                    f"{OFF_COLUMN_MM:g} mm of the column of bone at its height, or of the line through the "
                    "vertebrae on it): " + ", ".join(f"{LABEL_NAMES[lab]} ({d:.0f} mm off)" for lab, d in sorted(off.items()))
                    + ". The segmentation took something else (ribs, the chest wall) for a vertebra there.")
    out = labels.copy()
    out[np.isin(labels, list(off))] = 0
    return out
