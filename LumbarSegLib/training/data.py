"""Training data: case discovery (VerSe layout), precomputed network inputs and targets (the ``.npz``
cache), training phantoms, views of real cases, and the train/validation split.

A case is a CT plus its VerSe vertebra mask. :func:`training_labels` turns VerSe codes into the XUNet's
classes: 20-24 -> 1-5 (L1-L5), and for a configuration with context classes thoracic vertebrae -> 6 and
L6/sacrum -> 7; everything else is background, except unlabelled bone beyond the labelled part of the
column, which is ignored (see there). See the package docstring for the cache's contents.
A *real* case (``--real``) is not used as it is but expanded into views (:mod:`.real_views`): view 0 is the
case itself, views 1.. re-image it with other tilts, grids and fields of view. Its views share the case's
``source`` so that leaving a case out (cross-validation) leaves out all of them.
Phantom seeds: training uses seeds below :data:`EVAL_SEED_START`; held-out evaluation uses the rest.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..inference import preprocess
from ..constants import VERSE_CONTEXT_CODES
from ..errors import InputError
from ..io.label_maps import to_internal_labels
from ..inference.networks import ModelConfig
from . import real_views
from .commands import EVAL_SEED_START  # phantom seeds >= this are reserved for held-out evaluation

CACHE_VERSION = 2
IGNORE = 255  # target value of voxels no loss is computed on
BONE_HU = 150.0  # unlabelled voxels above this, beyond the labelled column, are ignored
COLUMN_MARGIN_MM = 15.0  # in-plane margin around the labelled vertebrae that counts as "the column"
# Field-of-view mix of training phantoms: ~15 % thoracic-only negatives, the rest lumbar or partial.
TRAIN_FOV_PROBS = {"abdomen": 0.30, "lumbar": 0.25, "lower": 0.15, "upper": 0.15, "thoracic": 0.15}
TRAIN_Z_SPACINGS = (1.5, 2.0, 2.5, 3.0)
HEATMAP_SIGMA = 1.0  # localizer voxels
DISC_BRIDGE_MM = 24.0  # gaps along z up to this are filled in the heatmap target
JITTER = 0.08  # max shift of each crop face, as a fraction of the box size
LUMBAR_SPAN_MM = 190.0  # typical L1-L5 height, used for the crops of cases without lumbar vertebrae


# ------------------------------------------------------------------------------------------------------
# Dataset discovery and labels
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    case_id: str
    ct: Path
    seg: Path
    view: int | None = None  # a real case's view number (None: the case is used as it is)
    source: str = ""  # the real case a view was made from ("" for ordinary cases)


def real_case_views(cases: list[Case], views: int) -> list[Case]:
    """Each real case as ``views`` cases: view 0 the case itself, views 1.. re-imaged (see :mod:`.real_views`)."""
    if views < 1:
        raise InputError(f"--views must be at least 1, got {views}.")
    return [Case(f"{c.case_id}~view{v:03d}", c.ct, c.seg, view=v, source=c.case_id)
            for c in cases for v in range(views)]


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


def training_labels(codes: np.ndarray, hu: np.ndarray, spacing_xyz, context_classes=()) -> np.ndarray:
    """XUNet targets (z, y, x) uint8 from VerSe ``codes`` and the CT's ``hu`` on the same grid.

    L1-L5 -> 1-5; each context class (``networks.CONTEXT_CLASSES``) -> 6, 7, ... from its VerSe codes
    (:data:`constants.VERSE_CONTEXT_CODES`); the rest -> 0. Real masks label only some vertebrae (a VerSe
    crop often labels L1-L5 while T12 or the sacrum show at its edge): bone above the topmost or below the
    lowest labelled vertebra, within the column's in-plane footprint, gets :data:`IGNORE` so that an
    unlabelled neighbour is not taught as background. Fully labelled phantoms are unaffected.
    """
    codes = np.asarray(codes)
    lab = to_internal_labels(codes, "verse")
    for k, name in enumerate(context_classes, start=6):
        lab[np.isin(codes, VERSE_CONTEXT_CODES[name])] = k
    vertebra = codes > 0
    if not vertebra.any():
        return lab
    from scipy import ndimage

    zs = np.flatnonzero(vertebra.any(axis=(1, 2)))
    beyond = np.ones(codes.shape[0], bool)
    beyond[zs[0]:zs[-1] + 1] = False
    if beyond.any():
        grow = max(1, int(round(COLUMN_MARGIN_MM / float(spacing_xyz[0]))))
        column = ndimage.binary_dilation(vertebra.any(axis=0), iterations=grow)
        lab[(np.asarray(hu) > BONE_HU) & ~vertebra & column[None] & beyond[:, None, None]] = IGNORE
    return lab


def precompute_case(ct: sitk.Image, seg: sitk.Image, config: ModelConfig, n_crops: int = 3,
                    seed: int = 0) -> dict:
    """All network inputs/targets of one case (see the module docstring)."""
    rng = np.random.default_rng(seed)
    ct_c = preprocess.to_canonical(ct)
    seg_c = _canonical_labels(seg, ct_c)
    raw = sitk.GetArrayFromImage(seg_c)
    lab = training_labels(raw, sitk.GetArrayViewFromImage(ct_c), ct_c.GetSpacing(), config.context_classes)
    lab_img = sitk.GetImageFromArray(lab)
    lab_img.CopyInformation(ct_c)
    size = np.asarray(ct_c.GetSize())
    lumbar = (lab >= 1) & (lab <= 5)
    positive = bool(lumbar.any())
    lumbar_img = sitk.GetImageFromArray(lumbar.astype(np.uint8))
    lumbar_img.CopyInformation(ct_c)

    loc_x = preprocess.localizer_input(ct_c, config)
    loc_y = heatmap_target(lumbar_img, config)

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
    present = sorted(set(np.unique(lab[lumbar]).tolist()))
    return {
        "loc_x": loc_x.astype(np.float16), "loc_y": loc_y.astype(np.float16),
        "crop_x": np.stack(crops_x).astype(np.float16), "crop_y": np.stack(crops_y),
        "boxes": np.stack(boxes).astype(np.int32), "image_size": size.astype(np.int32),
        "spacing": np.asarray(ct_c.GetSpacing(), np.float32), "positive": np.array(positive),
        "present": np.array(present, dtype=np.int32),
    }


def _config_tag(config: ModelConfig, n_crops: int) -> str:
    text = json.dumps([config.localizer_input, config.xunet_input, config.window_level, config.window_width,
                       n_crops, CACHE_VERSION, HEATMAP_SIGMA, JITTER, DISC_BRIDGE_MM, list(config.context_classes),
                       BONE_HU, COLUMN_MARGIN_MM, real_views.VIEWS_VERSION])
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
        seed = int(hashlib.sha1(case.case_id.encode()).hexdigest()[:8], 16)
        if case.view is None:
            ct, seg = sitk.ReadImage(str(case.ct)), sitk.ReadImage(str(case.seg))
        else:
            ct, seg = real_views.view_of(str(case.ct), str(case.seg), case.view)
        data = precompute_case(ct, seg, config, n_crops=n_crops, seed=seed)
        data["source"] = np.array(case.source)
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
    with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        for r in tqdm(pool.imap(func, jobs), total=len(jobs), desc=desc, mininterval=5, file=sys.stderr):
            results.append(r)
    return results


def prepare_cache(cases: list[Case], cache_dir, config: ModelConfig, n_crops: int = 3, workers: int = 1) -> list[Path]:
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    done = [cache_path(cache_dir, c, config, n_crops) for c in cases]
    done = [(str(p), None) for p in done if p.is_file()]  # cached already: no worker processes needed
    jobs = [(c, cache_dir, config.to_dict(), n_crops) for c in cases
            if not cache_path(cache_dir, c, config, n_crops).is_file()]
    results = done + _pool_map(_precompute_one, jobs, workers, "precompute")
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


def _phantom_paths(outdir, seed: int) -> tuple[Path, Path]:
    stem = Path(outdir) / f"sub-ph{seed:06d}"
    return Path(f"{stem}_ct.nii.gz"), Path(f"{stem}_seg-vert_msk.nii.gz")


def _write_phantom(job):
    seed, outdir, spacing_xy, fovs = job
    from .. import phantoms

    ct_path, seg_path = _phantom_paths(outdir, seed)
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
    jobs = [(s, str(outdir), tuple(spacing_xy), tuple(fovs) if fovs else None) for s in range(seed, seed + n)
            if not all(p.is_file() for p in _phantom_paths(outdir, s))]
    for _, err in _pool_map(_write_phantom, jobs, workers, "phantoms"):
        if err:
            print(f"WARNING: {err}", file=sys.stderr)
    return outdir


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
