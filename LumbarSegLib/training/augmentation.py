"""On-the-fly augmentation of one sample on the small network grids: rotation, scaling, shift,
left-right flip, mild elastic deformation; intensity gamma/scale/shift, blur and noise.

No flip along y or z: the z order defines L1..L5.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def rotation_matrix(angles) -> np.ndarray:
    """Rotation by ``angles`` (radians) about x, then y, then z."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_grid(shape_zyx, rng: np.random.Generator, rotate_deg: float = 10.0, scale=(0.9, 1.1),
                shift: float = 0.04, flip_x: bool = True, elastic: float = 0.0) -> torch.Tensor:
    """A sampling grid (1, D, H, W, 3) for ``grid_sample``: rotation, scaling, shift, x flip, elastic.

    The rotation acts in voxel units (crops are roughly isotropic in mm), so anatomy is not sheared.
    """
    d, h, w = shape_zyx
    half = np.array([w, h, d], float) / 2.0  # normalised -> voxel units, (x, y, z)
    rot = rotation_matrix(np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, 3)))
    s = rng.uniform(*scale) * rng.uniform(0.97, 1.03, 3)
    a_vox = rot @ np.diag(1.0 / s)  # output voxel offset -> input voxel offset
    a = np.diag(1.0 / half) @ a_vox @ np.diag(half)
    if flip_x and rng.random() < 0.5:
        a[:, 0] *= -1.0
    t = rng.uniform(-shift, shift, 3)
    theta = torch.tensor(np.concatenate([a, t[:, None]], axis=1)[None], dtype=torch.float32)
    grid = F.affine_grid(theta, (1, 1, d, h, w), align_corners=False)
    if elastic > 0:
        coarse = torch.from_numpy(rng.standard_normal((1, 3, 4, 4, 4)).astype(np.float32)) * elastic
        disp = F.interpolate(coarse, size=(d, h, w), mode="trilinear", align_corners=False)
        grid = grid + disp.permute(0, 2, 3, 4, 1)
    return grid


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = 2 * r + 1
        pad = [0] * 6
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = r
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x


def augment_intensity(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Windowed-domain intensity jitter of a (1, 1, D, H, W) image in [0, 1] (all randomness from ``rng``)."""
    if rng.random() < 0.3:
        x = x.clamp(0, 1) ** float(math.exp(rng.uniform(-0.3, 0.3)))
    if rng.random() < 0.5:
        x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
    if rng.random() < 0.2:
        x = _gaussian_blur(x, float(rng.uniform(0.4, 1.0)))
    if rng.random() < 0.3:
        x = x + torch.from_numpy(rng.standard_normal(tuple(x.shape), dtype=np.float32)) * float(rng.uniform(0.0, 0.03))
    return x.clamp(0.0, 1.0)


def augment_pair(image: torch.Tensor, target: torch.Tensor, rng: np.random.Generator, labels: bool,
                 p_spatial: float = 0.7, elastic_p: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment image (1,1,D,H,W) and its target: labels (nearest) or a heatmap (linear), same geometry."""
    if rng.random() < p_spatial:
        grid = random_grid(image.shape[2:], rng, elastic=0.015 if rng.random() < elastic_p else 0.0)
        image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if labels:
            target = F.grid_sample(target.float(), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False).round().long()
        else:
            target = F.grid_sample(target, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return augment_intensity(image, rng), target
