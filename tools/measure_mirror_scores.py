"""The orientation check's mirror scores (``LumbarSegLib.inference.orientation``) for CTs as given and mirrored
head-to-feet, with the bundled model: the numbers its margin was chosen from.

    python3 tools/measure_mirror_scores.py CT [CT ...] [--phantoms abdomen:100011 lumbar:100013 ...]

For each CT (or generated phantom, ``FOV:SEED`` on a 128x128x100 grid) and each view (upright = as given,
flipped = voxels mirrored head-to-feet with the header unchanged) it prints the confidence and vertebra
voxels of the XUNet on the crop as given and mirrored, and the score the check compares with
``MIRROR_SCORE_MARGIN``; a flipped CT should score above it, an upright one below.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import orientation, pipeline, preprocess  # noqa: E402
from LumbarSegLib.io import images  # noqa: E402
from LumbarSegLib.inference.models import load_model  # noqa: E402


def upside_down(image: sitk.Image) -> sitk.Image:
    return preprocess.mirrored_head_to_feet(preprocess.to_canonical(image))


def scores(image: sitk.Image, model, device):
    canonical = preprocess.to_canonical(image)
    heat = pipeline.run_localizer(canonical, model, device)
    box = preprocess.heatmap_box(heat, np.asarray(canonical.GetSize()))
    if box is None:
        return None
    lo, hi = box
    as_given, mirrored = (orientation.view_score(p) for p in
                          pipeline.xunet_probabilities(canonical, lo, hi, model, device, mirrored=True))
    if not as_given.vertebra_voxels or not mirrored.vertebra_voxels:
        return as_given, mirrored, float("nan")
    score = mirrored.confidence - as_given.confidence + orientation.VOLUME_WEIGHT * math.log(
        mirrored.vertebra_voxels / as_given.vertebra_voxels)
    return as_given, mirrored, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cts", nargs="*")
    parser.add_argument("--phantoms", nargs="*", default=[], metavar="FOV:SEED")
    args = parser.parse_args()
    import torch

    device = torch.device("cpu")
    model = load_model().to(device)
    cases = [(Path(p).name, lambda p=p: images.load_ct(p).image) for p in args.cts]
    for spec in args.phantoms:
        fov, seed = spec.split(":")

        def make(fov=fov, seed=int(seed)):
            from LumbarSegLib import phantoms

            return phantoms.generate_phantom(seed, shape=(128, 128, 100), fov=fov)[0]
        cases.append((f"phantom {spec}", make))
    print(f"| case | view | confidence as given / mirrored | vertebra voxels as given / mirrored | score "
          f"(margin {orientation.MIRROR_SCORE_MARGIN}) |")
    print("|---|---|---|---|---|")
    for name, load in cases:
        image = load()
        for view, im in (("upright", image), ("flipped", upside_down(image))):
            got = scores(im, model, device)
            if got is None:
                print(f"| {name} | {view} | no crop | | |")
                continue
            a, m, score = got
            print(f"| {name} | {view} | {a.confidence:.3f} / {m.confidence:.3f} | {a.vertebra_voxels} / "
                  f"{m.vertebra_voxels} | {score:.3f} |", flush=True)


if __name__ == "__main__":
    main()
