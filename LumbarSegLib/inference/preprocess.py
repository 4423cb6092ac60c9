"""Geometry and intensity preprocessing shared by inference and training (one code path for both).

Conventions: images are SimpleITK images; numpy arrays from them are indexed (z, y, x); voxel boxes are
(lo, hi) index triples in sitk (x, y, z) order with ``hi`` exclusive. Internally every volume is
reoriented to LPS (x -> patient left, y -> posterior, z -> superior), so the networks always see the
same anatomy in the same array direction whatever the file header said.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

CANONICAL_ORIENTATION = "LPS"
AIR_HU = -1024.0


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Permute/flip axes to LPS. Exact (no interpolation); oblique directions keep their obliqueness."""
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def mirrored_head_to_feet(canonical: sitk.Image) -> sitk.Image:
    """``canonical`` (LPS-aligned) with its voxels mirrored along z and its header kept: the CT a converter that
    reversed the slice order leaves (what the orientation checks must catch, and the finder's turned-over read)."""
    turned = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayViewFromImage(canonical)[::-1]))
    turned.CopyInformation(canonical)
    return turned


def apply_window(hu: np.ndarray, level: float = 400.0, width: float = 1800.0) -> np.ndarray:
    """Bone window (paper: level 400 / width 1800 HU) scaled to [0, 1] as float32."""
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / width, 0.0, 1.0)


def box_grid(image: sitk.Image, lo, hi, size) -> sitk.Image:
    """An empty reference image of ``size`` voxels exactly covering the index box [lo, hi) of ``image``.

    The box's outer faces (index lo - 0.5 and hi - 0.5) coincide with the reference grid's outer faces, so
    resampling to it and trilinear interpolation back with ``align_corners=False`` are consistent.
    """
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    size = np.asarray(size, dtype=int)
    spacing = np.asarray(image.GetSpacing())
    new_spacing = (hi - lo) * spacing / size
    first_center_index = lo - 0.5 + 0.5 * new_spacing / spacing
    origin = image.TransformContinuousIndexToPhysicalPoint(first_center_index.tolist())
    ref = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    ref.SetSpacing(new_spacing.tolist())
    ref.SetOrigin(origin)
    ref.SetDirection(image.GetDirection())
    return ref


def resample_box(image: sitk.Image, lo, hi, size, interpolator=sitk.sitkLinear,
                 default_value: float = AIR_HU, antialias: bool = True) -> np.ndarray:
    """Resample the index box [lo, hi) of ``image`` to ``size`` voxels; returns a float32 (z, y, x) array.

    Downsampling first averages integer blocks (BinShrink) so noise does not alias into the small grid.
    """
    lo = np.maximum(np.floor(lo).astype(int), 0)
    hi = np.minimum(np.ceil(hi).astype(int), image.GetSize())
    roi = sitk.RegionOfInterest(image, (hi - lo).tolist(), lo.tolist())
    if interpolator != sitk.sitkNearestNeighbor:
        roi = sitk.Cast(roi, sitk.sitkFloat32)
    if antialias and interpolator != sitk.sitkNearestNeighbor:
        shrink = np.maximum(np.floor((hi - lo) / np.asarray(size)).astype(int), 1)
        if shrink.max() > 1:
            roi = sitk.BinShrink(roi, shrink.tolist())
    ref = box_grid(image, lo, hi, size)
    out = sitk.Resample(roi, ref, sitk.Transform(), interpolator, default_value)
    return sitk.GetArrayFromImage(out).astype(np.float32, copy=False)


def whole_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(3, dtype=int), np.asarray(image.GetSize(), dtype=int)


def localizer_input(canonical_ct: sitk.Image, config) -> np.ndarray:
    """The whole canonical CT on the localizer grid, bone-windowed to [0, 1]: (z, y, x) float32."""
    lo, hi = whole_box(canonical_ct)
    hu = resample_box(canonical_ct, lo, hi, config.localizer_input)
    return apply_window(hu, config.window_level, config.window_width)


def crop_input(canonical_ct: sitk.Image, lo, hi, config) -> np.ndarray:
    """The crop box of the canonical CT on the XUNet grid, bone-windowed to [0, 1]: (z, y, x) float32."""
    hu = resample_box(canonical_ct, lo, hi, config.xunet_input)
    return apply_window(hu, config.window_level, config.window_width)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (the mask itself when it has one or none)."""
    from scipy import ndimage

    components, n = ndimage.label(mask)
    if n <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())[1:]
    return components == (int(np.argmax(sizes)) + 1)


def heatmap_box(heatmap: np.ndarray, image_size, threshold: float = 0.3, grow: float = 0.1):
    """Paper's crop rule on a heatmap living on the whole-image grid.

    Threshold at ``threshold`` x max, keep the largest connected bright region, take its bounding box,
    grow it by ``grow`` x image size per axis, clip to the image. Returns (lo, hi) voxel indices of the
    full-resolution image in (x, y, z) order, or None when the heatmap has no bright region.
    """
    peak = float(heatmap.max())
    if not np.isfinite(peak) or peak <= 0:
        return None
    largest = largest_component(heatmap >= threshold * peak)
    if not largest.any():
        return None
    zs, ys, xs = (np.flatnonzero(largest.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3))
    grid = np.asarray(heatmap.shape[::-1], dtype=float)  # (x, y, z) grid size of the heatmap
    image_size = np.asarray(image_size, dtype=float)
    scale = image_size / grid
    lo = np.array([xs[0], ys[0], zs[0]], dtype=float) * scale
    hi = (np.array([xs[-1], ys[-1], zs[-1]], dtype=float) + 1) * scale
    margin = grow * image_size
    lo = np.clip(np.floor(lo - margin), 0, image_size).astype(int)
    hi = np.clip(np.ceil(hi + margin), 0, image_size).astype(int)
    return lo, hi


def probabilities_to_labels(probs: torch.Tensor, box_size_xyz) -> np.ndarray:
    """Argmax of class probabilities (C, z, y, x) trilinearly resampled from the network grid to the box.

    Interpolating probabilities (not label integers) gives smooth, sub-voxel-accurate boundaries. Classes
    are resampled one at a time with a running maximum, so memory stays at a few box-sized arrays.
    """
    size_zyx = tuple(int(s) for s in np.asarray(box_size_xyz)[::-1])
    best = labels = None
    for c in range(probs.shape[0]):
        p = F.interpolate(probs[c][None, None], size=size_zyx, mode="trilinear", align_corners=False)[0, 0]
        if best is None:
            best, labels = p, torch.zeros(size_zyx, dtype=torch.uint8)
        else:
            better = p > best
            best = torch.where(better, p, best)
            labels[better] = c
    return labels.numpy()
