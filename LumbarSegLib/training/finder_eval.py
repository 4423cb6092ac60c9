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
  :func:`..inference.peak_naming.name_peaks`, anchored by the finder's thoracic and caudal peaks and the CT's bone),
  which is how a study names them.

    python -m LumbarSegLib.training.finder_eval --state ../finder_state --phases fold-A fold-B fold-C \
        --real DIR... [--json out.json] [--end-to-end ../stage3_state]
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


def find(ct: sitk.Image, net, centres_mm: list[np.ndarray]) -> tuple[list, list, list]:
    """The finder along the column through ``centres_mm`` (LPS): (its peaks as (centre, class name, value),
    the same peaks named by counting, the peaks themselves), top first."""
    pts = np.asarray(centres_mm, float)
    canonical = to_canonical(ct)
    peaks = finder.find_vertebrae(canonical, net, np.median(pts[:, :2], axis=0),
                                  (pts[:, 2].min(), pts[:, 2].max()), OUTSIDE_HU)
    own = [(p.centre_mm, p.name, p.value) for p in peaks]
    naming = finder.count_levels(canonical, peaks)
    counted = [] if naming is None else [(peaks[k].centre_mm, level_name(lev), peaks[k].value)
                                         for k, lev in zip(naming.kept, naming.levels)]
    return own, counted, peaks


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
        net = finder.load_finder(state, f"{state_dir}/{phase}")
        for case_id, name, v_ct, v_seg in phase_views(state, real_dirs):
            truth = whole_enough_centres(v_seg)
            if not truth:
                continue
            own, counted, peaks = find(v_ct, net, list(truth.values()))
            row = {"phase": phase, "case": case_id, "acquisition": name,
                   "truth": [VERSE_NAMES.get(c, str(c)) for c in sorted(truth, key=lambda c: -truth[c][2])],
                   **match(own, truth), "counted": match(counted, truth),
                   # each peak's height, value and class evidence, to calibrate the count's anchors on
                   "peaks": [[round(float(p.centre_mm[2]), 1), round(p.value, 3), [round(float(e), 3) for e in p.evidence]]
                             for p in peaks]}
            rows.append(row)
            c = row["counted"]
            log(f"{phase} {case_id:>22s} {name:>16s}: recall {row['recall']} identified {row['identified']} "
                f"(counted {c['identified']}) all right {row['all_right']} (counted {c['all_right']})  truth "
                f"{row['truth']} found {row['found']} counted {c['found']}")
    return rows


def end_to_end(finder_dir, stage3_dir, phases, real_dirs, log=print) -> list[dict]:
    """The whole pipeline on the finder's path (``pipeline.segment(finder=..., refine=...)``) with the fold's
    finder and the same fold's stage 3, on the subjects that fold held out, as stored and re-imaged: L1-L5 DSC
    and the naming scores of ``evaluate-model --naming`` (:func:`.naming_eval.score_naming`). The localizer
    that places the strip is the bundled one, which trained on every real case here: it only gives the box.
    Where the bundled XUNet also held the case out, the bundled path (XUNet + the fold's stage 3) is scored
    beside it."""
    from ..inference import pipeline
    from ..inference.models import load_model
    from ..inference.vertebra_stage import load_weights
    from ..io.label_maps import to_internal_labels
    from ..measures.agreement import compare
    from .naming_eval import score_naming
    from .real_evaluation import held_out_cases
    from .vertebra_eval import load_phase, phase_views

    model = load_model()
    rows = []
    for phase in phases:
        fstate = load_phase(finder_dir, phase)
        sstate = load_phase(stage3_dir, phase)
        if sorted(fstate["leave_out"]) != sorted(sstate["leave_out"]):
            raise ValueError(f"{phase}: the finder and stage 3 held out different subjects")
        found_by = finder.load_finder(fstate, f"{finder_dir}/{phase}")
        net3 = load_weights(sstate)
        for case_id, name, v_ct, v_seg in phase_views(fstate, real_dirs):
            ref = to_internal_labels(sitk.GetArrayFromImage(v_seg), "verse")
            truth = {f"L{k}" for k in np.unique(ref).tolist() if k}
            row = {"phase": phase, "case": case_id, "acquisition": name, "truth": sorted(truth)}
            paths = {"finder": found_by}
            if case_id in held_out_cases(model.metadata, [case_id]):
                paths["xunet"] = None
            for key, found_with in paths.items():
                res = pipeline.segment(v_ct, model=model, device="cpu", refine=net3, finder=found_with)
                m = compare(sitk.GetArrayFromImage(res.labels), ref, v_ct.GetSpacing()[::-1])
                dsc = [m[n]["DSC"] for n in m if n in truth]
                named = score_naming(res.labels, res.naming, res.naming_warnings, v_seg, [])
                row[key] = {"mean_dsc": round(float(np.mean(dsc)), 4) if dsc else None, "found": res.found,
                            "dsc": {n: round(float(v["DSC"]), 3) for n, v in m.items()},
                            **{k: named[k] for k in ("identified", "wrong", "wrong_warned", "all_right", "naming")}}
            rows.append(row)
            log(f"{phase} {case_id:>22s} {name:>16s}: " + "; ".join(
                f"{k} DSC {row[k]['mean_dsc']} found {','.join(row[k]['found']) or '-'} wrong "
                f"{','.join(row[k]['wrong']) or '-'}" for k in paths))
    return rows


