"""The finder at inference (issue 23; trained by ``training/finder_train.py``, not yet called by the pipeline):
the XUNet topology on a fixed 2 mm grid, slid along the spine instead of one crop stretched to 64 x 64 x 128.

* :func:`strip_grid` - an LPS-aligned strip of the fixed grid around the column: the window's width across
  it, the column's whole height (plus a margin for T12 and the sacrum) along it;
* :func:`strip_probabilities` - the network on overlapping windows along the strip, blended with weights that
  fall off towards each window's top and bottom (a vertebra cut by a window's edge is judged by the window
  that holds it whole);
* :func:`centre_peaks` - the centre channel's local maxima: one per vertebra, whatever its level; the
  instances that the counting (:mod:`.naming`) names.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

# How far the strip reaches beyond the column's box at each end: T12 above L1 and the sacrum below L5 anchor
# the count, and their centres lie a gap (26-37 mm) beyond.
STRIP_MARGIN_MM = 40.0
# Windows overlap by this share of their height.
OVERLAP = 1.0 / 3.0
# A peak of the centre channel: a local maximum of at least PEAK_MIN, no other within PEAK_APART_MM (half the
# shortest gap between vertebral centres, 22 mm, and some).
PEAK_MIN = 0.4
PEAK_APART_MM = 13.0


def strip_grid(centre_mm, z_range_mm: tuple[float, float], crop_zyx, spacing_mm: float) -> sitk.Image:
    """An empty LPS-aligned reference image: ``crop_zyx[1:]`` voxels across, centred on ``centre_mm`` (x, y
    LPS), covering ``z_range_mm`` (low, high) plus :data:`STRIP_MARGIN_MM` at each end, at least one window."""
    lo, hi = min(z_range_mm) - STRIP_MARGIN_MM, max(z_range_mm) + STRIP_MARGIN_MM
    nz = max(int(crop_zyx[0]), int(np.ceil((hi - lo) / spacing_mm)) + 1)
    size_xyz = [int(crop_zyx[2]), int(crop_zyx[1]), nz]
    ref = sitk.Image(size_xyz, sitk.sitkUInt8)
    ref.SetSpacing([float(spacing_mm)] * 3)
    mid_z = (lo + hi) / 2
    origin = [float(centre_mm[0]) - (size_xyz[0] - 1) / 2 * spacing_mm,
              float(centre_mm[1]) - (size_xyz[1] - 1) / 2 * spacing_mm, mid_z - (nz - 1) / 2 * spacing_mm]
    ref.SetOrigin(origin)
    return ref


def window_starts(n: int, window: int, overlap: float = OVERLAP) -> list[int]:
    """First slices of windows of ``window`` slices covering ``0 .. n-1`` with about ``overlap`` between
    neighbours; the last one ends at ``n`` (``n >= window``)."""
    if n <= window:
        return [0]
    stride = max(1, int(round(window * (1.0 - overlap))))
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def _ramp(window: int) -> np.ndarray:
    """Blending weights along a window: 1 in the middle half, falling linearly to 0.1 at its ends."""
    pos = np.abs(np.arange(window) - (window - 1) / 2) / ((window - 1) / 2 or 1)  # 0 middle .. 1 ends
    return np.clip(1.0 - (pos - 0.5) * 1.8, 0.1, 1.0).astype(np.float32)


@torch.inference_mode()
def strip_probabilities(net, strip_input: np.ndarray, window: int, n_classes: int, batch: int = 2) -> np.ndarray:
    """(n_classes + 1, Z, Y, X) float32: softmax over the classes and the sigmoid centre channel of ``net``
    on windows of ``window`` slices along ``strip_input`` (Z, Y, X; the network's input scale), blended."""
    z = strip_input.shape[0]
    starts = window_starts(z, window)
    ramp = _ramp(window)
    acc = np.zeros((n_classes + 1,) + strip_input.shape, np.float32)
    weight = np.zeros(z, np.float32)
    net.eval()
    for i in range(0, len(starts), batch):
        part = starts[i:i + batch]
        x = torch.from_numpy(np.stack([strip_input[s:s + window] for s in part]))[:, None]
        out = net(x.contiguous(memory_format=torch.channels_last_3d)).float()
        probs = torch.cat([torch.softmax(out[:, :n_classes], dim=1), torch.sigmoid(out[:, n_classes:])], dim=1)
        for s, p in zip(part, probs.numpy()):
            acc[:, s:s + window] += p * ramp[None, :, None, None]
            weight[s:s + window] += ramp
    return acc / weight[None, :, None, None]


def centre_peaks(heat: np.ndarray, spacing_mm: float, minimum: float = PEAK_MIN,
                 apart_mm: float = PEAK_APART_MM) -> list[tuple[np.ndarray, float]]:
    """(centre in voxels (z, y, x), peak value) of each local maximum of ``heat`` of at least ``minimum`` with
    no higher one within ``apart_mm``; top (largest z) first."""
    size = max(3, 2 * int(np.ceil(apart_mm / spacing_mm)) + 1)
    local = (heat == ndimage.maximum_filter(heat, size=size, mode="constant")) & (heat >= minimum)
    peaks = [(np.asarray(p, float), float(heat[tuple(p)])) for p in np.argwhere(local)]
    kept: list[tuple[np.ndarray, float]] = []
    for p, v in sorted(peaks, key=lambda pv: -pv[1]):  # plateaus give several equal maxima: keep one
        if all(np.linalg.norm((p - q) * spacing_mm) > apart_mm for q, _ in kept):
            kept.append((p, v))
    return sorted(kept, key=lambda pv: -pv[0][0])
