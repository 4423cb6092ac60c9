"""Closing and hole filling of one vertebra on a bounded grid, so fine spacing cannot make it explode.

A closing of ``CLOSING_MM`` (2 mm) is a ball of 2 mm / spacing voxels: 5 voxels across at 1 mm, 15 at
0.3 mm, 31 at 0.13 mm, and a binary closing costs (box voxels) x (ball voxels) - 123 s per scan at 0.3 mm
where 1 mm takes 0.3 s, minutes at 0.13 mm, with no chance to cancel in between. Here the closing runs on
the vertebra's own box, block-averaged to a grid coarse enough that the ball is at most
``2 * MAX_RADIUS_VOXELS + 1`` voxels per axis; only the voxels the closing *adds* there (pits and gaps) are
brought back to the fine grid, so the vertebra's own outline keeps its full resolution. Holes are then
filled on the fine grid by labelling the background (linear in the box size). ``check()`` (the
pipeline's cancellation check) is called between the steps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

MAX_RADIUS_VOXELS = 3  # the closing ball is at most 7 voxels per axis, whatever the spacing


def label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Each non-zero value of ``labels`` -> its bounding box. One ``find_objects`` pass: on a whole
    512 x 512 x 300 CT, ``np.unique`` takes about a second and scipy's labelled statistics (``mean``,
    ``center_of_mass`` with an index) several each, where this and per-box work take a fraction of that.
    ``find_objects`` itself still takes 0.28 s over a whole CT on a 2.1 GHz core, and a study asks for the boxes
    five times: it runs on the block of the image that holds labels, found by maxima along the axes (0.04 s)."""
    z = np.flatnonzero(labels.max(axis=(1, 2))) if labels.size else np.zeros(0, int)
    if z.size == 0:
        return {}
    block = labels[z[0]:z[-1] + 1]
    y, x = np.flatnonzero(block.max(axis=(0, 2))), np.flatnonzero(block.max(axis=(0, 1)))
    offset = (int(z[0]), int(y[0]), int(x[0]))
    block = block[:, y[0]:y[-1] + 1, x[0]:x[-1] + 1]
    return {i + 1: tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, offset))
            for i, box in enumerate(ndimage.find_objects(block)) if box is not None}


def ends_reached(box: tuple[slice, ...], shape) -> list[tuple[int, str]]:
    """The image's ends that ``box`` (slices of an array of ``shape``) reaches: (axis, "lower" | "upper") for each
    first or last index it takes in. A vertebra whose box reaches one may be cut by the field of view: the one
    measure of that which the pipeline's note, the plausibility warnings and the trabecular ROIs read."""
    return [(axis, side) for axis, (sl, n) in enumerate(zip(box, shape))
            for side, reached in (("lower", sl.start == 0), ("upper", sl.stop == n)) if reached]


def centre_of(labels: np.ndarray, box: tuple[slice, ...], label: int) -> np.ndarray:
    """The voxel-index centroid (z, y, x) of ``label``, searched within its ``box``."""
    return np.argwhere(labels[box] == label).mean(axis=0) + [s.start for s in box]


def morphology_grid(spacing_zyx, closing_mm: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(block factor, ball radius) per (z, y, x) axis: the closing runs on blocks of ``factor`` voxels with
    an ellipsoid of ``radius`` blocks (1..MAX_RADIUS_VOXELS), close to ``closing_mm`` in size."""
    factors, radii = [], []
    for s in spacing_zyx:
        s = float(s)
        factor = max(1, math.ceil(closing_mm / (MAX_RADIUS_VOXELS * s)))
        radius = int(min(max(round(closing_mm / (factor * s)), 1), MAX_RADIUS_VOXELS))
        factors.append(factor)
        radii.append(radius)
    return tuple(factors), tuple(radii)


def _ball(radius) -> np.ndarray:
    zz, yy, xx = np.ogrid[tuple(slice(-k, k + 1) for k in radius)]
    return (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0


def _block_mean(mask: np.ndarray, factor) -> np.ndarray:
    """The fraction of each ``factor`` block that is inside ``mask`` (the box padded with background)."""
    padded_shape = [math.ceil(n / f) * f for n, f in zip(mask.shape, factor)]
    padded = np.zeros(padded_shape, np.float32)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    (nz, ny, nx), (fz, fy, fx) = padded.shape, factor
    return padded.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx).mean(axis=(1, 3, 5))


def fill_enclosed_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not touch the box's faces filled (face-connected
    background, as scipy's binary_fill_holes) - by labelling, in one pass."""
    background, n = ndimage.label(~mask)
    if n == 0:
        return mask.copy()
    faces = np.concatenate([background[0].ravel(), background[-1].ravel(), background[:, 0].ravel(),
                            background[:, -1].ravel(), background[:, :, 0].ravel(), background[:, :, -1].ravel()])
    outside = np.zeros(n + 1, bool)
    outside[np.unique(faces)] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[background]


def close_and_fill(mask: np.ndarray, spacing_zyx, closing_mm: float, check=None) -> np.ndarray:
    """``mask`` (a vertebra in its box, with room around it) closed by about ``closing_mm`` and with its
    enclosed holes filled; a superset of ``mask`` of the same shape."""
    factor, radius = morphology_grid(spacing_zyx, closing_mm)
    coarse = _block_mean(mask, factor) >= 0.5 if max(factor) > 1 else mask
    pad = [(k, k) for k in radius]  # room for the dilation, so the closing is not clipped by the box
    padded = np.pad(coarse, pad)
    closed = ndimage.binary_closing(padded, structure=_ball(radius), border_value=0)
    added = closed[tuple(slice(k, k + n) for k, n in zip(radius, coarse.shape))] & ~coarse
    if check is not None:
        check()
    if max(factor) > 1:
        for axis, f in enumerate(factor):
            added = np.repeat(added, f, axis=axis)
        added = added[tuple(slice(0, n) for n in mask.shape)]
    return fill_enclosed_holes(mask | added)
