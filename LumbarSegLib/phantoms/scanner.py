"""What the scanner adds to a phantom: the table, arms beside the trunk, metal screws with streaks, the
point-spread blur, noise and cupping; ends with the int16 CT.

A mixin of :class:`generator._Phantom`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .geometry import _capsule


class _Scanner:
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
        if rng.random() < 0.3 and self.trabecular_hu is None:  # cupping would shift a known trabecular HU
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
