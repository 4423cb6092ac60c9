"""Bones of a phantom: vertebrae (labelled with their VerSe code), ribs, sacrum (labelled), pelvis, femurs
and sternum (unlabelled bone), composed as signed distance fields into the phantom's ``sdf``/``lab`` arrays.

A mixin of :class:`generator._Phantom`: it reads the phantom's grid, spine, curve and body tables.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .geometry import _capsule, _frame, _rot, _smin
from .shapes import _L, _T, SACRUM
from .spine import _elastic, _proc_vertebra_sdf, _tp_tip_local

_BIG = np.float32(50.0)


class _Skeleton:
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
