"""Shape library: real vertebra masks (VerSe / TotalSegmentator layouts) turned into signed distance fields
with their body frame and size, so the generator can draw real vertebra shapes; and the VerSe codes."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..inference.morphology import ends_reached
from .geometry import _frame

# VerSe codes
_T = {i: 7 + i for i in range(1, 13)}  # T1..T12 -> 8..19
_L = {i: 19 + i for i in range(1, 7)}  # L1..L6 -> 20..25
SACRUM = 26


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


SHAPE_LIBRARY_ENV = "LUMBARSEG_SHAPE_LIBRARY"  # overrides the default folder (e.g. data carried to a GPU machine)


# The real vertebra masks beside a checkout (../shared/data/masks): the shape library unless
# $LUMBARSEG_SHAPE_LIBRARY names another.
DEFAULT_MASKS_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "masks"


def _default_masks_root():
    override = os.environ.get(SHAPE_LIBRARY_ENV)
    return Path(override) if override else DEFAULT_MASKS_ROOT


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
        if ends_reached(sl, arr.shape):
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

    Default root: ``$LUMBARSEG_SHAPE_LIBRARY`` when set, else ``<repo>/../shared/data/masks``;
    ``LUMBARSEG_SHAPE_LIBRARY=none`` asks for procedural shapes only (e.g. phantoms for a model scored on real
    cases whose own masks are in the default library). Returns None when absent or empty. Cached per root.
    """
    if root is None and os.environ.get(SHAPE_LIBRARY_ENV, "").lower() == "none":
        return None
    root = Path(root) if root is not None else _default_masks_root()
    if not root.is_dir():
        return None
    return _load_library_cached(str(root.resolve()))