COMPLETE = [f"L{k}" for k in range(1, 6)]
COMPLETE_KEY = "complete L1-L5"


def summarize_end_to_end(rows: list[dict]) -> dict:
    """Mean DSC and names over the rows, per path, by acquisition and in all; and by acquisition over the views that
    hold all of L1-L5 (``complete L1-L5``: the README's and issue 22's end-to-end measure)."""
    out = {}
    for key in ("finder", "xunet"):
        sub = [r for r in rows if key in r]
        if not sub:
            continue
        def part(rs):
            d = [r[key]["mean_dsc"] or 0.0 for r in rs if r["truth"]]
            return {"scans": len(rs), "mean_dsc": round(float(np.mean(d)), 4) if d else None,
                    "all_right": [sum(r[key]["all_right"] for r in rs), len(rs)],
                    "wrong_warned": [sum(len(r[key]["wrong_warned"]) for r in rs), sum(len(r[key]["wrong"]) for r in rs)]}
        kinds = list(dict.fromkeys(r["acquisition"] for r in sub))
        out[key] = {"all": part(sub), **{a: part([r for r in sub if r["acquisition"] == a]) for a in kinds}}
        complete = [r for r in sub if r["truth"] == COMPLETE]
        if complete:
            out[key][COMPLETE_KEY] = {a: part([r for r in complete if r["acquisition"] == a])
                                      for a in dict.fromkeys(r["acquisition"] for r in complete)}
    return out


def summarize(rows: list[dict]) -> dict:
    def pct(key):
        k = sum(r[key][0] for r in rows)
        n = sum(r[key][1] for r in rows)
        return [k, n]

    out = {"centre_recall_10mm": pct("recall"), "identification_20mm": pct("identified"),
           "scans_all_right": [sum(r["all_right"] for r in rows), len(rows)]}
    counted = [r["counted"] for r in rows if "counted" in r]
    if counted:  # the same peaks named by counting along the column (inference/peak_naming.name_peaks)
        out["counted"] = summarize(counted)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m LumbarSegLib.training.finder_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--state", required=True)
    p.add_argument("--phases", nargs="+", required=True)
    p.add_argument("--real", nargs="+", required=True)
    p.add_argument("--json", help="write the rows and the summary here")
    p.add_argument("--end-to-end", metavar="STAGE3_STATE",
                   help="score the whole pipeline on the finder's path with this stage-3 state's same folds")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    from .vertebra_eval import report

    if args.end_to_end:
        rows = end_to_end(args.state, args.end_to_end, args.phases, args.real)
        report(summarize_end_to_end(rows), rows, args.json)
        return 0
    rows = evaluate(args.state, args.phases, args.real)
    report(summarize(rows), rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
