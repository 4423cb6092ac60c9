"""Post-processing time (``pipeline.clean_labels``: largest piece, closing, hole filling) against voxel
spacing, for the bounded closing (:mod:`LumbarSegLib.inference.morphology`) and, for comparison, the closing with a
full-resolution ball that it replaced (its cost grows with the ball: (2 mm / spacing)^3 voxels per box voxel).

    python benchmarks/bench_postprocess.py [--spacings 1.0 0.5 0.3] [--old-down-to 0.5]

The label map is five lumbar-sized blocks (40x35x25 mm each, with pits and an enclosed hole) in a box of
60x60x160 mm, the size of a lumbar crop. Prints seconds per spacing and the ratio to 1 mm. Not a test.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import pipeline  # noqa: E402


def lumbar_labels(spacing: float) -> np.ndarray:
    """(z, y, x) labels of five blocks, L1 at the top, with 2 % of their voxels missing and a hole each."""
    shape = tuple(int(round(mm / spacing)) for mm in (160, 60, 60))
    z, y, x = (np.arange(n) * spacing for n in shape)
    labels = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(0)
    for i in range(5):
        z_hi = 160 - 5 - i * 31
        zs, ys, xs = (z > z_hi - 25) & (z <= z_hi), (y > 10) & (y <= 45), (x > 10) & (x <= 50)
        block = zs[:, None, None] & ys[None, :, None] & xs[None, None, :]
        block &= rng.random(shape) > 0.02  # pits: voxels the network was unsure of
        labels[block] = i + 1
        centre = tuple(int(round(c / spacing)) for c in (z_hi - 12, 27, 30))
        r = max(1, int(round(3 / spacing)))
        labels[tuple(slice(c - r, c + r) for c in centre)] = 0  # an enclosed hole 6 mm across
    return labels


def old_close_and_fill(labels: np.ndarray, spacing: float) -> None:
    """The replaced closing: one ball of CLOSING_MM / spacing voxels on each vertebra's box (result unused)."""
    radius = max(1, int(round(pipeline.CLOSING_MM / spacing)))
    zz, yy, xx = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(3))]
    ball = zz ** 2 + yy ** 2 + xx ** 2 <= radius ** 2
    for label, region in enumerate(ndimage.find_objects(labels, max_label=5), start=1):
        if region is not None:
            ndimage.binary_fill_holes(ndimage.binary_closing(labels[region] == label, structure=ball))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.0, 0.5, 0.3])
    parser.add_argument("--old-down-to", type=float, default=0.5,
                        help="time the replaced closing only for spacings at least this (it takes minutes below)")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| spacing mm | voxels | clean_labels, bounded closing s | ratio to 1 mm | the replaced full-ball closing alone s | ratio to 1 mm |")
    print("|---|---|---|---|---|---|")
    base_new = base_old = None
    for spacing in sorted(args.spacings, reverse=True):
        labels = lumbar_labels(spacing)
        t0 = time.perf_counter()
        pipeline.clean_labels(labels, (spacing,) * 3, [])
        new = time.perf_counter() - t0
        old = None
        if spacing >= args.old_down_to:
            t0 = time.perf_counter()
            old_close_and_fill(labels, spacing)
            old = time.perf_counter() - t0
        base_new = base_new or new
        base_old = base_old or old
        old_cells = f"{old:.2f} | {old / base_old:.1f}" if old is not None and base_old else "- | -"
        print(f"| {spacing:g} | {labels.size:,} | {new:.2f} | {new / base_new:.1f} | {old_cells} |", flush=True)


if __name__ == "__main__":
    main()
