"""Tight crops of the real CTs, held out: each case of ``../shared`` cut along the spine to two or three adjacent
lumbar levels (and 3 mm), run through the whole pipeline on the finder's path with the finder and stage 3 of the
fold that held that case out (no number from a case the networks trained on). A spine-targeted CT of one or two
levels has no rib and no sacrum to count from: this says how often the names are still right, and whether every
wrong one is warned.

    python3 tools/measure_tight_crops.py ../finder_state ../stage3_state ../shared/data [--threads 2]

For each crop: the levels it was cut to, what was reported, the level under each reported vertebra (the truth's
label that most of its labelled voxels carry; "-" where it lies on none), how the names were decided, whether a
naming warning ("unanchored", "check the levels") or the upside-down warning came with them, and an outcome:
``right`` (every reported name lies on its own level; a piece cut by the crop's end counts where the truth labels
it), ``wrong, warned``, ``wrong, unwarned``, ``refused`` or ``none`` (no vertebra reported). A vertebra the truth
leaves unlabelled (sub-verse007 ends at L3) scores by the labelled voxels it covers.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import finder, orientation, pipeline, preprocess  # noqa: E402
from LumbarSegLib.io.label_maps import to_internal_labels  # noqa: E402

FOLDERS = ("real", "tptbox_l3", "real_boneonly")
MARGIN_MM = 3.0


def crops(ct: sitk.Image, labels: np.ndarray):
    """(levels, crop) for every run of two or three adjacent lumbar levels in ``labels`` (internal codes, the
    voxels of ``ct``, LPS), cut along z to those levels and :data:`MARGIN_MM`."""
    present = [int(v) for v in np.unique(labels) if 1 <= v <= 5]
    margin = int(round(MARGIN_MM / ct.GetSpacing()[2]))
    for n in (2, 3):
        for i in range(len(present) - n + 1):
            levels = present[i:i + n]
            if levels != list(range(levels[0], levels[0] + n)):
                continue
            rows = np.flatnonzero(np.isin(labels, levels).any(axis=(1, 2)))
            lo, hi = max(0, int(rows[0]) - margin), min(labels.shape[0], int(rows[-1]) + 1 + margin)
            yield levels, lo, hi, ct[:, :, lo:hi]


def level_under(found_labels: np.ndarray, truth: np.ndarray, code: int) -> str:
    """The truth's level that most labelled voxels under the reported vertebra ``code`` carry, or "-"."""
    under = truth[(found_labels == code) & (truth > 0)]
    return f"L{int(np.bincount(under).argmax())}" if under.size else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("finder_state", help="the finder's phase checkpoints (fold-A.pt ...)")
    parser.add_argument("stage3_state", help="stage 3's phase checkpoints, the same folds")
    parser.add_argument("data", help="the shared data folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from LumbarSegLib.inference.models import load_model
    from LumbarSegLib.inference.vertebra_stage import load_weights
    from LumbarSegLib.training.data import find_cases
    from LumbarSegLib.training.vertebra_eval import load_phase

    torch.set_num_threads(args.threads)
    model = load_model()
    cases = [c for folder in FOLDERS for c in find_cases(Path(args.data) / folder)]
    outcomes: Counter = Counter()
    print("| fold | case | cut to | reported | on | names | outcome |\n|---|---|---|---|---|---|---|")
    for phase in ("fold-A", "fold-B", "fold-C"):
        fstate, sstate = load_phase(args.finder_state, phase), load_phase(args.stage3_state, phase)
        finder_net, stage3 = finder.load_finder(fstate, phase), load_weights(sstate)
        for case in cases:
            if not any(held in case.case_id for held in fstate["leave_out"]):
                continue
            ct = preprocess.to_canonical(sitk.ReadImage(str(case.ct)))
            seg = sitk.Resample(sitk.ReadImage(str(case.seg)), ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            truth = to_internal_labels(sitk.GetArrayFromImage(seg), "verse")
            for levels, lo, hi, crop in crops(ct, truth):
                on, how = {}, ""
                try:
                    result = pipeline.segment(crop, model=model, device="cpu", refine=stage3, finder=finder_net)
                except orientation.OrientationError:
                    outcome = "refused"
                else:
                    found = sitk.GetArrayFromImage(result.labels)
                    on = {name: level_under(found, truth[lo:hi], int(name[1:])) for name in result.found}
                    how = ", ".join(sorted(set(result.naming.values())))
                    warned = any("unanchored" in m or "check the levels" in m or "upside down" in m
                                 for m in result.messages)
                    outcome = ("none" if not on else "right" if all(k == v for k, v in on.items())
                               else "wrong, warned" if warned else "wrong, unwarned")
                outcomes[outcome] += 1
                cut = "-".join(f"L{v}" for v in (levels[0], levels[-1]))
                print(f"| {phase} | {case.case_id} | {cut} | {', '.join(on) or '-'} | "
                      f"{', '.join(on.values()) or '-'} | {how or '-'} | {outcome} |", flush=True)
    print("\n" + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + f" of {sum(outcomes.values())} crops")


if __name__ == "__main__":
    main()
