"""Distances between consecutive vertebral-body centroids, and vertebra heights, on the real label maps.

The gap model of :mod:`LumbarSegLib.inference.naming` is fitted on these numbers:

    PYTHONPATH=. python tools/measure_vertebra_gaps.py ../shared/data

Each label map is read in physical space (LPS, mm). A vertebra's centre is the centroid of its mask (whole
vertebra: body and posterior elements, as the XUNet labels it); its height is the superior-inferior extent of
its mask. Only pairs of consecutive levels both present (and both whole: not touching the scan's top or
bottom slice) count. VerSe codes: 8-19 T1-T12, 28 T13, 20-25 L1-L6; TotalSegmentator v2: 27-31 L5-L1,
32-43 T12-T1. Sacrum codes are left out (its centroid is not a vertebral body's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

# code -> position along the column (T1 = 1 ... T12 = 12, T13 = 12.5, L1 = 13 ... L6 = 18)
VERSE_ORDER = {**{c: c - 7 for c in range(8, 20)}, 28: 12.5, **{c: c - 7 for c in range(20, 26)}}
TOTALSEG_ORDER = {**{31 - i: 13 + i for i in range(5)}, **{32 + i: 12 - i for i in range(12)}}


def _scheme(path: Path, values) -> dict:
    if "tsv2" in path.name or any(v == 27 or 29 <= v <= 44 for v in values):
        return TOTALSEG_ORDER
    return VERSE_ORDER


def centres_and_heights(path: Path) -> tuple[dict, dict]:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.int32)
    values = set(np.unique(array).tolist()) - {0}
    order = _scheme(path, values)
    centres, heights = {}, {}
    objects = ndimage.find_objects(array)
    for code in sorted(values):
        if code not in order or objects[code - 1] is None:
            continue
        region = objects[code - 1]
        mask = array[region] == code
        idx = np.argwhere(mask) + [s.start for s in region]
        # physical points of every voxel (sub-sampled: a few thousand suffice for a centroid and an extent)
        idx = idx[:: max(1, len(idx) // 4000)]
        pts = np.array([image.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx])
        touches = any(s.start == 0 or s.stop == n for s, n in zip(region, array.shape))
        centres[order[code]] = (pts.mean(axis=0), touches)
        heights[order[code]] = (float(np.ptp(pts[:, 2])), touches)
    return centres, heights


def main(root: str) -> None:
    files = sorted(p for p in Path(root).rglob("*.nii.gz") if "msk" in p.name or "tsv2" in p.name)
    gaps, heights, per_file = [], [], []
    for f in files:
        if "subreg" in f.name:
            continue
        c, h = centres_and_heights(f)
        levels = sorted(c)
        g = [float(np.linalg.norm(c[b][0] - c[a][0])) for a, b in zip(levels, levels[1:])
             if b - a <= 1 and not c[a][1] and not c[b][1]]
        gaps += g
        heights += [v for v, touches in h.values() if not touches]
        per_file.append((f.relative_to(root), len(levels), g))
    for name, n, g in per_file:
        print(f"{name}: {n} vertebrae, gaps {', '.join(f'{v:.1f}' for v in g) or '-'}")
    gaps, heights = np.asarray(gaps), np.asarray(heights)
    print(f"consecutive centre gaps: n={gaps.size} min {gaps.min():.1f} p5 {np.percentile(gaps, 5):.1f} median "
          f"{np.median(gaps):.1f} mean {gaps.mean():.1f} sd {gaps.std():.1f} p95 {np.percentile(gaps, 95):.1f} "
          f"max {gaps.max():.1f} mm")
    print(f"vertebra heights (superior-inferior extent of the mask): n={heights.size} min {heights.min():.1f} "
          f"median {np.median(heights):.1f} max {heights.max():.1f} mm")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared" / "data"))
