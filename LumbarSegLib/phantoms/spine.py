"""The spine model: vertebra sizes per level (procedural or from the shape library), the spinal curve
(lordosis, kyphosis, scoliosis, tilt), and the procedural vertebra SDF (body, pedicles, laminae, processes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import _capsule, _rot, _smin
from .shapes import _L, _T, VertebraShape


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
