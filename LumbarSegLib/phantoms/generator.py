"""Assembly of one phantom: field of view and grid, per-slice anatomy tables, then bones, soft tissue and
scanner effects in a fixed order (so a seed always gives the same phantom), and writing VerSe datasets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import FOV_CHOICES  # defined in the package, which loads nothing heavy
from .anatomy import _Skeleton
from .geometry import _frame, _Grid
from .scanner import _Scanner
from .shapes import _L, load_shape_library
from .spine import _build_spine, _Curve, _proc_params
from .tissue import _SoftTissue

# FOV_CHOICES: "slab": a thin axial slab (20-60 mm) at the thoracolumbar junction above L1, like a limited chest or
# upper-abdomen series: a negative where T12 must not be called L1. "tight": a small spine-targeted box
# around two or three lumbar vertebrae, where little context tells which vertebrae they are.
_FOV_PROBS = (0.33, 0.24, 0.14, 0.14, 0.08, 0.04, 0.03)

# orientation codes that keep the axis order (so a requested shape/spacing stays as given)
_FLIP_CODES = ("LPS", "RAS", "LAS", "RPS", "LPI", "RAI", "LAI", "RPI")
_PERM_CODES = ("PIR", "ASL", "RSA", "LIP")


class _Phantom(_Skeleton, _SoftTissue, _Scanner):
    def __init__(self, seed, shape, spacing, fov, shape_library, trabecular_hu=None):
        self.rng = rng = np.random.default_rng(seed)
        self.trabecular_hu = trabecular_hu
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

    # --- assembly: the order of the steps fixes the random stream of a seed ----------------------------
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
                     shape_library=None, trabecular_hu: float | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Generate one synthetic CT and its vertebra labels.

    Returns ``(ct, labels)``: ``ct`` int16 HU, ``labels`` uint8 with VerSe codes (8-19 T1-T12, 20-24 L1-L5,
    25 L6 when present, 26 sacrum; ribs, pelvis, femurs, sternum are bone with label 0). Both share one grid.
    ``shape`` (NX, NY, NZ) and ``spacing`` (SX, SY, SZ) in SimpleITK (x, y, z) order fix the grid; when None
    they are drawn at random. ``fov`` is one of :data:`FOV_CHOICES` or None (random). ``shape_library`` is a
    :class:`ShapeLibrary` (see :func:`load_shape_library`) or None for procedural vertebrae only.
    Deterministic for a given seed (and arguments).

    ``trabecular_hu`` (optional) gives every bone a known cancellous (trabecular) HU: the drawn value and its
    slow heterogeneity are replaced by it and the scanner's cupping is left out, so the CT's trabecular bone
    reads that value plus zero-mean noise (the test phantom of :mod:`LumbarSegLib.measures.trabecular`).
    """
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be 3 positive ints (NX, NY, NZ), got {shape}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive floats (SX, SY, SZ), got {spacing}")
    return _Phantom(int(seed), shape, spacing, fov, shape_library,
                    None if trabecular_hu is None else float(trabecular_hu)).run()


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
