"""Synthetic lumbar-spine CT phantoms with exact VerSe labels (training data for the bundled model).

Everything is built in physical millimetres in patient LPS coordinates (x = patient left, y = posterior,
z = superior), so anatomy keeps its size whatever the grid. Bones are composed as signed distance fields
(SDF, mm, negative inside) in local bounding boxes; the label of a voxel is the bone owning the smallest SDF
there when that SDF is negative, so labels describe exactly what is drawn. Soft tissue is painted per slice
with broadcasting; the CT is then blurred (scanner PSF) and noised.

Public API: :func:`generate_phantom`, :func:`write_verse_dataset`, :func:`load_shape_library`,
:data:`FOV_CHOICES`.

Vertebra shapes come either from a procedural model (body with waist and concave endplates, pedicles,
laminae, spinous/transverse/articular processes, ribs on thoracic levels) or, when a shape library of real
masks is available (``<repo>/../shared/data/masks``), from real VerSe / TotalSegmentator vertebra masks
resampled with random scaling and smooth elastic deformation.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["FOV_CHOICES", "generate_phantom", "write_verse_dataset", "load_shape_library", "ShapeLibrary"]

# "slab": a thin axial slab (20-60 mm) at the thoracolumbar junction above L1, like a limited chest or
# upper-abdomen series: a negative where T12 must not be called L1. "tight": a small spine-targeted box
# around two or three lumbar vertebrae, where little context tells which vertebrae they are.
FOV_CHOICES = ("abdomen", "lumbar", "lower", "upper", "thoracic", "slab", "tight")
_FOV_PROBS = (0.33, 0.24, 0.14, 0.14, 0.08, 0.04, 0.03)

# VerSe codes
_T = {i: 7 + i for i in range(1, 13)}  # T1..T12 -> 8..19
_L = {i: 19 + i for i in range(1, 7)}  # L1..L6 -> 20..25
SACRUM = 26
_BIG = np.float32(50.0)

# orientation codes that keep the axis order (so a requested shape/spacing stays as given)
_FLIP_CODES = ("LPS", "RAS", "LAS", "RPS", "LPI", "RAI", "LAI", "RPI")
_PERM_CODES = ("PIR", "ASL", "RSA", "LIP")


# ----------------------------------------------------------------------------------------------------------
# small geometry helpers
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# shape library (real vertebra masks)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class VertebraShape:
    code: int  # VerSe code
    sdf: np.ndarray  # [z, y, x] float32, mm, negative inside, LPS identity grid
    spacing: np.ndarray  # (x, y, z)
    origin: np.ndarray  # world (x, y, z) of voxel 0
    center: np.ndarray  # vertebral body centre (world)
    R: np.ndarray  # columns u (left), v (posterior), w (superior) in source world
    W: float
    D: float
    H: float
    source: str = ""


@dataclass
class ShapeLibrary:
    shapes: dict = field(default_factory=dict)  # code -> list[VertebraShape]
    root: str = ""

    def get(self, code):
        return self.shapes.get(code, [])

    def __len__(self):
        return sum(len(v) for v in self.shapes.values())


def _default_masks_root():
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "masks"


def _map_codes(path: Path, arr):
    """Return an int array with VerSe codes (TotalSegmentator v2 codes converted)."""
    name = path.name.lower()
    m = re.match(r"l(\d)_seg", name)
    if m:
        return (arr > 0).astype(np.int16) * (19 + int(m.group(1)))
    a = np.rint(arr).astype(np.int16)
    if "tsv2" in name or path.parent.name.startswith("ts_"):
        out = np.zeros_like(a)
        sel = (a >= 27) & (a <= 44)
        out[sel] = 51 - a[sel]
        out[(a == 25) | (a == 26)] = SACRUM
        return out
    return a


def _extract_shapes(path: Path):
    img = sitk.ReadImage(str(path))
    img = sitk.DICOMOrient(img, "LPS")
    sp = np.array(img.GetSpacing(), float)
    org = np.array(img.GetOrigin(), float)
    arr = _map_codes(path, sitk.GetArrayFromImage(img))
    objs = ndimage.find_objects(arr.clip(0, 40).astype(np.int32))
    cents = {}
    for code, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        idx = np.argwhere(arr[sl] == code)[:: 7] + np.array([s.start for s in sl])
        cents[code] = org + idx[:, ::-1].mean(0) * sp
    out = []
    for code, sl in enumerate(objs, start=1):
        if sl is None or code == SACRUM or not (8 <= code <= 25):
            continue
        if any(s.start == 0 or s.stop == n for s, n in zip(sl, arr.shape)):
            continue  # truncated by the source FOV
        up, dn = cents.get(code - 1), cents.get(code + 1)
        c = cents[code]
        if up is not None and dn is not None:
            w = up - dn
        elif up is not None:
            w = up - c
        elif dn is not None:
            w = c - dn
        else:
            w = np.array([0.0, 0.0, 1.0])
        if np.linalg.norm(w) < 5 or abs(w[2]) / np.linalg.norm(w) < 0.6:
            w = np.array([0.0, 0.0, 1.0])
        R = _frame(w)
        pad = np.ceil(6.0 / sp).astype(int)[::-1]
        lo = np.array([s.start for s in sl]) - pad
        hi = np.array([s.stop for s in sl]) + pad
        lo_c = np.maximum(lo, 0)
        m = np.zeros(tuple(hi - lo), bool)
        src = arr[lo_c[0]:hi[0], lo_c[1]:hi[1], lo_c[2]:hi[2]] == code
        off = lo_c - lo
        m[off[0]:off[0] + src.shape[0], off[1]:off[1] + src.shape[1], off[2]:off[2] + src.shape[2]] = src
        if m.sum() * sp.prod() < 8000:
            continue
        m = ndimage.binary_fill_holes(m)
        lab, nl = ndimage.label(m)
        if nl > 1:
            sizes = ndimage.sum(m, lab, range(1, nl + 1))
            m = lab == (1 + int(np.argmax(sizes)))
        samp = sp[::-1]
        sdf = (ndimage.distance_transform_edt(~m, sampling=samp) - ndimage.distance_transform_edt(m, sampling=samp))
        sdf = np.clip(sdf, -25, 25).astype(np.float32)
        corg = org + lo[::-1] * sp
        pts = corg + np.argwhere(m)[:, ::-1] * sp
        rel = (pts - c) @ R
        tv = rel[:, 1]
        E = float(np.ptp(tv))
        body = rel[tv < tv.min() + 0.38 * E]
        bc = c + R @ body.mean(0)
        W = float(np.ptp(np.percentile(body[:, 0], [2, 98])))
        H = float(np.ptp(np.percentile(body[:, 2], [3, 97])))
        D = 0.38 * E
        if not (18 < W < 75 and 10 < H < 42 and 15 < D < 50):
            continue
        out.append(VertebraShape(code, sdf, sp, corg, bc, R, W, D, H, str(path.parent.name)))
    return out


@functools.lru_cache(maxsize=4)
def _load_library_cached(root: str):
    lib = ShapeLibrary(root=root)
    for p in sorted(Path(root).rglob("*.nii*")):
        try:
            shapes = _extract_shapes(p)
        except Exception:  # noqa: BLE001 - a broken file must not break the generator
            continue
        for s in shapes:
            lib.shapes.setdefault(s.code, []).append(s)
    return lib if len(lib) else None


def load_shape_library(root=None) -> ShapeLibrary | None:
    """Load real vertebra masks (VerSe / TotalSegmentator layouts) from ``root``.

    Default root: ``<repo>/../shared/data/masks``. Returns None when absent or empty. Cached per root.
    """
    root = Path(root) if root is not None else _default_masks_root()
    if not root.is_dir():
        return None
    return _load_library_cached(str(root.resolve()))


# ----------------------------------------------------------------------------------------------------------
# spine model
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Vert:
    code: int
    kind: str  # "T" or "L"
    W: float
    D: float
    H: float
    disc_below: float
    s: float = 0.0
    center: np.ndarray = None
    R: np.ndarray = None
    P: dict = None
    shape: VertebraShape = None
    scale: float = 1.0


def _build_spine(rng, g, has_l6, lib, use_lib):
    verts = []
    # lumbar from bottom: L6?, L5..L1
    lumb = ([6] if has_l6 else []) + [5, 4, 3, 2, 1]
    for i in lumb:
        k = min(i, 5) - 1
        j = lambda: rng.uniform(0.96, 1.04)  # noqa: E731
        W = (40.0 + 2.6 * k) * g * j()
        D = (30.0 + 1.3 * k) * g * j()
        H = (24.5 + 0.7 * k) * g * j()
        disc = (8.0 + 0.9 * k + rng.uniform(-1.5, 1.5)) * g
        if i == 5 or i == 6:
            disc *= rng.uniform(0.6, 1.0)  # L5/S1 often narrower
        verts.append(_Vert(_L[i], "L", W, D, H, disc))
    for i in range(12, 0, -1):
        f = (i - 1) / 11.0
        W = (24.0 + 14.0 * f) * g * rng.uniform(0.96, 1.04)
        D = (17.0 + 11.0 * f) * g * rng.uniform(0.96, 1.04)
        H = (14.5 + 8.5 * f) * g * rng.uniform(0.96, 1.04)
        disc = (3.5 + 2.5 * f) * g * rng.uniform(0.85, 1.15)
        verts.append(_Vert(_T[i], "T", W, D, H, disc))
    # library shapes replace procedural ones per level
    if use_lib and lib is not None:
        # one source subject preferred for all levels (consistent sizes), others fill its gaps
        sources = sorted({s.source for c in lib.shapes for s in lib.shapes[c]})
        pref = sources[int(rng.integers(len(sources)))]
        sc0 = rng.uniform(0.85, 1.15) * (0.5 + 0.5 * g)
        for vt in verts:
            cands = lib.get(vt.code if vt.code != 25 else 24)
            if cands and rng.random() < 0.95:
                own = [c for c in cands if c.source == pref]
                sh = own[0] if own else cands[int(rng.integers(len(cands)))]
                sc = sc0 * rng.uniform(0.97, 1.03)
                vt.shape, vt.scale = sh, sc
                vt.W, vt.D, vt.H = sh.W * sc, sh.D * sc, sh.H * sc
    # positions along the curve parameter s (S1 superior endplate at s = 0)
    cur = 0.0
    for vt in verts:
        vt.s = cur + vt.disc_below + vt.H / 2
        cur += vt.disc_below + vt.H
    return verts, cur


class _Curve:
    def __init__(self, rng, verts, s_top):
        s_L1 = next(v for v in verts if v.code == 20)
        sL = s_L1.s + s_L1.H / 2
        sT = s_top
        lord = rng.uniform(12, 38)
        kyph = rng.uniform(10, 40)
        sc_amp = rng.choice([0.0, rng.uniform(2, 10), rng.uniform(8, 22)], p=[0.3, 0.55, 0.15])
        lam = rng.uniform(250, 500)
        ph = rng.uniform(0, 2 * np.pi)
        s = np.arange(-200.0, sT + 120.0, 1.0)
        y = -lord * np.sin(np.pi * np.clip(s / sL, 0, 1)) + kyph * np.sin(np.pi * np.clip((s - sL) / (sT - sL), 0, 1))
        y = y + np.where(s < 0, 0.0, 0.0)
        x = sc_amp * (np.sin(2 * np.pi * s / lam + ph) - np.sin(ph))
        z = s.copy()
        P = np.stack([x, y, z], 1)
        G = _rot([1, 0, 0], np.deg2rad(rng.normal(0, 4))) @ _rot([0, 1, 0], np.deg2rad(rng.normal(0, 2.5)))
        self.P = P @ G.T
        self.G = G
        self.s = s
        T = np.gradient(self.P, axis=0)
        self.T = T / np.linalg.norm(T, axis=1, keepdims=True)
        self.sc_amp = sc_amp

    def at(self, s):
        return np.array([np.interp(s, self.s, self.P[:, k]) for k in range(3)])

    def tangent(self, s):
        t = np.array([np.interp(s, self.s, self.T[:, k]) for k in range(3)])
        return t / np.linalg.norm(t)


def _proc_params(rng, vt):
    W, D, H = vt.W, vt.D, vt.H
    lum = vt.kind == "L"
    lvl = (vt.code - 20) if lum else (vt.code - 8)  # 0..4 lumbar, 0..11 thoracic
    P = dict(W=W, D=D, H=H, waist=rng.uniform(0.04, 0.11), concav=rng.uniform(0.8, 2.2),
             wedge=0.0, post=rng.uniform(0.8, 0.9))
    if lum:
        P.update(ped_r=(3.6 + 0.6 * lvl) * rng.uniform(0.9, 1.1), ped_len=rng.uniform(7, 10),
                 lam_len=rng.uniform(11, 15), sp_len=rng.uniform(24, 32) * (1.0 - 0.04 * max(lvl - 2, 0)),
                 sp_drop=rng.uniform(2, 7), sp_h=rng.uniform(2.4, 3.0),
                 tp_len=[18, 23, 27, 24, 20][min(lvl, 4)] * rng.uniform(0.85, 1.15), tp_r=3.2,
                 tp_back=rng.uniform(-2, 3), tp_up=0.0, ap_r=4.3)
        if vt.code in (24, 25):
            P["wedge"] = rng.uniform(2.0, 5.0)
            P["tp_len"] *= 0.8
            P["tp_r"] = 4.5
    else:
        P.update(ped_r=(2.6 + 0.08 * lvl) * rng.uniform(0.9, 1.1), ped_len=rng.uniform(5, 7),
                 lam_len=rng.uniform(8, 11), sp_len=rng.uniform(22, 32), sp_drop=rng.uniform(15, 26),
                 sp_h=1.6, tp_len=rng.uniform(13, 18), tp_r=4.2, tp_back=rng.uniform(8, 12),
                 tp_up=rng.uniform(1, 4), ap_r=3.6)
    return P


def _proc_vertebra_sdf(u, v, w, P):
    W, D, H = P["W"], P["D"], P["H"]
    a, b = W / 2, D / 2
    vv = np.where(v > 0, v / P["post"], v)
    re = np.sqrt((u / a) ** 2 + (vv / b) ** 2)
    tw = np.clip(2 * w / H, -1, 1)
    s = 1 - P["waist"] * (1 - tw * tw)
    d_rad = (re - s) * min(a, b)
    Hh = H / 2 + P["wedge"] * (-v / D)
    Hh = Hh - P["concav"] * np.clip(1 - re * re, 0, 1)
    d_ax = np.abs(w) - Hh
    body = np.maximum(d_rad, d_ax)
    # posterior arch
    hp = 0.12 * H
    pr, pl, ll = P["ped_r"], P["ped_len"], P["lam_len"]
    pu = 0.29 * W
    v0 = b * P["post"] - 2
    v1 = b * P["post"] + pl
    vb = v1 + ll
    sdf = body
    for sg in (-1.0, 1.0):
        ped = _capsule(u, v, w, (sg * pu, v0 - 4, hp), (sg * pu * 1.04, v1, hp), pr, (1.0, 1.0, 1.6))
        lam = _capsule(u, v, w, (sg * pu, v1, hp - 1), (sg * 2.0, vb, hp - 4), 3.3, (1.0, 1.0, 2.3))
        tp_tip = (sg * (pu + P["tp_len"]), v1 - 1 + P["tp_back"], hp + P["tp_up"])
        tp = _capsule(u, v, w, (sg * pu, v1 - 1, hp), tp_tip, P["tp_r"], (1.0, 0.8, 1.25))
        sap = _capsule(u, v, w, (sg * (pu + 2.5), v1, hp + 2), (sg * (pu + 4.5), v1 + 5, H / 2 + 7), P["ap_r"])
        iap = _capsule(u, v, w, (sg * 0.22 * W, v1 + 0.5 * ll, hp - 4),
                       (sg * 0.2 * W, v1 + 0.55 * ll + 2, -H / 2 - 6), P["ap_r"] * 0.95)
        arch = _smin(_smin(ped, lam, 2.0), _smin(tp, _smin(sap, iap, 1.5), 1.5), 1.5)
        sdf = _smin(sdf, arch, 2.0)
    spn = _capsule(u, v, w, (0, vb - 2, hp - 4), (0, vb + P["sp_len"], hp - 4 - P["sp_drop"]), 3.0,
                   (1.0, 1.0, P["sp_h"]))
    sdf = _smin(sdf, spn, 2.0)
    return sdf


def _tp_tip_local(vt):
    P = vt.P
    pu = 0.29 * vt.W
    v1 = vt.D / 2 * P["post"] + P["ped_len"]
    return np.array([pu + P["tp_len"], v1 - 1 + P["tp_back"], 0.12 * vt.H + P["tp_up"]])


def _elastic(rng, amp):
    ks = [rng.normal(0, 1, 3) for _ in range(3)]
    ks = [k / np.linalg.norm(k) * 2 * np.pi / rng.uniform(35, 80) for k in ks]
    phs = rng.uniform(0, 2 * np.pi, 3)
    amps = rng.uniform(0.3, 1.0, 3) * amp

    def disp(u, v, w):
        out = []
        for k, ph, am in zip(ks, phs, amps):
            out.append(am * np.sin(k[0] * u + k[1] * v + k[2] * w + ph))
        return out

    return disp


# ----------------------------------------------------------------------------------------------------------
# phantom builder
# ----------------------------------------------------------------------------------------------------------
class _Phantom:
    def __init__(self, seed, shape, spacing, fov, shape_library):
        self.rng = rng = np.random.default_rng(seed)
        self.fov = fov if fov is not None else str(rng.choice(FOV_CHOICES, p=_FOV_PROBS))
        if self.fov not in FOV_CHOICES:
            raise ValueError(f"fov must be one of {FOV_CHOICES}, got {fov!r}")
        self.g = g = float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.18))
        self.has_l6 = rng.random() < 0.03
        lib = shape_library
        use_lib = lib is not None and rng.random() < 0.5
        self.verts, s_top = _build_spine(rng, g, self.has_l6, lib, use_lib)
        self.curve = _Curve(rng, self.verts, s_top)
        self.vmap = {vt.code: vt for vt in self.verts}
        for vt in self.verts:
            vt.center = self.curve.at(vt.s)
            roll = rng.normal(0, 2.0) + 0.6 * self.curve.sc_amp * rng.normal(0, 0.3)
            vt.R = _frame(self.curve.tangent(vt.s), np.deg2rad(roll))
            vt.P = _proc_params(rng, vt)
        # pathology / imaging options
        self.osteo = rng.random() < 0.2
        self.fracture = None
        if rng.random() < 0.05:
            fr = self.vmap[int(rng.choice([19, 20, 21, 22, 23]))]
            self.fracture = fr.code
            fr.P["H"] *= rng.uniform(0.55, 0.8)
            fr.P["wedge"] = -rng.uniform(0, 5)
            fr.P["concav"] += rng.uniform(0, 3)
            fr.shape = None  # procedural fractured body
        self.screws = rng.random() < 0.05
        # body habitus
        self.body_a = rng.uniform(135, 205) * g  # lateral semi axis (abdomen)
        self.body_b = rng.uniform(95, 160) * g  # AP semi axis
        self.back = rng.uniform(70, 105) * g  # body centre -> posterior skin
        self.fat_sc = rng.uniform(4, 45) * (self.body_a / 160) ** 2
        self.visc_fat = rng.uniform(0.0, 1.0)
        self.sex_f = rng.random() < 0.5
        self.contrast = str(rng.choice(["none", "arterial", "venous"], p=[0.4, 0.15, 0.45]))
        self.shape, self.spacing = shape, spacing

    # --- grid & field of view -----------------------------------------------------------------------------
    def z_range(self):
        rng, vm = self.rng, self.vmap
        top = lambda c: vm[c].center[2] + vm[c].H / 2  # noqa: E731
        bot = lambda c: vm[c].center[2] - vm[c].H / 2  # noqa: E731
        zc = lambda c: vm[c].center[2]  # noqa: E731
        low = _L[6] if self.has_l6 else _L[5]
        sac_tip = -rng.uniform(95, 120) * self.g
        f = self.fov
        if f == "abdomen":
            return sac_tip - rng.uniform(10, 70), zc(int(rng.choice([17, 18]))) + rng.uniform(0, 25), "mid"
        if f == "lumbar":
            return bot(low) - rng.uniform(5, 45), top(20) + rng.uniform(5, 45), "mid"
        if f == "lower":
            return sac_tip - rng.uniform(0, 80), zc(22) - rng.uniform(0, 10), "top"
        if f == "upper":
            return zc(22) + rng.uniform(-5, 8), zc(17) + rng.uniform(0, 30), "bottom"
        if f == "slab":
            lo = top(20) + rng.uniform(1, 30)
            return lo, lo + rng.uniform(20, 60), "bottom"
        if f == "tight":
            first = int(rng.choice([20, 21, 22]))
            return zc(first + 2) - rng.uniform(0, 12), zc(first) + rng.uniform(0, 12), "mid"
        lo = zc(19) + rng.uniform(8, 20)
        return lo, lo + rng.uniform(90, 220), "bottom"

    def make_grid(self):
        rng = self.rng
        zlo, zhi, anchor = self.z_range()
        shape, spacing = self.shape, self.spacing
        vm = self.vmap
        spine_c = vm[22].center
        body_w = 2 * self.body_a * 1.08
        spine_target = self.fov == "tight" or (self.fov in ("lumbar", "lower") and rng.random() < 0.3)
        if self.fov == "tight":
            fov_xy = rng.uniform(90, 140)
        else:
            fov_xy = rng.uniform(140, 240) if spine_target else body_w + rng.uniform(-30, 90)
        if spacing is None:
            if shape is not None:
                sxy = fov_xy / max(shape[0], shape[1])
                sz = (zhi - zlo) / shape[2]
                sz = float(np.clip(sz, 0.5, 5.0))
                spacing = (sxy, sxy, sz)
            else:
                sxy = rng.uniform(0.55, 1.0)
                sz = float(rng.choice([0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0],
                                      p=[0.1, 0.2, 0.1, 0.1, 0.15, 0.1, 0.15, 0.1]))
                spacing = (sxy, sxy, sz)
        spacing = tuple(float(s) for s in spacing)
        if shape is None:
            nxy = int(np.clip(round(fov_xy / spacing[0]), 64, 512))
            nz = int(np.clip(math.ceil((zhi - zlo) / spacing[2]), 16, 400))
            shape = (nxy, int(np.clip(round(fov_xy / spacing[1]), 64, 512)), nz)
        shape = tuple(int(s) for s in shape)
        E = shape[2] * spacing[2]
        span = zhi - zlo
        if anchor == "top":
            z0 = zhi - E
        elif anchor == "bottom":
            z0 = zlo
        elif E >= span:
            z0 = zlo - rng.uniform(0, E - span)
        else:
            z0 = 0.5 * (zlo + zhi) - 0.5 * E + rng.uniform(-0.1, 0.1) * (span - E)
        ex, ey = shape[0] * spacing[0], shape[1] * spacing[1]
        if spine_target:
            cx = spine_c[0] + rng.normal(0, 8)
            cy = spine_c[1] + 20 + rng.normal(0, 8)
        else:
            cx = self.body_cx + rng.normal(0, 10)
            cy = self.body_cy + rng.normal(0, 10)
        origin = (cx - ex / 2 + spacing[0] / 2, cy - ey / 2 + spacing[1] / 2, z0 + spacing[2] / 2)
        self.grid = _Grid(shape, spacing, origin)

    # --- per-slice anatomy tables ---------------------------------------------------------------------------
    def slice_tables(self):
        rng, grid = self.rng, self.grid
        z = grid.z.astype(float)
        vs = sorted(self.verts, key=lambda v: v.center[2])
        # pseudo points along the sacrum so tables continue smoothly below S1
        pv = self.pelvis_frame
        low = vs[0]
        extra = []
        for t, lv in ((0.0, 25.3), (0.5, 26.4), (1.0, 27.5)):
            p = pv["o"] + pv["Rs"] @ np.array([0.0, -pv["curv"] * pv["Ls"] * t * t, -t * pv["Ls"]])
            extra.append((p, lv, low.W * (1 - 0.6 * t), low.D * (1 - 0.5 * t)))
        cz = np.array([e[0][2] for e in extra[::-1]] + [v.center[2] for v in vs])
        pts = [e[0] for e in extra[::-1]] + [v.center for v in vs]
        self.t_sx = np.interp(z, cz, [p[0] for p in pts])
        self.t_sy = np.interp(z, cz, [p[1] for p in pts])
        self.t_W = np.interp(z, cz, [e[2] for e in extra[::-1]] + [v.W for v in vs])
        self.t_D = np.interp(z, cz, [e[3] for e in extra[::-1]] + [v.D for v in vs])
        self.t_lev = np.interp(z, cz, [e[1] for e in extra[::-1]] + [float(v.code) for v in vs])
        self.t_lev = np.where(z < cz[0], 27.5 + (cz[0] - z) / 60.0, self.t_lev)
        L = self.t_lev
        # body outline semi-axes
        thor = np.clip((18.5 - L) / 3.0, 0, 1)  # 1 in the chest
        pelv = np.clip((L - 24.0) / 2.0, 0, 1)
        hip = np.clip((L - 26.5) / 1.5, 0, 1)
        a = self.body_a * (1 - 0.12 * thor + 0.08 * pelv + 0.06 * hip * (1.0 if self.sex_f else 0.5))
        b = self.body_b * (1 + 0.05 * thor - 0.1 * pelv)
        self.t_a = a * (1 + 0.02 * np.sin(z / 37.0 + rng.uniform(0, 6)))
        self.t_b = b * (1 + 0.02 * np.sin(z / 53.0 + rng.uniform(0, 6)))
        self.t_cx = self.body_cx_off + 0.5 * self.t_sx
        y3 = self.vmap[22].center[1]
        self.t_cy = y3 + 0.6 * (self.t_sy - y3) + self.back - self.t_b
        self.t_thor, self.t_pelv = thor, pelv

    @property
    def body_cx(self):
        return self.vmap[22].center[0] * 0.5 + self.body_cx_off

    @property
    def body_cy(self):
        return self.vmap[22].center[1] + self.back - self.body_b

    # --- bones ----------------------------------------------------------------------------------------------
    def put_bone(self, sl, sdf, code):
        cur = self.sdf[sl]
        m = sdf < cur
        cur[m] = sdf[m]
        self.lab[sl][m] = code

    def draw_vertebra(self, vt):
        rng = self.rng
        if vt.shape is not None:
            sh, sc = vt.shape, vt.scale
            zyx = np.array(sh.sdf.shape)
            ext = zyx[::-1] * sh.spacing
            corners = np.array([[a, b, c] for a in (0, ext[0]) for b in (0, ext[1]) for c in (0, ext[2])])
            loc = (sh.origin + corners - sh.center) @ sh.R * sc
            lo, hi = loc.min(0) - 4, loc.max(0) + 4
            bx = self.grid.local_box(vt.center, vt.R, lo, hi)
            if bx is None:
                return
            sl, u, v, w = bx
            disp = _elastic(rng, rng.uniform(0.5, 2.5))
            du, dv, dw = disp(u, v, w)
            aniso = rng.uniform(0.95, 1.05, 3)
            lu, lv, lw = (u + du) / (sc * aniso[0]), (v + dv) / (sc * aniso[1]), (w + dw) / (sc * aniso[2])
            Rs = sh.R
            coords = []
            for k in (2, 1, 0):  # index z, y, x of the source sdf
                p = sh.center[k] + Rs[k, 0] * lu + Rs[k, 1] * lv + Rs[k, 2] * lw
                coords.append((p - sh.origin[k]) / sh.spacing[k])
            sdf = ndimage.map_coordinates(sh.sdf, coords, order=1, mode="constant", cval=25.0,
                                          output=np.float32) * np.float32(sc)
            self.put_bone(sl, sdf, vt.code)
            return
        P = vt.P
        W, D, H = P["W"], P["D"], P["H"]
        lo = (-(0.29 * W + P["tp_len"] + 8), -D / 2 - 6, -H / 2 - 14 - (P["sp_drop"] if vt.kind == "T" else 0))
        hi = (0.29 * W + P["tp_len"] + 8, D / 2 + P["ped_len"] + P["lam_len"] + P["sp_len"] + 8, H / 2 + 14)
        bx = self.grid.local_box(vt.center, vt.R, lo, hi)
        if bx is None:
            return
        sl, u, v, w = bx
        if rng.random() < 0.5:
            du, dv, dw = _elastic(rng, rng.uniform(0.3, 1.5))(u, v, w)
            u, v, w = u + du, v + dv, w + dw
        self.put_bone(sl, _proc_vertebra_sdf(u, v, w, P).astype(np.float32), vt.code)

    def draw_tube(self, pts, r, code=0, zscale=1.0, step=None):
        """Union of capsules along a polyline (world coords) into the bone field."""
        pts = np.asarray(pts, float)
        for a, b in zip(pts[:-1], pts[1:]):
            lo = np.minimum(a, b) - r * max(zscale, 1) - 2
            hi = np.maximum(a, b) + r * max(zscale, 1) + 2
            bx = self.grid.box(lo, hi)
            if bx is None:
                continue
            sl, X, Y, Z = bx
            d = _capsule(X, Y, Z, a, b, r, (1.0, 1.0, zscale))
            d = np.broadcast_to(d, self.sdf[sl].shape).astype(np.float32)
            self.put_bone(sl, d, code)

    def draw_ribs(self):
        rng = self.rng
        zmin, zmax = self.grid.z[0], self.grid.z[-1]
        for i in range(1, 13):
            vt = self.vmap[_T[i]]
            if vt.center[2] < zmin - 40 or vt.center[2] - 160 > zmax:
                continue
            if i == 12:
                th_end = rng.uniform(0.25, 0.6) * np.pi
                drop = rng.uniform(10, 40)
            elif i == 11:
                th_end = rng.uniform(0.5, 0.75) * np.pi
                drop = rng.uniform(30, 60)
            elif i == 10:
                th_end = rng.uniform(0.75, 0.9) * np.pi
                drop = rng.uniform(60, 90)
            elif i >= 8:
                th_end = 0.9 * np.pi
                drop = rng.uniform(70, 110)
            else:
                th_end = 0.94 * np.pi
                drop = rng.uniform(50, 90) * (0.6 + 0.4 * i / 7)
            r = rng.uniform(3.5, 4.5) * self.g
            tip = _tp_tip_local(vt)
            for sg in (-1.0, 1.0):
                head = vt.center + vt.R @ np.array([sg * 0.42 * vt.W, 0.35 * vt.D, 0.35 * vt.H])
                tub = vt.center + vt.R @ np.array([sg * (tip[0] - 2), tip[1] + 3, tip[2] - 2])
                zc = tub[2]
                # chest wall ellipse at that height
                a_in, b_in, cx, cy = self.wall_ellipse(zc)
                a_in -= self.fat_sc + 14
                b_in -= self.fat_sc + 14
                th0 = math.atan2(abs(tub[0] - cx) / a_in, (tub[1] - cy) / b_in) + 0.25
                ths = np.linspace(th0, th_end, max(3, int((th_end - th0) * 0.5 * (a_in + b_in) / 8)))
                if len(ths) < 2 or th_end <= th0:
                    ths = np.array([th0, th0 + 0.2])
                tt = (ths - th0) / max(np.pi - th0, 1e-3)
                pts = [head, tub]
                for th, t in zip(ths, tt):
                    pts.append([cx + sg * a_in * math.sin(th), cy + b_in * math.cos(th),
                                zc + 6 * math.sin(min(t * 6, np.pi)) - drop * t ** 1.3])
                self.draw_tube(pts, r, 0, zscale=1.5)

    def wall_ellipse(self, zc):
        z = self.grid.z
        k = int(np.clip(np.searchsorted(z, zc), 0, len(z) - 1))
        # extrapolate beyond the grid with the nearest values (fine: the body is smooth)
        return float(self.t_a[k]), float(self.t_b[k]), float(self.t_cx[k]), float(self.t_cy[k])

    def make_pelvis_frame(self):
        rng, g = self.rng, self.g
        t0 = self.curve.tangent(0.0)
        # sacrum axis: tilt further anteriorly (S1 endplate faces anterior-superior)
        Rs = _frame(t0)
        Rs = _rot(Rs[:, 0], np.deg2rad(rng.uniform(0, 12))) @ Rs
        o = self.curve.at(0.0) - Rs[:, 2] * 0.5
        self.pelvis_frame = dict(o=o, Rs=Rs, Ls=rng.uniform(95, 120) * g, Wsac=rng.uniform(98, 118) * g,
                                 curv=rng.uniform(0.3, 0.5))

    def draw_sacrum_pelvis(self):
        rng, g = self.rng, self.g
        low = self.vmap[_L[6] if self.has_l6 else _L[5]]
        pf = self.pelvis_frame
        Rs, o, Ls, Wsac, curv = pf["Rs"], pf["o"], pf["Ls"], pf["Wsac"], pf["curv"]
        bx = self.grid.local_box(o, Rs, (-Wsac / 2 - 8, -low.D / 2 - 40, -Ls - 8), (Wsac / 2 + 8, 70, 25))
        if bx is not None:
            sl, u, v, w = bx
            t = np.clip(-w / Ls, 0, 1)
            hw = (Wsac / 2) * (1 - t) ** 0.85 + 9
            hw = hw * (1 - 0.25 * np.clip((np.abs(v - 10) - 0) / 40, 0, 1))
            c = -curv * Ls * t * t
            ht = 24 * g * (1 - t) + 6
            vc = c + 6 * (1 - t)
            au = np.abs(u) / hw
            hte = ht * (1 - 0.5 * np.clip(au, 0, 1) ** 2)
            d_uv = ((au ** 3 + (np.abs(v - vc) / hte) ** 3) ** (1 / 3) - 1) * np.minimum(hw, hte)
            d_w = np.maximum(w + 6 * np.clip(au, 0, 1) ** 2, -w - Ls)
            sac = np.maximum(d_uv, d_w)
            # S1 body & upper articular processes & median crest
            a, b = low.W / 2 * 1.02, low.D / 2
            re = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            s1 = np.maximum((re - 1) * b, np.maximum(w - 0.5, -w - 28))
            sac = _smin(sac, s1, 3)
            pu = 0.29 * low.W
            v1 = b * 0.85 + 8
            for sg in (-1.0, 1.0):
                sap = _capsule(u, v, w, (sg * (pu + 2.5), v1, -6), (sg * (pu + 5), v1 + 5, 9), 4.5)
                sac = _smin(sac, sap, 2)
            crest = _capsule(u, v, w, (0, vc.mean() + 28, -10), (0, 24 - curv * Ls * 0.5, -Ls * 0.7), 3.5,
                             (1, 1, 2))
            sac = _smin(sac, crest, 3)
            # sacral canal and foramina
            canal = _capsule(u, v, w, (0, b + 4, 10), (0, 14 - curv * Ls * 0.6, -Ls * 0.85), 6.0, (1.5, 0.8, 1))
            sac = np.maximum(sac, -canal)
            for sg in (-1.0, 1.0):
                for k in range(4):
                    tk = 0.18 + 0.19 * k
                    wk = -tk * Ls
                    ck = -curv * Ls * tk * tk
                    fo = _capsule(u, v, w, (sg * (16 - 2 * k), ck - 30, wk), (sg * (16 - 2 * k), ck + 30, wk),
                                  3.8 - 0.4 * k)
                    sac = np.maximum(sac, -fo)
            self.put_bone(sl, sac.astype(np.float32), SACRUM)
        # ilium (curved plates), acetabulum, femoral heads
        for sg in (-1.0, 1.0):
            si = o + Rs @ np.array([sg * Wsac * 0.42, -2, -Ls * 0.2])
            e1 = np.array([sg * 0.68, -0.73, 0.05])
            e1 /= np.linalg.norm(e1)
            e2 = np.array([sg * 0.45, 0.0, 0.89])
            e2 -= e1 * (e1 @ e2)
            e2 /= np.linalg.norm(e2)
            n = np.cross(e1, e2)
            A, B = rng.uniform(62, 76) * g, rng.uniform(55, 68) * g
            c = si + e1 * A * 0.85 + e2 * B * 0.25
            th = rng.uniform(7, 12)
            R = np.stack([e1, e2, n], 1)
            bx = self.grid.local_box(c, R, (-A - 12, -B - 12, -30), (A + 12, B + 12, 30))
            if bx is not None:
                sl, p, q, r = bx
                bend = 0.006 * (p * p) + 0.004 * (q * q)
                shell = np.abs(r + bend - 8) - th / 2 * (1 + 0.9 * np.clip(-p / A, 0, 1) + 0.6 * np.clip(-q / B, 0, 1))
                ell = (np.sqrt((p / A) ** 2 + (q / B) ** 2) - 1) * min(A, B)
                ell = np.maximum(ell, q - B * 0.62 + 0.0 * p)  # flatten the iliac crest
                crest_r = _capsule(p, q, r + bend - 8, (-A * 0.95, B * 0.55, 0), (A * 0.95, B * 0.55, 0), 7.0,
                                   (1, 1.0, 1))
                ili = np.maximum(shell, ell)
                ili = _smin(ili, np.maximum(crest_r, ell - 1), 2.5)
                self.put_bone(sl, ili.astype(np.float32), 0)
            rh = rng.uniform(21, 26) * g
            hc = o + np.array([sg * rng.uniform(85, 100) * g, -rng.uniform(25, 45), -Ls * rng.uniform(0.95, 1.15)])
            bot_il = c - e2 * B * 0.7
            # acetabulum / ischium block with a joint space around the head
            bx = self.grid.box(hc - 60, hc + np.array([60, 60, 80]))
            if bx is not None:
                sl, X, Y, Z = bx
                dh = np.sqrt((X - hc[0]) ** 2 + (Y - hc[1]) ** 2 + (Z - hc[2]) ** 2)
                head = dh - rh
                neck_end = hc + np.array([sg * 38, 8, -30])
                neck = _capsule(X, Y, Z, hc, neck_end, rh * 0.62)
                shaft = _capsule(X, Y, Z, neck_end - np.array([sg * 4, 0, 0]), neck_end + np.array([sg * 5, 5, -160]),
                                 rh * 0.62)
                troch = _capsule(X, Y, Z, neck_end, neck_end + np.array([sg * 14, 6, 10]), 12)
                fem = np.minimum(np.minimum(head, neck), np.minimum(shaft, troch))
                ace = _capsule(X, Y, Z, bot_il, hc + np.array([-sg * 6, 12, 8]), rh * 0.85)
                isch = _capsule(X, Y, Z, hc + np.array([-sg * 10, 15, 0]), hc + np.array([-sg * 18, 25, -55]), 11)
                pub = _capsule(X, Y, Z, hc + np.array([-sg * 15, -15, -10]), np.array([sg * 4, hc[1] - 45, hc[2] - 25]),
                               9)
                pel = np.minimum(np.minimum(ace, isch), pub)
                pel = np.maximum(pel, -(dh - rh - 2.5))
                self.put_bone(sl, np.broadcast_to(pel, self.sdf[sl].shape).astype(np.float32), 0)
                self.put_bone(sl, np.broadcast_to(fem, self.sdf[sl].shape).astype(np.float32), 0)
        self.pelvis = self.pelvis_frame

    def draw_sternum(self):
        vt7, vt2 = self.vmap[_T[7]], self.vmap[_T[2]]
        pts = []
        for vt, dz in ((vt2, 0.0), (vt7, -25.0), (self.vmap[_T[10]], -30.0)):
            a, b, cx, cy = self.wall_ellipse(vt.center[2])
            pts.append([cx, cy - b + self.fat_sc + 18, vt.center[2] + dz])
        self.draw_tube(pts, 6.5, 0, zscale=1.0)

    def build_bones(self):
        nz, ny, nx = self.grid.zyx
        self.sdf = np.full((nz, ny, nx), _BIG, np.float32)
        self.lab = np.zeros((nz, ny, nx), np.uint8)
        for vt in self.verts:
            self.draw_vertebra(vt)
        self.draw_ribs()
        self.draw_sacrum_pelvis()
        if self.t_thor.max() > 0.5:
            self.draw_sternum()
        self.lab[self.sdf >= 0] = 0

    # --- soft tissue ----------------------------------------------------------------------------------------
    def zslab(self, zlo, zhi):
        z = self.grid.z
        k0 = int(np.searchsorted(z, zlo))
        k1 = int(np.searchsorted(z, zhi))
        return slice(k0, max(k0, k1))

    def ellipsoid(self, c, semi, R=None):
        """(slices, mask) of an ellipsoid (world centre, semi axes along R's columns)."""
        semi = np.asarray(semi, float)
        rad = float(semi.max())
        bx = self.grid.box(np.asarray(c) - rad, np.asarray(c) + rad)
        if bx is None:
            return None
        sl, X, Y, Z = bx
        dx, dy, dz = X - np.float32(c[0]), Y - np.float32(c[1]), Z - np.float32(c[2])
        if R is None:
            e = (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2
        else:
            Rf = np.asarray(R, np.float32)
            e = sum(((dx * Rf[0, k] + dy * Rf[1, k] + dz * Rf[2, k]) / semi[k]) ** 2 for k in range(3))
        return sl, e

    def soft_tissue(self):
        rng, grid = self.rng, self.grid
        nz, ny, nx = grid.zyx
        X = grid.x[None, None, :]
        Y = grid.y[None, :, None]
        Z = grid.z[:, None, None]
        col = lambda t: np.asarray(t, np.float32)[:, None, None]  # noqa: E731
        a, b, cx, cy = col(self.t_a), col(self.t_b), col(self.t_cx), col(self.t_cy)
        sx, sy, W, D = col(self.t_sx), col(self.t_sy), col(self.t_W), col(self.t_D)
        dx, dy = X - cx, Y - cy
        r = (np.abs(dx) / a) ** 2.4 + (np.abs(dy) / b) ** 2.2
        dist_in = (1 - r ** (1 / 2.3)) * np.minimum(a, b)  # ~ mm inside the skin
        del r
        self.dist_in = dist_in
        tex = _smooth_field(grid, rng, 9.0)
        self.tex = tex
        fat_hu = rng.uniform(-115, -85)
        hu = np.where(dist_in > 0, fat_hu + 6.0 * tex, np.float32(-1000)).astype(np.float32)
        skin = (dist_in > 0) & (dist_in < rng.uniform(1.5, 2.5))
        hu[skin] = rng.uniform(10, 50)
        del skin
        ang = np.arctan2(dy, dx)
        fsc = self.fat_sc * (1 + 0.3 * np.sin(ang * 2 + rng.uniform(0, 6)) + 0.3 * np.clip(-np.sin(ang), 0, 1))
        del ang
        wall_t = rng.uniform(7, 16) * self.g
        muscle_hu = rng.uniform(40, 60) if self.contrast == "none" else rng.uniform(50, 70)
        wall = (dist_in > fsc) & (dist_in < fsc + wall_t)
        hu[wall] = muscle_hu + 5 * tex[wall]
        cav = dist_in > fsc + wall_t
        del wall, fsc
        self.cavity = cav
        hu[cav] = fat_hu + rng.uniform(0, 15) + 6 * tex[cav]
        # diaphragm: dome over the liver (right) and spleen (left), posterior recesses lower
        zd = self.vmap[_T[10]].center[2] + rng.uniform(-10, 25)
        self.zd = zd
        spine_y = float(np.mean(self.t_sy))
        zdia = (zd - 0.0004 * (X - self.body_cx) ** 2 - 0.25 * (Y - spine_y + 40) - 10 * np.cos((X - self.body_cx) / 40))
        zdia = zdia.astype(np.float32)
        lungs = np.zeros(hu.shape, bool)
        ks = self.zslab(float(zdia.min()), 1e9)
        above = (Z[ks] > zdia) & cav[ks]
        if above.any():
            Xs = X
            medi = (np.abs(Xs - sx[ks]) < (W[ks] * 0.5 + 18)) & (Y < sy[ks] + D[ks] * 0.2)
            medi |= (np.abs(Xs - (self.body_cx + 10)) < 30) & (Y < sy[ks])
            hc = np.array([self.body_cx + 25, float(self.body_cy - 0.3 * self.body_b), zd + 45])
            heart = (((Xs - hc[0]) / 62) ** 2 + ((Y - hc[1]) / (0.5 * self.body_b)) ** 2 + ((Z[ks] - hc[2]) / 65) ** 2) < 1
            lf = _smooth_field(grid, rng, 3.0, smooth=0.7, zsl=ks)
            lung_val = np.where(lf > 2.1, 20.0, rng.uniform(-900, -820) + 25 * tex[ks] + 10 * lf)
            lm = above & ~medi & ~heart
            h = hu[ks]
            h[lm] = lung_val[lm]
            h[above & medi & ~heart] = rng.uniform(-90, -60)
            h[above & heart] = 40 + (110 if self.contrast != "none" else 0)
            lungs[ks] = lm
            del lf, lung_val, medi, heart
        abd = cav.copy()
        abd[ks] &= ~above
        del above
        self.lungs, self.abd = lungs, abd
        c_liver = {"none": rng.uniform(45, 65), "arterial": rng.uniform(65, 85), "venous": rng.uniform(95, 125)}
        lhu = c_liver[self.contrast] - (rng.uniform(20, 60) if rng.random() < 0.15 else 0)
        # liver: right upper quadrant (patient right = -x), tip reaching ~L2-L3
        lb = self.vmap[_L[2]].center[2] + rng.uniform(-25, 30)
        ks = self.zslab(lb - 120, 1e9)
        liver = np.zeros(hu.shape, bool)
        Zs = Z[ks]
        lim_x = self.body_cx + 35 + 40 * np.clip((Zs - lb) / 150, 0, 1) ** 0.5
        lbot = lb + 0.45 * (X - (self.body_cx - self.body_a * 0.8))
        lv = abd[ks] & (Zs > lbot) & (X < lim_x) & (Y < sy[ks] + D[ks] * 0.5 + 35)
        lv &= ~((np.abs(X - sx[ks]) < W[ks] * 0.5 + 15) & (Y > sy[ks] - D[ks] * 0.7))
        lv &= ~((X > sx[ks]) & (Y > sy[ks] - D[ks]))
        liver[ks] = lv
        h = hu[ks]
        h[lv] = lhu + 4 * tex[ks][lv]
        del lv, lbot, lim_x
        self.liver = liver
        # gallbladder sometimes
        if rng.random() < 0.5:
            e = self.ellipsoid((self.body_cx - 45, float(self.body_cy - 0.45 * self.body_b), lb + 40), (18, 15, 35))
            if e is not None:
                sl, e = e
                m = (e < 1) & liver[sl]
                hu[sl][m] = rng.uniform(0, 20)
        # spleen, stomach (left upper), gas anterior (supine)
        e = self.ellipsoid((self.body_cx + 0.62 * self.body_a, spine_y + 25, zd - 40), (38, 55, 55),
                           _rot([0, 0, 1], np.deg2rad(30)))
        if e is not None:
            sl, e = e
            m = (e < 1) & abd[sl] & ~liver[sl]
            hu[sl][m] = lhu + rng.uniform(-10, 10)
        stc = np.array([self.body_cx + 45, float(self.body_cy - 0.3 * self.body_b), zd - 55])
        e = self.ellipsoid(stc, (60, 0.45 * self.body_b, 50))
        stomach = np.zeros(hu.shape, bool)
        if e is not None:
            sl, e = e
            m = (e < 1) & abd[sl] & ~liver[sl]
            hs = hu[sl]
            hs[m] = rng.uniform(5, 30) + 10 * tex[sl][m]
            gas = m & np.broadcast_to(grid.y[sl[1]][None, :, None] < stc[1] - rng.uniform(-10, 30), m.shape)
            hs[gas] = -1000
            stomach[sl] = m
        # kidneys (left higher), with perirenal fat, sinus fat and cortex/medulla when enhanced
        kc = {"none": (30, 30), "arterial": (190, 70), "venous": (165, 150)}[self.contrast]
        for sg, dz in ((-1.0, -rng.uniform(5, 25)), (1.0, 0.0)):
            if rng.random() < 0.03:
                continue  # nephrectomy
            kz = self.vmap[_L[1]].center[2] + dz + rng.uniform(-10, 10)
            k = int(np.clip(np.searchsorted(grid.z, kz), 0, nz - 1))
            kx = self.t_sx[k] + sg * rng.uniform(58, 75) * self.g
            ky = self.t_sy[k] + rng.uniform(5, 20)
            R = _rot([0, 0, 1], sg * np.deg2rad(30)) @ _rot([0, 1, 0], -sg * np.deg2rad(12))
            ks_ = rng.uniform(0.85, 1.1) * self.g
            e = self.ellipsoid((kx, ky, kz), (28 * ks_ * 1.35, 22 * ks_ * 1.35, 55 * ks_ * 1.35), R)
            if e is None:
                continue
            sl, e = e
            cm = abd[sl] & ~liver[sl]
            hb = hu[sl]
            hb[(e < 1.0) & cm] = fat_hu + 10  # perirenal fat
            e = e * 1.35 ** 2
            hb[(e < 1) & cm] = kc[0]
            hb[(e < 0.5) & cm] = kc[1]
            es = self.ellipsoid((kx - sg * 12, ky - 4, kz), (12, 10, 26))
            if es is not None:
                sl2, e2 = es
                m = (e2 < 1) & abd[sl2]
                hu[sl2][m] = fat_hu + 25
        # bowel: loops with gas / fluid / faeces and enhancing walls, below the upper organs
        ks = self.zslab(-1e9, zd - 30)
        if ks.stop > ks.start:
            Zs = Z[ks]
            f1 = _smooth_field(grid, rng, rng.uniform(8, 13), zsl=ks)
            f2 = _smooth_field(grid, rng, 5.0, zsl=ks)
            region = abd[ks] & ~liver[ks] & ~stomach[ks] & (hu[ks] < -50)
            region &= ~((np.abs(X - sx[ks]) < W[ks] * 0.5 + 30) & (Y > sy[ks] - D[ks] * 0.8))
            thr = rng.uniform(-0.4, 0.3) + self.visc_fat * 0.5
            loop = region & (f1 > thr)
            wallm = loop & (f1 < thr + 0.22)
            ant = np.clip(-(Y - cy[ks]) / b[ks], -1, 1)
            gas = loop & ~wallm & (f2 + 1.0 * ant > rng.uniform(0.5, 1.4))
            cont = rng.uniform(0, 30) if rng.random() < 0.75 else rng.uniform(150, 350)  # oral contrast
            h = hu[ks]
            h[loop] = np.where(f2[loop] > -0.5, cont + 8 * f2[loop], -80 + 100 * np.abs(f2[loop]))
            h[wallm] = 40 + (25 if self.contrast != "none" else 0)
            h[gas] = -1000 + 30 * f2[gas]
            del f1, f2, loop, wallm, gas, region, ant
        # bladder
        bl_c = self.pelvis["o"] + np.array([0, -rng.uniform(60, 90), -self.pelvis["Ls"] * 0.95])
        blr = rng.uniform(25, 55)
        e = self.ellipsoid(bl_c, (blr * 1.3, blr, blr))
        if e is not None:
            sl, e = e
            m = (e < 1) & cav[sl]
            hu[sl][m] = rng.uniform(0, 20)
        self.muscle_hu, self.fat_hu, self.hu = muscle_hu, fat_hu, hu

    def muscles_vessels(self):
        rng, grid = self.rng, self.grid
        hu, tex = self.hu, self.tex
        X = grid.x[None, None, :]
        Y = grid.y[None, :, None]
        Z = grid.z[:, None, None]
        col = lambda t: np.asarray(t, np.float32)[:, None, None]  # noqa: E731
        sx, sy, W, D, lev = col(self.t_sx), col(self.t_sy), col(self.t_W), col(self.t_D), col(self.t_lev)
        inside = self.dist_in > self.fat_sc * 0.8 + 3
        mh = self.muscle_hu
        fatty = rng.uniform(0, 0.6)
        # paraspinal muscles (erector spinae + multifidus), gluteal muscles lower down
        wpara = rng.uniform(30, 42) * self.g
        dep = float(np.clip(self.back - 20 - self.fat_sc, 25, 80))
        lat = 0.5 * wpara + np.clip(lev - 25.5, 0, 3) * 35
        for sg in (-1.0, 1.0):
            e = ((X - (sx + sg * lat)) / (wpara * (1 + 0.3 * np.clip(lev - 25.5, 0, 2)))) ** 2 + \
                ((Y - (sy + D * 0.5 + dep * 0.55)) / (dep * 0.62)) ** 2
            m = inside & (e < 1) & ~self.lungs & (hu < 200)
            hu[m] = (mh + 6 * tex[m]) - fatty * 100 * np.clip(tex[m] - 0.8, 0, 1)
        # quadratus lumborum
        ql_r = np.clip((lev - 19) / 4, 0, 1) * np.clip((25 - lev), 0, 1) * 14 * self.g
        q = self.abd & (((np.abs(X - sx) - (wpara + 22)) ** 2 + (Y - (sy + D * 0.5)) ** 2) < ql_r ** 2)
        hu[q] = mh + 6 * tex[q]
        # psoas / iliopsoas
        pr = np.clip((lev - 19.3) / 4.7, 0, 1) ** 0.8 * rng.uniform(18, 28) * self.g
        plat = W * 0.5 + pr * 0.85 + np.clip(lev - 24.5, 0, 3) * 20
        pant = np.clip(lev - 24.5, 0, 3) * -10
        for sg in (-1.0, 1.0):
            ps = self.abd & (((X - (sx + sg * plat)) / 1.0) ** 2 + ((Y - (sy + pant)) / 0.95) ** 2 < pr ** 2)
            hu[ps] = mh + 6 * tex[ps]
        # aorta / IVC / iliac vessels (bifurcation near L4)
        ao_hu = {"none": rng.uniform(35, 50), "arterial": rng.uniform(250, 420), "venous": rng.uniform(140, 200)}
        iv_hu = {"none": rng.uniform(30, 45), "arterial": rng.uniform(60, 100), "venous": rng.uniform(120, 170)}
        ra = rng.uniform(9, 13) * self.g
        rv = rng.uniform(9, 13) * self.g
        bif = self.vmap[_L[4]].center[2] + rng.uniform(-10, 15)
        below = np.clip((bif - Z) * 0.35, 0, None)
        calc = rng.random() < 0.35
        tis = self.cavity | self.lungs
        for kind in ("a", "v"):
            r = ra if kind == "a" else rv
            xo = sx + (rng.uniform(8, 18) if kind == "a" else -rng.uniform(18, 28))
            yo = sy - D * 0.5 - r - 2 + (6 * np.clip(19.5 - lev, 0, 1) if kind == "a" else 0)
            hv = ao_hu[self.contrast] if kind == "a" else iv_hu[self.contrast]
            for sg in (-1.0, 1.0):
                xx = xo + sg * below
                rr = np.where(Z > bif, r, r * 0.7)
                yy = yo + np.clip(bif - Z, 0, None) * 0.15
                ysc = 1.0 if kind == "a" else 1.4
                dd = np.sqrt((X - xx) ** 2 + ((Y - yy) * ysc) ** 2)
                m = tis & (dd < rr) & (lev < 27.3)
                if kind == "v":
                    m &= ~self.liver | (lev > 19)
                hu[m] = hv
                if calc and kind == "a":
                    cm = m & (dd > rr - 2.0) & (tex > 1.2)
                    hu[cm] = rng.uniform(300, 700)
        self.draw_canal_discs()

    def draw_canal_discs(self):
        rng, grid, hu = self.rng, self.grid, self.hu
        csf = rng.uniform(0, 20)
        for vt in self.verts:
            b = vt.D / 2 * 0.88
            bx = grid.local_box(vt.center, vt.R, (-20, b - 2, -vt.H), (20, b + 26, vt.H))
            if bx is None:
                continue
            sl, u, v, w = bx
            cr = 7.5 if vt.kind == "L" else 6.5
            d = np.sqrt((u / 1.3) ** 2 + (v - b - 9) ** 2)
            h = hu[sl]
            h[d < cr + 2.5] = self.fat_hu + 20
            h[d < cr] = csf
        # discs between consecutive vertebrae (and L5/S1)
        seq = sorted(self.verts, key=lambda v: v.s)
        dhu_n = rng.uniform(70, 95)
        for lo_v, up_v in zip(seq[:-1], seq[1:]):
            self._disc(lo_v, up_v, dhu_n)
        self._disc(None, seq[0], dhu_n)

    def _disc(self, lo_v, up_v, dhu):
        grid, hu = self.grid, self.hu
        if lo_v is None:
            c_lo = self.curve.at(0.0)
            R_lo = self.pelvis["Rs"]
            H_lo = 0.0
            lo_top = 0.0
        else:
            c_lo, R_lo, H_lo = lo_v.center, lo_v.R, lo_v.H
            lo_top = H_lo / 2
        c = 0.5 * (c_lo + up_v.center - up_v.R[:, 2] * up_v.H / 2 + R_lo[:, 2] * lo_top) if lo_v is not None else \
            0.5 * (c_lo + up_v.center - up_v.R[:, 2] * up_v.H / 2)
        Wd, Dd = up_v.W * 1.02, up_v.D * 1.0
        R = up_v.R
        bx = grid.local_box(c, R, (-Wd / 2 - 3, -Dd / 2 - 3, -25), (Wd / 2 + 3, Dd / 2 + 3, 25))
        if bx is None:
            return
        sl, u, v, w = bx
        vv = np.where(v > 0, v / 0.85, v)
        re = np.sqrt((u / (Wd / 2)) ** 2 + (vv / (Dd / 2)) ** 2)
        # distances to the two endplates
        dx = [a for a in (None,)]
        del dx
        wu = w - (np.float32((up_v.center - c) @ R[:, 2]) - up_v.H / 2)  # <0 below upper endplate
        # lower endplate in the lower frame
        off = (c - c_lo).astype(np.float32)
        Rl = R_lo.astype(np.float32)
        Rr = R.astype(np.float32)
        # local lower-frame w coordinate: project world offset
        wx = (u * Rr[0, 0] + v * Rr[0, 1] + w * Rr[0, 2] + off[0])
        wy = (u * Rr[1, 0] + v * Rr[1, 1] + w * Rr[1, 2] + off[1])
        wz = (u * Rr[2, 0] + v * Rr[2, 1] + w * Rr[2, 2] + off[2])
        wl = wx * Rl[0, 2] + wy * Rl[1, 2] + wz * Rl[2, 2] - lo_top
        m = (re < 1.03) & (wu < 2.5) & (wl > -2.5)
        h = hu[sl]
        h[m] = np.where(re[m] > 0.7, dhu + 15, dhu)

    # --- bone HU, metal, physics ----------------------------------------------------------------------------
    def bone_hu(self):
        rng = self.rng
        hu, sdf = self.hu, self.sdf
        bone = sdf < 0
        if self.osteo:
            canc, cort, ct = rng.uniform(40, 140), rng.uniform(600, 1000), rng.uniform(0.8, 1.3)
        else:
            canc, cort, ct = rng.uniform(140, 330), rng.uniform(800, 1500), rng.uniform(1.0, 2.0)
        d = -sdf[bone]
        wcort = np.clip(1.0 - d / ct, 0, 1) ** 0.8
        # trabecular speckle (white, correlated later by the PSF) + slow heterogeneity
        vals = canc + 45 * rng.standard_normal(d.shape, dtype=np.float32) + 25 * self.tex[bone] + (cort - canc) * wcort
        # femoral shafts / rib marrow vary a bit: keep simple
        hu[bone] = vals
        if self.screws:
            self.add_screws()

    def add_screws(self):
        rng, grid, hu = self.rng, self.grid, self.hu
        c = int(rng.choice([21, 22, 23]))
        levels = [self.vmap[c], self.vmap[c + 1]]
        heads = []
        metal = np.zeros(hu.shape, bool)
        for vt in levels:
            P = vt.P
            pu = 0.29 * vt.W
            v1 = vt.D / 2 * 0.85 + P["ped_len"]
            for sg in (-1.0, 1.0):
                a = vt.center + vt.R @ np.array([sg * (pu + 4), v1 + 12, 0.12 * vt.H])
                b = vt.center + vt.R @ np.array([sg * pu * 0.3, -vt.D * 0.25, 0.12 * vt.H])
                heads.append(a)
                bx = grid.box(np.minimum(a, b) - 8, np.maximum(a, b) + 8)
                if bx is None:
                    continue
                sl, X, Y, Z = bx
                d = _capsule(X, Y, Z, a, b, 3.0)
                metal[sl] |= np.broadcast_to(d < 0, metal[sl].shape)
        for sg in (-1.0, 1.0):
            hs = [h for h in heads if np.sign(h[0] - levels[0].center[0]) == sg]
            if len(hs) == 2:
                a, b = hs
                a, b = a + (a - b) * 0.25, b + (b - a) * 0.25
                bx = grid.box(np.minimum(a, b) - 6, np.maximum(a, b) + 6)
                if bx is not None:
                    sl, X, Y, Z = bx
                    metal[sl] |= np.broadcast_to(_capsule(X, Y, Z, a, b, 2.8) < 0, metal[sl].shape)
        self.metal = metal

    def add_arms(self):
        """Arms down beside the trunk (common in chest and trauma CT): unlabelled bone near the spine's level."""
        rng, grid, hu = self.rng, self.grid, self.hu
        X = grid.x[None, :]
        Y = grid.y[:, None]
        r_arm = rng.uniform(35, 50) * self.g
        r_bone = rng.uniform(9, 13) * self.g
        gap = rng.uniform(2, 25)
        for k in range(grid.zyx[0]):
            a, cy = float(self.t_a[k]), float(self.t_cy[k])
            for side in (-1.0, 1.0):
                cx = float(self.t_cx[k]) + side * (a + gap + r_arm)
                d = np.hypot(X - cx, Y - (cy + rng.normal(0, 1.0)))
                outside = self.dist_in[k] <= 0
                arm = (d < r_arm) & outside
                if not arm.any():
                    continue
                sl = hu[k]
                sl[arm] = np.where(d[arm] > r_arm - rng.uniform(4, 10), self.fat_hu, self.muscle_hu)
                bone = arm & (d < r_bone)
                sl[bone] = np.where(d[bone] > r_bone - 2.5, rng.uniform(900, 1400), rng.uniform(-40, 80))

    def add_table(self):
        """Scanner table under the back: carbon-fibre skins around a foam core, curved across."""
        rng, grid, hu = self.rng, self.grid, self.hu
        X = grid.x[None, None, :]
        Y = grid.y[None, :, None]
        top = float(np.max(self.t_cy + self.t_b)) + rng.uniform(0.0, 6.0)
        cx = float(np.mean(self.t_cx))
        curve = rng.uniform(0.0, 1.0 / 900.0)
        half_width = rng.uniform(200, 260)
        depth = (Y - top) - curve * (X - cx) ** 2  # mm below the table's upper surface
        inside = (depth >= 0) & (np.abs(X - cx) < half_width)
        skin, core = rng.uniform(1.5, 3.0), rng.uniform(25, 50)
        shell = inside & ((depth < skin) | ((depth >= skin + core) & (depth < 2 * skin + core)))
        foam = inside & (depth >= skin) & (depth < skin + core)
        free = self.dist_in <= 0
        hu[np.broadcast_to(foam, hu.shape) & free] = rng.uniform(-950, -800)
        hu[np.broadcast_to(shell, hu.shape) & free] = rng.uniform(150, 500)

    def physics(self):
        rng, grid = self.rng, self.grid
        if rng.random() < 0.6:
            self.add_table()
        if rng.random() < (0.5 if self.fov in ("thoracic", "slab", "upper") else 0.15):
            self.add_arms()
        img = grid.image(self.hu)
        del self.hu
        psf_xy = rng.uniform(0.5, 1.2)
        psf_z = max(rng.uniform(0.5, 1.0), 0.42 * grid.sp[2])
        sig = [max(psf_xy, 0.0), max(psf_xy, 0.0), psf_z]
        img = sitk.SmoothingRecursiveGaussian(img, sig)
        hu = sitk.GetArrayFromImage(img)
        if getattr(self, "metal", None) is not None and self.metal.any():
            hu[self.metal] = rng.uniform(3000, 4000)
            self.streaks(hu)
        # noise: bigger patients noisier
        sd = rng.uniform(5, 30) * (self.body_a / 160) ** 1.5
        sd = float(np.clip(sd, 5, 45))
        noise = rng.standard_normal(hu.shape, dtype=np.float32)
        if rng.random() < 0.5:
            ns = rng.uniform(0.5, 1.2)
            noise = ndimage.gaussian_filter(noise, (0.3, ns, ns))
            noise /= noise.std() + 1e-6
        hu += sd * noise
        del noise
        # ring/beam-hardening-ish: mild cupping
        if rng.random() < 0.3:
            X = grid.x[None, None, :]
            Y = grid.y[None, :, None]
            r2 = ((X - self.body_cx) ** 2 + (Y - self.body_cy) ** 2) / (self.body_a ** 2)
            hu -= (rng.uniform(5, 20) * np.clip(1 - r2, 0, 1)).astype(np.float32) * (self.dist_in > 0)
        np.clip(hu, -1024, 3071, out=hu)
        self.ct = np.rint(hu).astype(np.int16)

    def streaks(self, hu):
        rng, grid = self.rng, self.grid
        zs = np.nonzero(self.metal.any(axis=(1, 2)))[0]
        X = grid.x[None, :]
        Y = grid.y[:, None]
        amp = rng.uniform(150, 500)
        nl = int(rng.integers(8, 20))
        ph = rng.uniform(0, np.pi)
        for k in zs:
            m = self.metal[k]
            jj, ii = np.nonzero(m)
            my, mx = grid.y[jj].mean(), grid.x[ii].mean()
            th = np.arctan2(Y - my, X - mx)
            rr = np.sqrt((X - mx) ** 2 + (Y - my) ** 2)
            pat = np.sin(nl * th + ph)
            st = np.sign(pat) * np.abs(pat) ** 12 * amp * 60 / (rr + 60)
            # dark band between the two screw clusters
            xl = grid.x[ii]
            if xl.max() - xl.min() > 20:
                dark = np.exp(-((Y - my) ** 2) / (2 * 6.0 ** 2)) * ((X > xl.min()) & (X < xl.max()))
                st = st - amp * 0.8 * dark
            hu[k] += st.astype(np.float32) * (self.dist_in[k] > 0)

    def run(self):
        rng = self.rng
        self.body_cx_off = rng.normal(0, 8)
        self.make_pelvis_frame()
        self.make_grid()
        for attempt in range(4):
            self.slice_tables()
            self.build_bones()
            if self.fov not in ("thoracic", "slab"):
                break
            lum = np.isin(self.lab, (20, 21, 22, 23, 24, 25))
            if not lum.any():
                break
            kmax = int(np.nonzero(lum.any(axis=(1, 2)))[0].max())
            g = self.grid
            self.grid = _Grid(g.shape, g.sp, g.org + np.array([0, 0, (kmax + 1) * g.sp[2] + 1.0]))
        self.soft_tissue()
        self.muscles_vessels()
        self.bone_hu()
        self.physics()
        labels = self.lab
        ct_img = self.grid.image(self.ct)
        lab_img = self.grid.image(labels)
        # header orientation
        if rng.random() < 0.5:
            fixed = self.shape is not None or self.spacing is not None
            codes = _FLIP_CODES if fixed or rng.random() < 0.85 else _PERM_CODES
            code = str(rng.choice(codes))
            if code != "LPS":
                ct_img = sitk.DICOMOrient(ct_img, code)
                lab_img = sitk.DICOMOrient(lab_img, code)
        return ct_img, lab_img


def generate_phantom(seed: int, shape=None, spacing=None, fov: str | None = None,
                     shape_library=None) -> tuple[sitk.Image, sitk.Image]:
    """Generate one synthetic CT and its vertebra labels.

    Returns ``(ct, labels)``: ``ct`` int16 HU, ``labels`` uint8 with VerSe codes (8-19 T1-T12, 20-24 L1-L5,
    25 L6 when present, 26 sacrum; ribs, pelvis, femurs, sternum are bone with label 0). Both share one grid.
    ``shape`` (NX, NY, NZ) and ``spacing`` (SX, SY, SZ) in SimpleITK (x, y, z) order fix the grid; when None
    they are drawn at random. ``fov`` is one of :data:`FOV_CHOICES` or None (random). ``shape_library`` is a
    :class:`ShapeLibrary` (see :func:`load_shape_library`) or None for procedural vertebrae only.
    Deterministic for a given seed (and arguments).
    """
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be 3 positive ints (NX, NY, NZ), got {shape}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive floats (SX, SY, SZ), got {spacing}")
    return _Phantom(int(seed), shape, spacing, fov, shape_library).run()


def write_verse_dataset(outdir, n: int, seed: int, shape=None, spacing=None, fov=None, progress=None,
                        shape_library="auto") -> list[Path]:
    """Write ``n`` phantoms in VerSe layout: ``sub-XXX_ct.nii.gz`` and ``sub-XXX_seg-vert_msk.nii.gz``.

    XXX is the zero-padded index (at least 3 digits); item i uses seed ``seed + i``. ``progress`` (optional)
    is called as ``progress(i + 1, n)`` after each item. ``shape_library="auto"`` loads the default library
    when present (None: procedural only). Returns the list of written paths (CT, mask, CT, mask, ...).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    lib = load_shape_library() if shape_library == "auto" else shape_library
    width = max(3, len(str(max(n - 1, 0))))
    paths: list[Path] = []
    for i in range(int(n)):
        ct, lab = generate_phantom(seed + i, shape=shape, spacing=spacing, fov=fov, shape_library=lib)
        stem = f"sub-{i:0{width}d}"
        p_ct = outdir / f"{stem}_ct.nii.gz"
        p_lab = outdir / f"{stem}_seg-vert_msk.nii.gz"
        sitk.WriteImage(ct, str(p_ct), useCompression=True)
        sitk.WriteImage(lab, str(p_lab), useCompression=True)
        paths += [p_ct, p_lab]
        if progress is not None:
            progress(i + 1, n)
    return paths
