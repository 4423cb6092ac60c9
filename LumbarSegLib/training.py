"""Training of both networks (localizer + XUNet) on VerSe-layout data or generated phantoms.

Data flow (one code path with inference: every network input is made by :mod:`LumbarSegLib.preprocess`)

* A case is a CT plus its VerSe vertebra mask (``*_ct.nii.gz`` + ``*_seg-vert*_msk.nii.gz``, flat or in
  VerSe's nested ``rawdata/`` + ``derivatives/`` layout). VerSe codes 20-24 become 1-5 (L1-L5); every
  other code (T12, L6, sacrum, ...) is background.
* Each case is precomputed once into a ``.npz`` cache: the localizer input
  (``preprocess.localizer_input`` of the canonical CT) with its heatmap target (lumbar mask averaged onto
  the localizer grid, Gaussian-smoothed, max 1; all zero without a lumbar vertebra), and ``n_crops``
  XUNet crops (``preprocess.crop_input``) with nearest-neighbour labels. Crop 0 is exactly the box the
  inference crop rule (``preprocess.heatmap_box``) gives on the ground-truth heatmap, the others are
  jittered copies of it (robustness to imperfect localizer boxes). A case without a lumbar vertebra gets
  crops around its lowest visible vertebrae (where a localizer would most likely fire) labelled all
  background: this teaches "T12 is not L1".
* Augmentation runs on the fly on the small grids (rotation, scaling, left-right flip, mild elastic
  deformation; intensity scale/shift/gamma, noise, blur). No flip along y or z: z order defines L1..L5.
* The two networks train in two processes (one thread each); when the cheaper localizer finishes, the
  XUNet process takes both threads. Each process writes resumable checkpoints (``weights_only``-loadable)
  every few minutes; the parent assembles a model bundle (:func:`models.save_model`) from the latest
  checkpoints as they appear, so a usable model exists early.

Phantom seeds: training uses seeds below :data:`EVAL_SEED_START` (100000); the held-out evaluation
(:mod:`LumbarSegLib.evaluation`) uses seeds from 100000 up, so no evaluation phantom is ever trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from . import preprocess
from .constants import LABEL_NAMES, NUM_CLASSES, VERSE_LUMBAR
from .errors import InputError, LumbarSegError
from .networks import CONFIGS, ModelConfig, build_networks, load_compatible_state

CACHE_VERSION = 1
EVAL_SEED_START = 100_000  # phantom seeds >= this are reserved for held-out evaluation
# Field-of-view mix of training phantoms: ~15 % thoracic-only negatives, the rest lumbar or partial.
TRAIN_FOV_PROBS = {"abdomen": 0.30, "lumbar": 0.25, "lower": 0.15, "upper": 0.15, "thoracic": 0.15}
TRAIN_Z_SPACINGS = (1.5, 2.0, 2.5, 3.0)
HEATMAP_SIGMA = 1.0  # localizer voxels
DISC_BRIDGE_MM = 24.0  # gaps along z up to this are filled in the heatmap target
JITTER = 0.08  # max shift of each crop face, as a fraction of the box size
LUMBAR_SPAN_MM = 190.0  # typical L1-L5 height, used for the crops of cases without lumbar vertebrae

_LUT = np.zeros(256, dtype=np.uint8)
for _code, _label in VERSE_LUMBAR.items():
    _LUT[_code] = _label


# ------------------------------------------------------------------------------------------------------
# Dataset discovery and labels
# ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    case_id: str
    ct: Path
    seg: Path


def map_verse_labels(arr: np.ndarray) -> np.ndarray:
    """VerSe codes -> 0..5 (20-24 = L1-L5 -> 1-5; everything else, including L6 and the sacrum, -> 0)."""
    arr = np.asarray(arr)
    out = np.zeros(arr.shape, dtype=np.uint8)
    inside = (arr >= 0) & (arr < 256)
    out[inside] = _LUT[arr[inside].astype(np.int64)]
    return out


_CT_RE = re.compile(r"^(?P<key>.+?)_ct\.nii(\.gz)?$")
_SEG_RE = re.compile(r"^(?P<key>.+?)_msk\.nii(\.gz)?$")


def _seg_key(name: str) -> str | None:
    m = _SEG_RE.match(name)
    if not m or "seg-vert" not in name:
        return None
    return m.group("key").replace("_seg-vert", "")


def find_cases(root) -> list[Case]:
    """All CT + vertebra-mask pairs under ``root`` (flat VerSe layout or nested rawdata/derivatives).

    ``sub-X_ct.nii.gz`` pairs with ``sub-X_seg-vert_msk.nii.gz`` (any extra BIDS entities kept in the same
    order, e.g. ``sub-ct_label-22_ct`` <-> ``sub-ct_seg-vert_label-22_msk``).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"Training data folder not found: {root}")
    segs: dict[str, list[Path]] = {}
    for p in root.rglob("*_msk.nii*"):
        key = _seg_key(p.name)
        if key and not any(part.startswith(".") for part in p.relative_to(root).parts):
            segs.setdefault(key, []).append(p)
    cases = []
    for p in sorted(root.rglob("*_ct.nii*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        m = _CT_RE.match(p.name)
        if not m or m.group("key") not in segs:
            continue
        cands = segs[m.group("key")]
        # Prefer the mask in the same folder, then the one whose path shares the most folder names.
        best = max(cands, key=lambda s: (s.parent == p.parent, len(set(s.parts) & set(p.parts))))
        rel = p.relative_to(root)
        case_id = "__".join([*rel.parts[:-1], m.group("key")]).replace("/", "_")
        cases.append(Case(case_id, p, best))
    return cases


# ------------------------------------------------------------------------------------------------------
# Precomputation
# ------------------------------------------------------------------------------------------------------

def _canonical_labels(seg: sitk.Image, ct_canonical: sitk.Image) -> sitk.Image:
    """Mask -> canonical orientation on the CT's canonical grid (nearest neighbour if grids differ)."""
    seg_c = preprocess.to_canonical(seg)
    if (seg_c.GetSize() != ct_canonical.GetSize()
            or not np.allclose(seg_c.GetOrigin(), ct_canonical.GetOrigin(), atol=1e-2)
            or not np.allclose(seg_c.GetSpacing(), ct_canonical.GetSpacing(), atol=1e-3)):
        seg_c = sitk.Resample(seg_c, ct_canonical, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return seg_c


def heatmap_target(lumbar_mask: sitk.Image, config: ModelConfig, sigma: float = HEATMAP_SIGMA) -> np.ndarray:
    """The localizer's target: lumbar-mask coverage on the localizer grid, smoothed, max 1 (or all 0)."""
    from scipy import ndimage

    lo, hi = preprocess.whole_box(lumbar_mask)
    frac = preprocess.resample_box(sitk.Cast(lumbar_mask, sitk.sitkFloat32), lo, hi, config.localizer_input,
                                   sitk.sitkLinear, default_value=0.0)
    if frac.max() <= 0:
        return np.zeros_like(frac, dtype=np.float32)
    # Bridge the intervertebral discs along z (up to ~GAP_MM) so the spine is one bright region: the crop
    # rule keeps only the largest connected region above 0.3 x max.
    grid_mm = np.asarray(lumbar_mask.GetSize()) * np.asarray(lumbar_mask.GetSpacing()) / np.asarray(config.localizer_input)
    k = int(2 * math.ceil(DISC_BRIDGE_MM / grid_mm[2] / 2) + 1)
    solid = ndimage.binary_closing(frac > 0.25, structure=np.ones((k, 1, 1), bool), border_value=0)
    solid |= frac > 0.25
    heat = ndimage.gaussian_filter(np.maximum(frac, solid.astype(np.float32)), sigma)
    return (heat / heat.max()).astype(np.float32)


def jitter_box(lo, hi, image_size, rng: np.random.Generator, amount: float = JITTER):
    """Move each face of the box [lo, hi) by up to ``amount`` x box size; clipped to the image."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    size = hi - lo
    lo2 = lo + rng.uniform(-amount, amount, 3) * size
    hi2 = hi + rng.uniform(-amount, amount, 3) * size
    image_size = np.asarray(image_size, float)
    lo2 = np.clip(np.floor(lo2), 0, image_size - 2)
    hi2 = np.clip(np.ceil(hi2), lo2 + 2, image_size)
    return lo2.astype(int), hi2.astype(int)


def negative_box(spine: np.ndarray, spacing_xyz, image_size, grow: float = 0.1):
    """Box around the lowest visible vertebrae (``spine`` = any vertebra label, (z, y, x)), or None."""
    if not spine.any():
        return None
    zs = np.flatnonzero(spine.any(axis=(1, 2)))
    z0 = zs[0]
    z1 = min(zs[-1] + 1, z0 + int(round(LUMBAR_SPAN_MM / spacing_xyz[2])))
    part = spine[z0:z1]
    ys = np.flatnonzero(part.any(axis=(0, 2)))
    xs = np.flatnonzero(part.any(axis=(0, 1)))
    image_size = np.asarray(image_size, float)
    lo = np.array([xs[0], ys[0], z0], float) - grow * image_size
    hi = np.array([xs[-1] + 1, ys[-1] + 1, z1], float) + grow * image_size
    lo = np.clip(np.floor(lo), 0, image_size).astype(int)
    hi = np.clip(np.ceil(hi), 0, image_size).astype(int)
    return lo, hi


def precompute_case(ct: sitk.Image, seg: sitk.Image, config: ModelConfig, n_crops: int = 3,
                    seed: int = 0) -> dict:
    """All network inputs/targets of one case (see the module docstring)."""
    rng = np.random.default_rng(seed)
    ct_c = preprocess.to_canonical(ct)
    seg_c = _canonical_labels(seg, ct_c)
    raw = sitk.GetArrayFromImage(seg_c)
    lab = map_verse_labels(raw)
    lab_img = sitk.GetImageFromArray(lab)
    lab_img.CopyInformation(ct_c)
    size = np.asarray(ct_c.GetSize())
    positive = bool(lab.any())

    loc_x = preprocess.localizer_input(ct_c, config)
    loc_y = heatmap_target(sitk.Cast(lab_img > 0, sitk.sitkUInt8), config)

    if positive:
        base = preprocess.heatmap_box(loc_y, size)
    else:
        base = negative_box(raw > 0, ct_c.GetSpacing(), size)
    if base is None:  # no vertebra at all: a central box
        base = (np.floor(size * 0.25).astype(int), np.ceil(size * 0.75).astype(int))
    crops_x, crops_y, boxes = [], [], []
    for k in range(n_crops):
        lo, hi = (np.asarray(base[0]), np.asarray(base[1])) if k == 0 else jitter_box(*base, size, rng)
        crops_x.append(preprocess.crop_input(ct_c, lo, hi, config))
        y = preprocess.resample_box(lab_img, lo, hi, config.xunet_input, sitk.sitkNearestNeighbor,
                                    default_value=0, antialias=False)
        crops_y.append(y.astype(np.uint8))
        boxes.append(np.stack([lo, hi]))
    present = sorted(set(np.unique(lab).tolist()) - {0})
    return {
        "loc_x": loc_x.astype(np.float16), "loc_y": loc_y.astype(np.float16),
        "crop_x": np.stack(crops_x).astype(np.float16), "crop_y": np.stack(crops_y),
        "boxes": np.stack(boxes).astype(np.int32), "image_size": size.astype(np.int32),
        "spacing": np.asarray(ct_c.GetSpacing(), np.float32), "positive": np.array(positive),
        "present": np.array(present, dtype=np.int32),
    }


def _config_tag(config: ModelConfig, n_crops: int) -> str:
    text = json.dumps([config.localizer_input, config.xunet_input, config.window_level, config.window_width,
                       n_crops, CACHE_VERSION, HEATMAP_SIGMA, JITTER, DISC_BRIDGE_MM])
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def cache_path(cache_dir: Path, case: Case, config: ModelConfig, n_crops: int) -> Path:
    return Path(cache_dir) / f"{case.case_id}.{_config_tag(config, n_crops)}.npz"


def _precompute_one(job) -> tuple[str, str | None]:
    case, cache_dir, config_dict, n_crops = job
    config = ModelConfig.from_dict(config_dict)
    out = cache_path(cache_dir, case, config, n_crops)
    if out.is_file():
        return str(out), None
    try:
        torch.set_num_threads(1)
        ct = sitk.ReadImage(str(case.ct))
        seg = sitk.ReadImage(str(case.seg))
        seed = int(hashlib.sha1(case.case_id.encode()).hexdigest()[:8], 16)
        data = precompute_case(ct, seg, config, n_crops=n_crops, seed=seed)
        tmp = out.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **data)
        os.replace(tmp, out)
        return str(out), None
    except Exception as exc:  # noqa: BLE001 - report and skip a broken case
        return str(out), f"{case.case_id}: {exc}"


def _pool_map(func, jobs, workers: int, desc: str):
    from tqdm import tqdm

    results = []
    if workers <= 1 or len(jobs) <= 1:
        for job in tqdm(jobs, desc=desc, mininterval=5, file=sys.stderr):
            results.append(func(job))
        return results
    with mp.get_context("spawn").Pool(workers) as pool:
        for r in tqdm(pool.imap(func, jobs), total=len(jobs), desc=desc, mininterval=5, file=sys.stderr):
            results.append(r)
    return results


def prepare_cache(cases: list[Case], cache_dir, config: ModelConfig, n_crops: int = 3, workers: int = 1) -> list[Path]:
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(c, cache_dir, config.to_dict(), n_crops) for c in cases]
    results = _pool_map(_precompute_one, jobs, workers, "precompute")
    paths = []
    for path, err in results:
        if err:
            print(f"WARNING: skipped {err}", file=sys.stderr)
        else:
            paths.append(Path(path))
    if not paths:
        raise InputError("No usable training case (see the warnings above).")
    return paths


# ------------------------------------------------------------------------------------------------------
# Phantoms
# ------------------------------------------------------------------------------------------------------

def phantom_spec(seed: int, spacing_xy=(1.6, 2.4), fovs=None) -> tuple[str, tuple[float, float, float]]:
    """Deterministic field of view and (coarse) spacing of training phantom ``seed``.

    ``fovs`` restricts the mix to those fields of view, drawn uniformly (e.g. extra hard negatives).
    """
    rng = np.random.default_rng([int(seed), 7919])
    probs = {f: 1.0 / len(fovs) for f in fovs} if fovs else TRAIN_FOV_PROBS
    names = list(probs)
    fov = str(rng.choice(names, p=[probs[f] for f in names]))
    sxy = float(rng.uniform(*spacing_xy))
    sz = float(rng.choice(TRAIN_Z_SPACINGS))
    return fov, (round(sxy, 3), round(sxy, 3), sz)


def _write_phantom(job):
    seed, outdir, spacing_xy, fovs = job
    from . import phantoms

    stem = Path(outdir) / f"sub-ph{seed:06d}"
    ct_path, seg_path = Path(f"{stem}_ct.nii.gz"), Path(f"{stem}_seg-vert_msk.nii.gz")
    if ct_path.is_file() and seg_path.is_file():
        return seed, None
    fov, spacing = phantom_spec(seed, spacing_xy, fovs)
    try:
        ct, lab = phantoms.generate_phantom(seed, spacing=spacing, fov=fov,
                                            shape_library=phantoms.load_shape_library())
        tmp_seg = seg_path.with_name("tmp-" + seg_path.name)
        tmp_ct = ct_path.with_name("tmp-" + ct_path.name)
        sitk.WriteImage(lab, str(tmp_seg), useCompression=True)
        sitk.WriteImage(ct, str(tmp_ct), useCompression=True)
        os.replace(tmp_seg, seg_path)
        os.replace(tmp_ct, ct_path)
        return seed, None
    except Exception as exc:  # noqa: BLE001
        return seed, f"phantom {seed}: {exc}"


def generate_phantoms(outdir, n: int, seed: int, workers: int = 1, spacing_xy=(1.6, 2.4), fovs=None) -> Path:
    """Write phantoms ``seed .. seed+n-1`` (VerSe layout) into ``outdir``; existing ones are reused."""
    if seed < 0 or seed + n > EVAL_SEED_START:
        raise InputError(f"Training phantom seeds must lie in 0..{EVAL_SEED_START - 1} (seeds from "
                         f"{EVAL_SEED_START} up are reserved for held-out evaluation); got {seed}..{seed + n - 1}.")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = [(s, str(outdir), tuple(spacing_xy), tuple(fovs) if fovs else None) for s in range(seed, seed + n)]
    for _, err in _pool_map(_write_phantom, jobs, workers, "phantoms"):
        if err:
            print(f"WARNING: {err}", file=sys.stderr)
    return outdir


# ------------------------------------------------------------------------------------------------------
# Augmentation (torch, on one sample at a time)
# ------------------------------------------------------------------------------------------------------

def _rotation(angles) -> np.ndarray:
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
    rot = _rotation(np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, 3)))
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
    """Windowed-domain intensity jitter of a (1, 1, D, H, W) image in [0, 1]."""
    if rng.random() < 0.3:
        x = x.clamp(0, 1) ** float(math.exp(rng.uniform(-0.3, 0.3)))
    if rng.random() < 0.5:
        x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05))
    if rng.random() < 0.2:
        x = _gaussian_blur(x, float(rng.uniform(0.4, 1.0)))
    if rng.random() < 0.3:
        x = x + torch.randn_like(x) * float(rng.uniform(0.0, 0.03))
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


# ------------------------------------------------------------------------------------------------------
# Losses and scores
# ------------------------------------------------------------------------------------------------------

def localizer_loss(pred: torch.Tensor, target: torch.Tensor, fg_weight: float = 10.0) -> torch.Tensor:
    """MSE weighted up on the lumbar spine (the heatmap is mostly background)."""
    return ((pred - target) ** 2 * (1.0 + fg_weight * target)).mean()


def dice_ce_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice over L1..L5); ``labels`` (N, D, H, W) int64."""
    ce = F.cross_entropy(logits, labels)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(labels, NUM_CLASSES).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return ce + (1.0 - dice.mean())


def dice_per_label(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    out = {}
    for k in LABEL_NAMES:
        p, r = pred == k, ref == k
        total = int(p.sum()) + int(r.sum())
        if total:
            out[k] = 2.0 * int((p & r).sum()) / total
    return out


# ------------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------------

def _load_items(paths, kind: str):
    items = []
    for p in paths:
        with np.load(p) as z:
            if kind == "localizer":
                items.append({"x": z["loc_x"], "y": z["loc_y"], "positive": bool(z["positive"]),
                              "size": z["image_size"]})
            else:
                items.append({"x": z["crop_x"], "y": z["crop_y"], "positive": bool(z["positive"])})
    return items


def _lr(base: float, progress: float, step: int, warmup: int = 20) -> float:
    warm = min(1.0, (step + 1) / warmup)
    return base * warm * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def _validate(kind: str, net, items) -> dict:
    if not items:
        return {}
    net.eval()
    out: dict = {}
    with torch.inference_mode():
        if kind == "localizer":
            losses, ious, pos_peaks, neg_peaks = [], [], [], []
            for it in items:
                x = torch.from_numpy(it["x"].astype(np.float32))[None, None]
                y = torch.from_numpy(it["y"].astype(np.float32))[None, None]
                p = net(x)
                losses.append(float(localizer_loss(p, y)))
                heat = p[0, 0].numpy()
                if it["positive"]:
                    pos_peaks.append(float(heat.max()))
                    a = preprocess.heatmap_box(heat, it["size"])
                    b = preprocess.heatmap_box(it["y"].astype(np.float32), it["size"])
                    ious.append(_box_iou(a, b))
                else:
                    neg_peaks.append(float(heat.max()))
            out = {"val_loss": float(np.mean(losses)), "box_iou": float(np.mean(ious)) if ious else float("nan"),
                   "pos_found": float(np.mean([v >= 0.35 for v in pos_peaks])) if pos_peaks else float("nan"),
                   "neg_fired": float(np.mean([v >= 0.35 for v in neg_peaks])) if neg_peaks else float("nan")}
        else:
            per = {k: [] for k in LABEL_NAMES}
            losses, neg_fp = [], []
            for it in items:
                x = torch.from_numpy(it["x"][0].astype(np.float32))[None, None]
                y = torch.from_numpy(it["y"][0].astype(np.int64))[None]
                logits = net(x)
                losses.append(float(dice_ce_loss(logits, y)))
                pred = logits.argmax(1)[0].numpy()
                if it["positive"]:
                    for k, v in dice_per_label(pred, it["y"][0]).items():
                        per[k].append(v)
                else:
                    neg_fp.append(float((pred > 0).mean()))
            out = {"val_loss": float(np.mean(losses))}
            for k, v in per.items():
                out[f"dice_{LABEL_NAMES[k]}"] = float(np.mean(v)) if v else float("nan")
            vals = [out[f"dice_{n}"] for n in LABEL_NAMES.values() if math.isfinite(out[f"dice_{n}"])]
            out["dice_mean"] = float(np.mean(vals)) if vals else float("nan")
            out["neg_fp_fraction"] = float(np.mean(neg_fp)) if neg_fp else float("nan")
    net.train()
    return out


def _box_iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    lo = np.maximum(a[0], b[0])
    hi = np.minimum(a[1], b[1])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    va, vb = float(np.prod(a[1] - a[0])), float(np.prod(b[1] - b[0]))
    return inter / (va + vb - inter) if va + vb - inter > 0 else 0.0


def _format_val(kind: str, v: dict) -> str:
    if not v:
        return "no validation cases"
    if kind == "localizer":
        return (f"val loss {v['val_loss']:.4f}  box IoU {v['box_iou']:.3f}  lumbar found {v['pos_found']:.2f}  "
                f"negatives fired {v['neg_fired']:.2f}")
    dice = "  ".join(f"{n} {v[f'dice_{n}']:.3f}" for n in LABEL_NAMES.values())
    return f"val loss {v['val_loss']:.4f}  Dice {dice}  mean {v['dice_mean']:.3f}  negatives FP {v['neg_fp_fraction']:.4f}"


def checkpoint_paths(ckpt_dir, name: str) -> dict[str, Path]:
    ckpt_dir = Path(ckpt_dir)
    return {k: ckpt_dir / f"{name}.{k}.ckpt" for k in ("localizer", "xunet")}


def _save_ckpt(path: Path, state: dict):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A training checkpoint (plain tensors/numbers/strings: loads with ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def train_worker(kind: str, train_paths, val_paths, config_dict: dict, opts: dict, ckpt_path: str,
                 resume_path: str | None, init_state: dict | None = None, done_flag: str | None = None,
                 other_done_flag: str | None = None):
    """Train one network; runs in its own process. ``opts``: lr, batch, minutes, epochs, ckpt_minutes, ..."""
    from tqdm import tqdm

    torch.set_num_threads(int(opts.get("threads", 1)))
    torch.manual_seed(int(opts.get("seed", 0)) + (0 if kind == "localizer" else 1))
    rng = np.random.default_rng([int(opts.get("seed", 0)), 0 if kind == "localizer" else 1])
    config = ModelConfig.from_dict(config_dict)
    loc, xu = build_networks(config)
    net = loc if kind == "localizer" else xu
    net = net.to(memory_format=torch.channels_last_3d)
    optim = torch.optim.Adam(net.parameters(), lr=opts["lr"])
    state = {"step": 0, "epoch": 0, "elapsed": 0.0, "history": []}
    if resume_path and Path(resume_path).is_file():
        ck = load_checkpoint(resume_path)
        net.load_state_dict(ck["state"])
        optim.load_state_dict(ck["optim"])
        state = {"step": int(ck["step"]), "epoch": int(ck["epoch"]), "elapsed": float(ck["elapsed"]),
                 "history": json.loads(ck.get("history_json", "[]"))}
        print(f"[{kind}] resumed from {resume_path}: step {state['step']}, epoch {state['epoch']}, "
              f"{state['elapsed'] / 60:.1f} min done", file=sys.stderr, flush=True)
    elif init_state is not None:
        load_compatible_state(net, init_state)

    train_items = _load_items(train_paths, kind)
    val_items = _load_items(val_paths, kind)
    budget_s = float(opts["minutes"]) * 60.0 if opts.get("minutes") else None
    max_epochs = opts.get("epochs")
    max_steps = opts.get("max_steps")
    batch = int(opts.get("batch", 1))
    steps_per_epoch = max(1, math.ceil(len(train_items) / batch))
    total_steps = (max_epochs * steps_per_epoch) if max_epochs else None
    if max_steps:
        total_steps = min(total_steps, max_steps) if total_steps else max_steps

    def progress() -> float:
        fr = []
        if budget_s:
            fr.append(state["elapsed"] / budget_s)
        if total_steps:
            fr.append(state["step"] / total_steps)
        return max(fr) if fr else 0.0

    def finished() -> bool:
        return progress() >= 1.0

    def save(done: bool, last_val: dict | None = None, train_loss: float | None = None):
        _save_ckpt(Path(ckpt_path), {
            "kind": kind, "config": config.to_dict(), "state": net.state_dict(), "optim": optim.state_dict(),
            "step": state["step"], "epoch": state["epoch"], "elapsed": state["elapsed"], "done": done,
            "history_json": json.dumps(state["history"]), "opts_json": json.dumps(opts),
            "last_val_json": json.dumps(last_val or {}), "train_loss": float(train_loss or float("nan")),
        })

    t_last = time.time()
    last_ckpt = last_val_time = time.time()
    ema = None
    last_val: dict = state["history"][-1]["val"] if state["history"] else {}
    threads_now = torch.get_num_threads()
    bar = tqdm(total=total_steps, initial=state["step"], desc=kind, mininterval=float(opts.get("tqdm_interval", 10)),
               file=sys.stderr, dynamic_ncols=False, ncols=110)

    def validate(label: str):
        nonlocal last_val, t_last, last_ckpt, last_val_time
        t0 = time.time()
        last_val = _validate(kind, net, val_items)
        state["elapsed"] += time.time() - t0  # validation counts towards the wall-time budget
        t_last = last_ckpt = last_val_time = time.time()
        state["history"].append({"epoch": state["epoch"], "step": state["step"],
                                 "minutes": round(state["elapsed"] / 60, 2), "train_loss": ema, "val": last_val})
        bar.write(f"[{kind}] {label} epoch {state['epoch']} step {state['step']} {state['elapsed'] / 60:.1f} min  "
                  f"train loss {ema if ema is not None else float('nan'):.4f}  {_format_val(kind, last_val)}")
        save(False, last_val, ema)

    net.train()
    val_every = float(opts.get("val_minutes", 10)) * 60
    while not finished():
        order = rng.permutation(len(train_items))
        epoch_complete = True
        for start in range(0, len(order), batch):
            if finished():
                epoch_complete = False
                break
            xs, ys = [], []
            for i in order[start:start + batch]:
                it = train_items[i]
                if kind == "localizer":
                    x = torch.from_numpy(it["x"].astype(np.float32))[None, None]
                    y = torch.from_numpy(it["y"].astype(np.float32))[None, None]
                    x, y = augment_pair(x, y, rng, labels=False, p_spatial=opts.get("spatial_p") or 0.6)
                else:
                    k = int(rng.integers(len(it["x"])))
                    x = torch.from_numpy(it["x"][k].astype(np.float32))[None, None]
                    y = torch.from_numpy(it["y"][k].astype(np.int64))[None, None]
                    x, y = augment_pair(x, y, rng, labels=True, p_spatial=opts.get("spatial_p") or 0.7)
                    y = y[:, 0]
                xs.append(x)
                ys.append(y)
            x = torch.cat(xs).contiguous(memory_format=torch.channels_last_3d)
            y = torch.cat(ys)
            for g in optim.param_groups:
                g["lr"] = _lr(opts["lr"], progress(), state["step"])
            out = net(x)
            loss = localizer_loss(out, y) if kind == "localizer" else dice_ce_loss(out, y)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            lv = loss.item()
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            state["step"] += 1
            now = time.time()
            state["elapsed"] += now - t_last
            t_last = now
            bar.update(1)
            bar.set_postfix_str(f"ep {state['epoch']} loss {ema:.4f} lr {optim.param_groups[0]['lr']:.1e} "
                                f"{state['elapsed'] / 60:.0f}min", refresh=False)
            if val_items and now - last_val_time > val_every and not finished():
                validate("periodic")
            elif now - last_ckpt > float(opts.get("ckpt_minutes", 5)) * 60:
                save(False, last_val, ema)
                last_ckpt = now
            if other_done_flag and threads_now < int(opts.get("max_threads", 1)) and Path(other_done_flag).exists():
                threads_now = int(opts.get("max_threads", 1))
                torch.set_num_threads(threads_now)
                bar.write(f"[{kind}] the other network finished: now using {threads_now} threads")
        if epoch_complete:
            state["epoch"] += 1
            if not finished():
                validate("end of")
    bar.close()
    # Final validation (the budget usually ends mid-epoch).
    last_val = _validate(kind, net, val_items)
    state["history"].append({"epoch": state["epoch"], "step": state["step"], "minutes": round(state["elapsed"] / 60, 2),
                             "train_loss": ema, "val": last_val, "final": True})
    print(f"[{kind}] done: step {state['step']} epoch {state['epoch']} {state['elapsed'] / 60:.1f} min  "
          f"{_format_val(kind, last_val)}", file=sys.stderr, flush=True)
    save(True, last_val, ema)
    if done_flag:
        Path(done_flag).write_text("done\n")


# ------------------------------------------------------------------------------------------------------
# Orchestration
# ------------------------------------------------------------------------------------------------------

def split_cases(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    paths = sorted(paths)
    if len(paths) < 2 or val_fraction <= 0:
        return paths, []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    n_val = min(len(paths) - 1, max(1, int(round(val_fraction * len(paths)))))
    val = [paths[i] for i in sorted(order[:n_val])]
    train = [paths[i] for i in sorted(order[n_val:])]
    return train, val


def assemble_bundle(out: Path, ckpts: dict[str, Path], config: ModelConfig, metadata: dict) -> Path | None:
    """Write the model bundle from the two latest checkpoints (None while one is missing)."""
    from .models import save_model

    if not all(p.is_file() for p in ckpts.values()):
        return None
    states = {k: load_checkpoint(p) for k, p in ckpts.items()}
    loc, xu = build_networks(config)
    loc.load_state_dict(states["localizer"]["state"])
    xu.load_state_dict(states["xunet"]["state"])
    meta = dict(metadata)
    meta["networks"] = {}
    for k, s in states.items():
        hist = json.loads(s.get("history_json", "[]"))
        meta["networks"][k] = {
            "steps": int(s["step"]), "epochs_completed": int(s["epoch"]),
            "training_minutes": round(float(s["elapsed"]) / 60, 2), "finished": bool(s["done"]),
            "final_train_loss": float(s.get("train_loss", float("nan"))),
            "final_validation": json.loads(s.get("last_val_json", "{}")),
            "history": hist[-30:],
        }
    meta["training_minutes"] = round(max(float(s["elapsed"]) for s in states.values()) / 60, 2)
    meta["finished"] = all(bool(s["done"]) for s in states.values())
    tmp = out.with_name(out.name + ".tmp")
    save_model(tmp, config, loc, xu, json.loads(json.dumps(meta, default=_json_default)))
    os.replace(tmp, out)
    return out


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def _resume_paths(resume) -> tuple[dict[str, Path | None], dict | None]:
    """--resume: a checkpoint of either network (finds its sibling), a folder of them, or a model bundle."""
    if not resume:
        return {"localizer": None, "xunet": None}, None
    p = Path(resume)
    if p.is_dir():
        found = {k: sorted(p.glob(f"*.{k}.ckpt")) for k in ("localizer", "xunet")}
        return {k: (v[-1] if v else None) for k, v in found.items()}, None
    m = re.match(r"^(?P<stem>.+)\.(localizer|xunet)\.ckpt$", p.name)
    if m:
        sib = {k: p.with_name(f"{m.group('stem')}.{k}.ckpt") for k in ("localizer", "xunet")}
        return {k: (v if v.is_file() else None) for k, v in sib.items()}, None
    if p.is_file():  # a model bundle: fine-tune from its weights with fresh optimisers
        bundle = torch.load(p, map_location="cpu", weights_only=True)
        if "localizer" in bundle and "xunet" in bundle:
            return {"localizer": None, "xunet": None}, bundle
    raise InputError(f"--resume {resume}: not a training checkpoint (*.localizer.ckpt / *.xunet.ckpt), "
                     f"a folder of them, or a model bundle.")


def train_models(train_paths, val_paths, config: ModelConfig, out: Path, ckpt_dir: Path, opts: dict,
                 metadata: dict, resume=None, name: str | None = None) -> Path:
    """Train both networks in parallel processes; write checkpoints and the bundle ``out``."""
    out = Path(out)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = name or out.stem
    ckpts = checkpoint_paths(ckpt_dir, name)
    resume_ckpts, init_bundle = _resume_paths(resume)
    if init_bundle is not None:  # keep the starting model's provenance (its training time counts too)
        prev = json.loads(init_bundle.get("metadata_json", "{}"))
        metadata = dict(metadata, initialised_from={
            "path": str(resume), "config": init_bundle.get("config"),
            "training_minutes": prev.get("training_minutes"), "training_data": prev.get("training_data"),
            "command": prev.get("command"), "initialised_from": prev.get("initialised_from"),
            "networks": {k: {kk: v.get(kk) for kk in ("steps", "training_minutes", "final_validation")}
                         for k, v in (prev.get("networks") or {}).items()}})
    flags = {k: ckpt_dir / f"{name}.{k}.done" for k in ckpts}
    for f in flags.values():
        f.unlink(missing_ok=True)
    loc_opts = dict(opts, lr=opts.get("lr_localizer", opts["lr"]), batch=opts.get("batch_localizer", 2),
                    minutes=(opts["minutes"] * opts.get("localizer_share", 0.3)) if opts.get("minutes") else None,
                    epochs=opts.get("localizer_epochs") or opts.get("epochs"), threads=1)
    xu_opts = dict(opts, batch=opts.get("batch_xunet", 1), threads=1,
                   max_threads=opts.get("max_threads", 2))
    jobs = {
        "localizer": (loc_opts, None),
        "xunet": (xu_opts, str(flags["localizer"])),
    }
    ctx = mp.get_context("spawn")
    procs = {}
    for kind, (o, other_flag) in jobs.items():
        init = init_bundle[kind] if init_bundle is not None else None
        resume_path = resume_ckpts.get(kind)
        # Resuming into a new checkpoint location: start from the given checkpoint.
        if resume_path is None and ckpts[kind].is_file() and resume:
            resume_path = ckpts[kind]
        args = (kind, [str(p) for p in train_paths], [str(p) for p in val_paths], config.to_dict(), o,
                str(ckpts[kind]), str(resume_path) if resume_path else None, init, str(flags[kind]), other_flag)
        if opts.get("sequential"):
            train_worker(*args)
        else:
            procs[kind] = ctx.Process(target=train_worker, args=args, name=f"lumbarseg-{kind}")
            procs[kind].start()
    last_bundle = 0.0
    try:
        while any(p.is_alive() for p in procs.values()):
            time.sleep(5)
            newest = max((p.stat().st_mtime for p in ckpts.values() if p.is_file()), default=0.0)
            if newest > last_bundle and time.time() - last_bundle > 60:
                try:
                    if assemble_bundle(out, ckpts, config, metadata):
                        last_bundle = time.time()
                except Exception as exc:  # noqa: BLE001 - a half-written checkpoint: try again later
                    print(f"(bundle not yet written: {exc})", file=sys.stderr)
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        raise
    for kind, p in procs.items():
        p.join()
        if p.exitcode != 0:
            raise LumbarSegError(f"The {kind} training process failed (exit code {p.exitcode}); see the log above. "
                                 f"Resume with --resume {ckpts[kind]}.")
    if assemble_bundle(out, ckpts, config, metadata) is None:
        raise LumbarSegError("Training ended without both checkpoints; nothing was saved.")
    return out


def cross_validate(case_list: list[Case], cache_by_case: dict, config: ModelConfig, out: Path, ckpt_dir: Path,
                   opts: dict, metadata: dict, folds: int, seed: int) -> dict:
    """K-fold cross-validation: train on K-1 folds, run the full pipeline on the held-out fold."""
    from . import metrics, pipeline
    from .models import load_model

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(case_list))
    fold_of = {case_list[i].case_id: f % folds for f, i in enumerate(order)}
    per_vert: dict[str, dict[str, list]] = {n: {k: [] for k in metrics.METRIC_KEYS} for n in LABEL_NAMES.values()}
    fold_results = []
    for f in range(folds):
        held = [c for c in case_list if fold_of[c.case_id] == f]
        rest = [cache_by_case[c.case_id] for c in case_list if fold_of[c.case_id] != f]
        tr, va = split_cases(rest, opts.get("val_fraction", 0.1), seed + f)
        fold_out = out.with_name(f"{out.stem}.fold{f + 1}{out.suffix}")
        print(f"=== fold {f + 1}/{folds}: {len(tr)} train, {len(va)} validation, {len(held)} held-out cases", file=sys.stderr)
        train_models(tr, va, config, fold_out, ckpt_dir, opts, dict(metadata, fold=f + 1, folds=folds),
                     name=fold_out.stem)
        model = load_model(fold_out)
        for c in held:
            ct = sitk.ReadImage(str(c.ct))
            seg = sitk.ReadImage(str(c.seg))
            ref_img = sitk.GetImageFromArray(map_verse_labels(sitk.GetArrayFromImage(seg)))
            ref_img.CopyInformation(seg)
            res = pipeline.segment(ct, model=model, device=opts.get("device", "auto"))
            m = metrics.compare_images(res.labels, ref_img)
            fold_results.append({"fold": f + 1, "case": c.case_id, "metrics": m})
            for name, vals in m.items():
                for k in metrics.METRIC_KEYS:
                    per_vert[name][k].append(vals[k])
    table = {}
    for name, d in per_vert.items():
        table[name] = {}
        for k, vals in d.items():
            v = np.array([x for x in vals if x is not None and math.isfinite(x)], float)
            table[name][k] = {"mean": float(v.mean()) if v.size else float("nan"),
                              "sd": float(v.std()) if v.size else float("nan"), "n": int(v.size)}
    return {"folds": folds, "table": table, "cases": fold_results}


def format_mean_sd_table(table: dict, keys=("DSC", "FND", "FPD", "MSD", "ASD")) -> str:
    head = f"{'Vertebra':8}" + "".join(f"  {k + (' mm' if k in ('MSD', 'ASD', 'HD95') else ''):>17}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, d in table.items():
        cells = []
        for k in keys:
            m, s = d[k]["mean"], d[k]["sd"]
            digits = 3 if k in ("DSC", "FND", "FPD") else 2
            cells.append("-" if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append(f"{name:8}" + "".join(f"  {c:>17}" for c in cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------

def add_train_arguments(p: argparse.ArgumentParser):
    p.add_argument("data_dir", nargs="*", help="folder(s) in VerSe layout (*_ct.nii.gz + *_seg-vert_msk.nii.gz); "
                   "optional with --phantoms")
    p.add_argument("-o", "--output", required=True, help="model bundle to write (.pt)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="network configuration (default cpu)")
    p.add_argument("--epochs", type=int, help="epochs (passes over the training cases) per network")
    p.add_argument("--minutes", type=float, help="wall-time budget of the XUNet (the localizer gets "
                   "--localizer-share of it); training stops at --epochs or --minutes, whichever comes first")
    p.add_argument("--localizer-share", type=float, default=0.3,
                   help="fraction of --minutes for the localizer; afterwards the XUNet uses all threads (default 0.3)")
    p.add_argument("--max-steps", type=int, help="stop each network after this many optimiser steps (testing)")
    p.add_argument("--resume", help="checkpoint (*.localizer.ckpt / *.xunet.ckpt, or their folder) to resume, "
                   "or a model bundle to fine-tune")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out validation fraction (default 0.1)")
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation with the full pipeline (e.g. 5)")
    p.add_argument("--device", default="auto", help="device for cross-validation inference (training uses the CPU "
                   "processes; default auto)")
    p.add_argument("--phantoms", type=int, default=0, help="generate N training phantoms (seeds S..S+N-1 < 100000)")
    p.add_argument("--seed", type=int, default=0, help="first phantom seed and random seed (default 0)")
    p.add_argument("--phantom-spacing", type=float, nargs=2, default=(1.6, 2.4), metavar=("MIN", "MAX"),
                   help="in-plane spacing range of training phantoms in mm (default 1.6 2.4; z from 1.5-3 mm)")
    p.add_argument("--phantom-fovs", nargs="+", metavar="FOV",
                   help="restrict the generated phantoms to these fields of view, drawn uniformly "
                   "(default: the training mix); e.g. slab tight thoracic for extra hard cases")
    p.add_argument("--cache", help="cache folder for phantoms and precomputed inputs "
                   "(default DATA_DIR/.lumbarseg_cache, or $TMPDIR/lumbarseg_cache with --phantoms only)")
    p.add_argument("--checkpoint-dir", help="folder for resumable checkpoints (default: next to --output)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint interval (default 5)")
    p.add_argument("--val-minutes", type=float, default=10.0, help="validate at least this often (default 10)")
    p.add_argument("--crops", type=int, default=3, help="XUNet crops per case (1 exact + jittered; default 3)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the XUNet (default 1e-3)")
    p.add_argument("--lr-localizer", type=float, default=2e-3, help="Adam learning rate of the localizer (default 2e-3)")
    p.add_argument("--batch", type=int, default=1, help="XUNet batch size (default 1)")
    p.add_argument("--batch-localizer", type=int, default=2, help="localizer batch size (default 2)")
    p.add_argument("--jobs", type=int, default=2, help="processes for phantom generation / precomputation (default 2)")
    p.add_argument("--max-threads", type=int, default=2, help="threads of the XUNet once the localizer is done (default 2)")
    p.add_argument("--spatial-p", type=float, help="probability of the spatial augmentation per sample "
                   "(default 0.6 localizer / 0.7 XUNet)")
    p.add_argument("--note", action="append", default=[], help="free-text provenance note stored in the bundle (repeatable)")
    p.add_argument("--sequential", action="store_true", help="train the networks one after the other in this process")


def run_train(args) -> int:
    if not args.data_dir and not args.phantoms:
        raise InputError("Give a training DATA_DIR or --phantoms N.")
    if not args.epochs and not args.minutes and not args.max_steps:
        raise InputError("Give --epochs or --minutes (or both).")
    config = CONFIGS[args.config]
    out = Path(args.output)
    if args.cache:
        cache = Path(args.cache)
    elif args.data_dir:
        cache = Path(args.data_dir[0]) / ".lumbarseg_cache"
    else:
        import tempfile
        cache = Path(tempfile.gettempdir()) / "lumbarseg_cache"
    t0 = time.time()
    cases: list[Case] = []
    data_desc: dict = {}
    for data_dir in args.data_dir or []:
        found = find_cases(data_dir)
        if not found:
            raise InputError(f"No CT + vertebra mask pairs (*_ct.nii.gz + *_seg-vert_msk.nii.gz) in {data_dir}.")
        cases += found
        data_desc.setdefault("data_dirs", {})[str(Path(data_dir).resolve())] = len(found)
        data_desc["data_dir_cases"] = data_desc.get("data_dir_cases", 0) + len(found)
    if args.phantoms:
        sp = tuple(float(s) for s in args.phantom_spacing)
        fov_mix = tuple(args.phantom_fovs) if args.phantom_fovs else None
        ph_dir = cache / (f"phantoms_seed{args.seed}_sp{sp[0]:g}-{sp[1]:g}" + ("_" + "-".join(fov_mix) if fov_mix else ""))
        generate_phantoms(ph_dir, args.phantoms, args.seed, workers=args.jobs, spacing_xy=sp, fovs=fov_mix)
        wanted = {f"sub-ph{s:06d}" for s in range(args.seed, args.seed + args.phantoms)}
        ph_cases = [c for c in find_cases(ph_dir) if c.case_id in wanted]
        cases += ph_cases
        fovs: dict[str, int] = {}
        for s in range(args.seed, args.seed + args.phantoms):
            fov = phantom_spec(s, sp, fov_mix)[0]
            fovs[fov] = fovs.get(fov, 0) + 1
        data_desc["phantoms"] = {"count": len(ph_cases), "seeds": [args.seed, args.seed + args.phantoms - 1],
                                 "fov_counts": fovs, "spacing_xy_mm": list(sp), "spacing_z_mm": list(TRAIN_Z_SPACINGS),
                                 "generator": "LumbarSegLib.phantoms.generate_phantom (default shape library)",
                                 "folder": str(ph_dir)}
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"Case names occur twice across the training folders: {', '.join(dup[:5])}.")
    t_data = time.time()
    paths = prepare_cache(cases, cache / "precomputed", config, n_crops=args.crops, workers=args.jobs)
    cache_by_case = {c.case_id: cache_path(cache / "precomputed", c, config, args.crops) for c in cases}
    print(f"data ready: {len(paths)} cases in {(time.time() - t0) / 60:.1f} min "
          f"(precompute {(time.time() - t_data) / 60:.1f} min)", file=sys.stderr, flush=True)
    n_pos = 0
    for p in paths:
        with np.load(p) as z:
            n_pos += bool(z["positive"])
    data_desc.update(cases=len(paths), with_lumbar=n_pos, without_lumbar=len(paths) - n_pos,
                     crops_per_case=args.crops, cache=str(cache))
    opts = {"lr": args.lr, "lr_localizer": args.lr_localizer, "batch_xunet": args.batch,
            "batch_localizer": args.batch_localizer, "minutes": args.minutes, "epochs": args.epochs,
            "max_steps": args.max_steps, "localizer_share": args.localizer_share,
            "ckpt_minutes": args.checkpoint_minutes, "val_minutes": args.val_minutes, "spatial_p": args.spatial_p, "seed": args.seed, "max_threads": args.max_threads,
            "sequential": args.sequential, "val_fraction": args.val_fraction, "device": args.device}
    metadata = {
        "config": args.config, "training_data": data_desc, "command": "lumbarseg " + " ".join(
            shlex.quote(a) for a in (sys.argv[sys.argv.index("train"):] if "train" in sys.argv else sys.argv[1:])),
        "options": opts, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": _git_commit(),
        "eval_seed_start": EVAL_SEED_START, "notes": list(args.note or []), "data_preparation_minutes": round((time.time() - t0) / 60, 2),
    }
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.parent
    if args.folds and args.folds > 1:
        cv = cross_validate(cases, cache_by_case, config, out, ckpt_dir, opts, metadata, args.folds, args.seed)
        from .metrics import write_json
        cv_path = out.with_name(out.stem + ".cv.json")
        write_json(cv, cv_path)
        print(f"\n{args.folds}-fold cross-validation (full pipeline on held-out folds), mean ± sd:")
        print(format_mean_sd_table(cv["table"]))
        print(f"\nwrote {cv_path}")
        return 0
    train, val = split_cases(paths, args.val_fraction, args.seed)
    print(f"training on {len(train)} cases, validating on {len(val)}", file=sys.stderr, flush=True)
    metadata["training_data"]["train_cases"] = len(train)
    metadata["training_data"]["validation_cases"] = len(val)
    train_models(train, val, config, out, ckpt_dir, opts, metadata, resume=args.resume)
    from .models import load_model
    model = load_model(out)
    meta = model.metadata
    print(f"\nwrote {out} ({out.stat().st_size / 1e6:.1f} MB); training {meta.get('training_minutes')} min")
    for k, v in meta.get("networks", {}).items():
        print(f"  {k}: {v['steps']} steps, {v['epochs_completed']} epochs, {v['training_minutes']} min; "
              f"{_format_val(k, v['final_validation'])}")
    return 0


def register_cli(subparsers):
    p = subparsers.add_parser("train", help="train both networks (VerSe-layout data or generated phantoms)",
                              description="Train the localizer and the XUNet. " + (__doc__ or "").split("\n\n")[0])
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    try:
        from . import evaluation
    except ImportError:
        evaluation = None
    if evaluation is not None and hasattr(evaluation, "register_cli"):
        evaluation.register_cli(subparsers)
