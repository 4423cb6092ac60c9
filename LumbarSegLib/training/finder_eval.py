"""The finder's gate: does it find every vertebra, and does its own class evidence name it, on held-out cases?

Each fold's network (``finder_train``'s checkpoints) is scored only on the subjects it held out, as stored and
re-imaged as 5 mm axial, 3 mm sagittal and 3 mm coronal (the views of stage 3's gate). The strip runs along
the true column (the labelled vertebrae's centres, as stage 3's gate uses true centres), so this measures
the finder alone; the localizer's box and the counting stage come after it.

* centre recall: true vertebrae (every level, 5 mL and more in view) with a peak within :data:`FOUND_MM`;
* identification rate (VerSe): true lumbar vertebrae whose nearest peak within :data:`IDENTIFIED_MM` carries
  their name (the class with the most probability around the peak);
* scans with every lumbar name right: each true lumbar vertebra identified and no other peak named lumbar.

    python -m LumbarSegLib.training.finder_eval --state ../finder_state --phases fold-A fold-B fold-C \
        --real DIR... [--json out.json]
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from ..constants import LABEL_NAMES, VERSE_NAMES
from ..inference import finder
from ..inference.preprocess import apply_window
from ..inference.vertebra_stage import OUTSIDE_HU
from .vertebra_samples import whole_enough_centres

FOUND_MM = 10.0
IDENTIFIED_MM = 20.0
EVIDENCE_MM = 8.0  # class probabilities are averaged over this radius around a peak
CLASS_NAMES = {**LABEL_NAMES, 6: "thoracic", 7: "caudal"}


def find(ct: sitk.Image, net, config, centres_mm: list[np.ndarray]) -> list[tuple[np.ndarray, str, float]]:
    """(centre LPS mm, class name, peak value) of each peak of the finder along the column through
    ``centres_mm``, top first."""
    pts = np.asarray(centres_mm, float)
    ref = finder.strip_grid(np.median(pts[:, :2], axis=0), (pts[:, 2].min(), pts[:, 2].max()), config.crop_zyx,
                            config.spacing_mm)
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, ref, sitk.Transform(), sitk.sitkLinear, OUTSIDE_HU,
                                              sitk.sitkFloat32))
    n_classes = len(CLASS_NAMES) + 1
    probs = finder.strip_probabilities(net, apply_window(hu), config.crop_zyx[0], n_classes)
    r = int(np.ceil(EVIDENCE_MM / config.spacing_mm))
    out = []
    for vox, value in finder.centre_peaks(probs[n_classes], config.spacing_mm):
        lo = [max(0, int(v) - r) for v in vox]
        evidence = probs[1:n_classes, lo[0]:int(vox[0]) + r + 1, lo[1]:int(vox[1]) + r + 1,
                         lo[2]:int(vox[2]) + r + 1].mean(axis=(1, 2, 3))
        name = CLASS_NAMES[int(np.argmax(evidence)) + 1]
        out.append((np.asarray(ref.TransformContinuousIndexToPhysicalPoint([float(v) for v in vox[::-1]])),
                    name, value))
    return out


def match(found: list[tuple[np.ndarray, str, float]], truth: dict[int, np.ndarray]) -> dict:
    """Centre recall, identification and whether every lumbar name is right, of ``found`` (centre, name, _)
    against ``truth`` (VerSe code -> centre)."""
    centres = np.array([f[0] for f in found]) if found else np.zeros((0, 3))
    names = [f[1] for f in found]
    recalled, identified, lumbar = [], [], []
    for code, c in truth.items():
        d = np.linalg.norm(centres - np.asarray(c), axis=1) if len(centres) else np.array([])
        recalled.append(bool(len(d)) and float(d.min()) <= FOUND_MM)
        if 20 <= code <= 24:
            lumbar.append(code)
            k = int(np.argmin(d)) if len(d) else -1
            identified.append(k >= 0 and float(d[k]) <= IDENTIFIED_MM and names[k] == VERSE_NAMES[code])
    true_names = {VERSE_NAMES[c] for c in lumbar}
    extra = [n for n in names if n in LABEL_NAMES.values() and n not in true_names]
    return {"recall": [int(sum(recalled)), len(recalled)], "identified": [int(sum(identified)), len(identified)],
            "all_right": bool(lumbar) and all(identified) and not extra,
            "found": names}


def evaluate(state_dir, phases, real_dirs, log=print) -> list[dict]:
    from .finder_train import FinderConfig, build_finder
    from .vertebra_eval import load_phase, phase_views

    rows = []
    for phase in phases:
        state = load_phase(state_dir, phase)
        config = FinderConfig.from_dict(state["config"])
        net = build_finder(config)
        net.load_state_dict({k: v.float() for k, v in state["weights"].items()})
        for case_id, name, v_ct, v_seg in phase_views(state, real_dirs):
            truth = whole_enough_centres(v_seg)
            if not truth:
                continue
            row = {"phase": phase, "case": case_id, "acquisition": name,
                   "truth": [VERSE_NAMES.get(c, str(c)) for c in sorted(truth, key=lambda c: -truth[c][2])],
                   **match(find(v_ct, net, config, list(truth.values())), truth)}
            rows.append(row)
            log(f"{phase} {case_id:>22s} {name:>16s}: recall {row['recall']} identified "
                f"{row['identified']} all right {row['all_right']}  truth {row['truth']} found {row['found']}")
    return rows


def summarize(rows: list[dict]) -> dict:
    def pct(key):
        k = sum(r[key][0] for r in rows)
        n = sum(r[key][1] for r in rows)
        return [k, n]

    return {"centre_recall_10mm": pct("recall"), "identification_20mm": pct("identified"),
            "scans_all_right": [sum(r["all_right"] for r in rows), len(rows)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m LumbarSegLib.training.finder_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", required=True)
    p.add_argument("--phases", nargs="+", required=True)
    p.add_argument("--real", nargs="+", required=True)
    p.add_argument("--json", help="write the rows and the summary here")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from .vertebra_eval import report

    rows = evaluate(args.state, args.phases, args.real)
    report(summarize(rows), rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
