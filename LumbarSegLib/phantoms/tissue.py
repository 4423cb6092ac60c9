"""Soft tissue of a phantom in HU: body outline, skin, fat, abdominal wall, lungs and heart, liver,
spleen, stomach, kidneys, bowel, bladder, muscles, vessels, spinal canal, discs, and bone density.

A mixin of :class:`generator._Phantom`: it paints ``hu`` slice tables computed by the generator.
"""

from __future__ import annotations

import numpy as np

from .geometry import _rot, _smooth_field
from .shapes import _L, _T


class _SoftTissue:
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
        heterogeneity = 25 * self.tex[bone]
        if self.trabecular_hu is not None:  # a known trabecular HU: no slow heterogeneity around it
            canc, heterogeneity = self.trabecular_hu, 0.0
        vals = canc + 45 * rng.standard_normal(d.shape, dtype=np.float32) + heterogeneity + (cort - canc) * wcort
        # femoral shafts / rib marrow vary a bit: keep simple
        hu[bone] = vals
        if self.screws:
            self.add_screws()
