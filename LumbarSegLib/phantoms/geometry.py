"""Geometry helpers of the phantom generator: smooth union, capsule SDF, rotations and frames, the
axis-aligned LPS grid with local boxes, and random smooth fields (all in millimetres)."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


def _smin(a, b, k):
    """Polynomial smooth minimum (union with a fillet of size ~k mm)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _capsule(u, v, w, a, b, r, scale=(1.0, 1.0, 1.0)):
    """Approximate SDF of a capsule from a to b (local coords) with radius r; scale makes it oval."""
    s = np.asarray(scale, np.float32)
    a = np.asarray(a, np.float32) / s
    b = np.asarray(b, np.float32) / s
    pu, pv, pw = u / s[0], v / s[1], w / s[2]
    ab = b - a
    L2 = float(ab @ ab) + 1e-9
    t = ((pu - a[0]) * ab[0] + (pv - a[1]) * ab[1] + (pw - a[2]) * ab[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    du = pu - a[0] - t * ab[0]
    dv = pv - a[1] - t * ab[1]
    dw = pw - a[2] - t * ab[2]
    return (np.sqrt(du * du + dv * dv + dw * dw) - r) * float(s.min())


def _rot(axis, ang):
    axis = np.asarray(axis, float)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(ang), math.sin(ang)
    C = 1 - c
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def _frame(w, roll=0.0):
    """Right-handed frame (columns u lateral-left, v posterior, w superior) with w along the given axis."""
    w = np.asarray(w, float)
    w = w / np.linalg.norm(w)
    v = np.array([0.0, 1.0, 0.0]) - w[1] * w
    v /= np.linalg.norm(v)
    u = np.cross(v, w)
    R = np.stack([u, v, w], axis=1)
    if roll:
        R = _rot(w, roll) @ R
    return R


class _Grid:
    """Axis-aligned LPS grid (identity direction); arrays are indexed [z, y, x]."""

    def __init__(self, shape, spacing, origin):
        self.shape = tuple(int(s) for s in shape)  # (nx, ny, nz)
        self.sp = np.asarray(spacing, float)
        self.org = np.asarray(origin, float)
        self.x = (self.org[0] + self.sp[0] * np.arange(self.shape[0])).astype(np.float32)
        self.y = (self.org[1] + self.sp[1] * np.arange(self.shape[1])).astype(np.float32)
        self.z = (self.org[2] + self.sp[2] * np.arange(self.shape[2])).astype(np.float32)
        self.zyx = self.shape[::-1]

    def box(self, lo, hi):
        """Slices and broadcastable world coordinates of the grid part inside the world box [lo, hi]."""
        lo = (np.asarray(lo, float) - self.org) / self.sp
        hi = (np.asarray(hi, float) - self.org) / self.sp
        i0 = np.maximum(np.floor(lo).astype(int), 0)
        i1 = np.minimum(np.ceil(hi).astype(int) + 1, self.shape)
        if np.any(i1 <= i0):
            return None
        sl = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
        X = self.x[i0[0]:i1[0]][None, None, :]
        Y = self.y[i0[1]:i1[1]][None, :, None]
        Z = self.z[i0[2]:i1[2]][:, None, None]
        return sl, X, Y, Z

    def local_box(self, center, R, lo_local, hi_local):
        """Box around a local-frame cuboid: returns sl and local coordinates u, v, w (full box arrays)."""
        corners = np.array([[a, b, c] for a in (lo_local[0], hi_local[0]) for b in (lo_local[1], hi_local[1])
                            for c in (lo_local[2], hi_local[2])])
        world = center[None, :] + corners @ R.T
        bx = self.box(world.min(0), world.max(0))
        if bx is None:
            return None
        sl, X, Y, Z = bx
        dx, dy, dz = X - np.float32(center[0]), Y - np.float32(center[1]), Z - np.float32(center[2])
        Rf = R.astype(np.float32)
        u = dx * Rf[0, 0] + dy * Rf[1, 0] + dz * Rf[2, 0]
        v = dx * Rf[0, 1] + dy * Rf[1, 1] + dz * Rf[2, 1]
        w = dx * Rf[0, 2] + dy * Rf[1, 2] + dz * Rf[2, 2]
        return sl, u, v, w

    def image(self, arr):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing([float(s) for s in self.sp])
        img.SetOrigin([float(o) for o in self.org])
        return img


def _smooth_field(grid, rng, cell, smooth=1.0, zsl=slice(None)):
    """Random smooth field (about unit std) with feature size ~cell mm on the grid (float32 [z,y,x]).

    ``zsl`` restricts it to a slab of slices (the result then has that slab's shape)."""
    k0, k1, _ = zsl.indices(grid.shape[2])
    nzs = max(k1 - k0, 1)
    ext = np.array([grid.shape[0] * grid.sp[0], grid.shape[1] * grid.sp[1], nzs * grid.sp[2]])
    n = (np.ceil(ext / cell).astype(int) + 5)[::-1]
    a = rng.standard_normal(n).astype(np.float32)
    if smooth > 0:
        a = ndimage.gaussian_filter(a, smooth)
    a /= a.std() + 1e-6
    img = sitk.GetImageFromArray(a)
    img.SetSpacing([float(cell)] * 3)
    org = grid.org + np.array([0, 0, k0 * grid.sp[2]])
    img.SetOrigin([float(o - 2 * cell) for o in org])
    ref = sitk.Image([grid.shape[0], grid.shape[1], nzs], sitk.sitkUInt8)
    ref.SetSpacing([float(s) for s in grid.sp])
    ref.SetOrigin([float(o) for o in org])
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)
