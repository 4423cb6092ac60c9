"""Tight crops of the real CTs, held out: each case of ``../shared`` cut along the spine to two or three adjacent
lumbar levels (and 3 mm), run through the whole pipeline on the finder's path with the finder and stage 3 of the
fold that held that case out (no number from a case the networks trained on). A spine-targeted CT of one or two
levels has no rib and no sacrum to count from: this says how often the names are still right, and whether every
wrong one is warned.

    python3 tools/measure_tight_crops.py ../finder_state ../stage3_state ../shared/data [--threads 2]

For each crop, scored as `evaluate-model --naming` scores a scan (`naming_eval.run_case`): the levels it was cut
to, the vertebrae reported, those identified (their name's true centre within 20 mm), the wrong ones, those the
truth leaves unlabelled at the crop's edge (not scored: sub-verse007's labels end at L3), how the names were
decided, and an outcome: ``right``, ``wrong, warned`` (every wrong name carries "unanchored" or "check the
levels"), ``wrong, unwarned``, ``refused`` (as upside down) or ``none`` (no vertebra reported). The cases are read
as the held-out evaluations read them (`vertebra_eval.phase_views`: canonical, a bone-only CT given its body).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import finder  # noqa: E402
from LumbarSegLib.io.label_maps import to_internal_labels  # noqa: E402

FOLDERS = ("real", "tptbox_l3", "real_boneonly")
MARGIN_MM = 3.0


def crops(ct: sitk.Image, seg: sitk.Image):
    """(levels, CT crop, mask crop) for every run of two or three adjacent lumbar levels in ``seg`` (VerSe codes, on
    the grid of ``ct``, LPS), cut along z to those levels and :data:`MARGIN_MM`."""
    labels = to_internal_labels(sitk.GetArrayFromImage(seg), "verse")
    present = [int(v) for v in np.unique(labels) if 1 <= v <= 5]
    margin = int(round(MARGIN_MM / ct.GetSpacing()[2]))
    for n in (2, 3):
        for i in range(len(present) - n + 1):
            levels = present[i:i + n]
            if levels != list(range(levels[0], levels[0] + n)):
                continue
            rows = np.flatnonzero(np.isin(labels, levels).any(axis=(1, 2)))
            lo, hi = max(0, int(rows[0]) - margin), min(labels.shape[0], int(rows[-1]) + 1 + margin)
            yield levels, ct[:, :, lo:hi], seg[:, :, lo:hi]


def outcome(row: dict) -> str:
    """One crop's outcome from its :func:`.naming_eval.run_case` row."""
    if "refused" in row:
        return "refused"
    if not row["found"]:
        return "none"
    if row["all_right"]:
        return "right"
    return "wrong, warned" if set(row["wrong"]) <= set(row["wrong_warned"]) else "wrong, unwarned"


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
    from LumbarSegLib.training.naming_eval import run_case
    from LumbarSegLib.training.vertebra_eval import load_phase, phase_views

    torch.set_num_threads(args.threads)
    model = load_model()
    real_dirs = [Path(args.data) / folder for folder in FOLDERS]
    outcomes: Counter = Counter()
    print("| fold | case | cut to | reported | identified | wrong | unlabelled at the edge | names | outcome |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for phase in ("fold-A", "fold-B", "fold-C"):
        fstate, sstate = load_phase(args.finder_state, phase), load_phase(args.stage3_state, phase)
        if sorted(fstate["leave_out"]) != sorted(sstate["leave_out"]):
            raise SystemExit(f"{phase}: the finder and stage 3 held out different subjects")
        finder_net, stage3 = finder.load_finder(fstate, phase), load_weights(sstate)
        for case_id, _, ct, seg in phase_views(fstate, real_dirs, reimage=False):
            for levels, ct_crop, seg_crop in crops(ct, seg):
                row = run_case(ct_crop, seg_crop, model, refine=stage3, finder=finder_net)
                outcomes[outcome(row)] += 1
                cells = [", ".join(row[k]) or "-" for k in ("found", "identified", "wrong", "beyond_labels")]
                how = ", ".join(sorted(set(row["naming"].values()))) or "-"
                print(f"| {phase} | {case_id} | L{levels[0]}-L{levels[-1]} | {' | '.join(cells)} | {how} | "
                      f"{outcome(row)} |", flush=True)
    print("\n" + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + f" of {sum(outcomes.values())} crops")


if __name__ == "__main__":
    main()
