"""The finder's gate: does it find every vertebra, and does its own class evidence name it, on held-out cases?

Each fold's network (``finder_train``'s checkpoints) is scored only on the subjects it held out, as stored and
re-imaged as 5 mm axial, 3 mm sagittal and 3 mm coronal (the views of stage 3's gate). The strip runs along
the true column (the labelled vertebrae's centres, as stage 3's gate uses true centres), so this measures
the finder alone; the localizer's box and the counting stage come after it.

* centre recall: true vertebrae (every level, 5 mL and more in view) with a peak within :data:`FOUND_MM`;
* identification rate (VerSe): true lumbar vertebrae whose nearest peak within :data:`IDENTIFIED_MM` carries
  their name (the class with the most probability around the peak);
* scans with every lumbar name right: each true lumbar vertebra identified and no other peak named lumbar;
* and the same two for the peaks named by counting along the column (``counted``:
  :func:`..inference.naming.name_peaks`, anchored by the finder's thoracic and caudal peaks and the CT's bone),
  which is how a study names them.

    python -m LumbarSegLib.training.finder_eval --state ../finder_state --phases fold-A fold-B fold-C \
        --real DIR... [--json out.json]
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from ..constants import LABEL_NAMES, VERSE_NAMES
from ..inference import finder
from ..inference.naming import level_name
from ..inference.preprocess import to_canonical
from ..inference.vertebra_stage import OUTSIDE_HU
from .vertebra_samples import whole_enough_centres

FOUND_MM = 10.0
IDENTIFIED_MM = 20.0


def find(ct: sitk.Image, net, config, centres_mm: list[np.ndarray]) -> tuple[list, list]:
    """The finder along the column through ``centres_mm`` (LPS): (its peaks as (centre, class name, value),
    the same peaks named by counting), top first."""
    pts = np.asarray(centres_mm, float)
    canonical = to_canonical(ct)
    peaks = finder.find_vertebrae(canonical, net, config, np.median(pts[:, :2], axis=0),
                                  (pts[:, 2].min(), pts[:, 2].max()), OUTSIDE_HU)
    own = [(p.centre_mm, p.name, p.value) for p in peaks]
    naming = finder.count_levels(canonical, peaks)
    counted = [] if naming is None else [(peaks[k].centre_mm, level_name(lev), peaks[k].value)
                                         for k, lev in zip(naming.kept, naming.levels)]
    return own, counted


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
    from .vertebra_eval import load_phase, phase_views

    rows = []
    for phase in phases:
        state = load_phase(state_dir, phase)
        net, config = finder.load_finder(state, f"{state_dir}/{phase}")
        for case_id, name, v_ct, v_seg in phase_views(state, real_dirs):
            truth = whole_enough_centres(v_seg)
            if not truth:
                continue
            own, counted = find(v_ct, net, config, list(truth.values()))
            row = {"phase": phase, "case": case_id, "acquisition": name,
                   "truth": [VERSE_NAMES.get(c, str(c)) for c in sorted(truth, key=lambda c: -truth[c][2])],
                   **match(own, truth), "counted": match(counted, truth)}
            rows.append(row)
            c = row["counted"]
            log(f"{phase} {case_id:>22s} {name:>16s}: recall {row['recall']} identified {row['identified']} "
                f"(counted {c['identified']}) all right {row['all_right']} (counted {c['all_right']})  truth "
                f"{row['truth']} found {row['found']} counted {c['found']}")
    return rows


def summarize(rows: list[dict]) -> dict:
    def pct(key):
        k = sum(r[key][0] for r in rows)
        n = sum(r[key][1] for r in rows)
        return [k, n]

    out = {"centre_recall_10mm": pct("recall"), "identification_20mm": pct("identified"),
           "scans_all_right": [sum(r["all_right"] for r in rows), len(rows)]}
    counted = [r["counted"] for r in rows if "counted" in r]
    if counted:  # the same peaks named by counting along the column (inference/naming.name_peaks)
        out["counted"] = summarize(counted)
    return out


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
