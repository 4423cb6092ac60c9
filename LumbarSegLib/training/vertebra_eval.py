"""The gate of stage 3: held-out vertebrae segmented with their true centres, as stored and re-imaged.

Each fold's network is scored only on the subjects it held out (its checkpoint records them), so no number
here comes from a case it trained on; ``--fit`` scores a network on the cases it trained on, reported apart.
Every labelled vertebra of at least 5 mL counts (thoracic ones included): per vertebra DSC, ASD and HD95 on
the case as stored and on its re-imagings as 5 mm axial (body-wide), 3 mm sagittal and 3 mm coronal
(:func:`real_evaluation.reimagings`, the same fixed views as the whole pipeline's leave-one-out report).

    python -m LumbarSegLib.training.vertebra_eval --state STATE --phases fold-A fold-B fold-C \
        --real DIR... [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..inference.vertebra_stage import VertebraSeed, load_weights, segment_vertebrae
from ..measures.agreement import compare_masks
from .vertebra_samples import subject_of, whole_enough_centres

REIMAGING_SEED = 20261205
TARGETS = {"as stored": 0.90, "re-imaged": 0.85, "fit": 0.93}


def score_case(ct: sitk.Image, seg: sitk.Image, net) -> dict:
    """Per VerSe code: DSC/ASD/HD95 of stage 3 given the true centres of ``seg``'s vertebrae, as a study
    reports them (:func:`..inference.by_vertebra.tidy_vertebrae`: each vertebra's largest piece, filled)."""
    from ..inference.by_vertebra import tidy_vertebrae

    arr = sitk.GetArrayViewFromImage(seg)
    centres = whole_enough_centres(seg)
    seeds = [VertebraSeed(p, c) for c, p in centres.items()]
    spacing = seg.GetSpacing()[::-1]
    pred, _ = tidy_vertebrae(segment_vertebrae(ct, seeds, net), sorted(int(c) for c in centres))
    out = {}
    for c in centres:
        m = compare_masks(pred == c, arr == c, spacing)
        out[int(c)] = {k: (round(float(m[k]), 4) if np.isfinite(m[k]) else None) for k in ("DSC", "ASD", "HD95")}
    return out


def acquisitions(ct: sitk.Image, seg: sitk.Image) -> dict:
    from .real_evaluation import reimagings

    views = {"as stored": (ct, seg)}
    for name, (v, lab, _info) in reimagings(ct, seg, np.random.default_rng(REIMAGING_SEED)).items():
        views[name] = (v, lab)
    return views


def phase_views(state: dict, real_dirs, fit: bool = False, reimage: bool = True):
    """(case id, acquisition, ct, seg) of the real cases under ``real_dirs`` that the checkpoint ``state`` held
    out (``fit``: those it trained on), as stored and (``reimage``) re-imaged."""
    from . import real_views
    from .data import find_cases

    held = {subject_of(s) for s in state["leave_out"]}
    for case in [c for d in real_dirs if Path(d).is_dir() for c in find_cases(d)]:
        if (subject_of(case.case_id) in held) == fit:
            continue
        ct, seg = real_views.load_source(str(case.ct), str(case.seg))
        views = acquisitions(ct, seg) if reimage else {"as stored": (ct, seg)}
        for name, (v_ct, v_seg) in views.items():
            yield case.case_id, name, v_ct, v_seg


def load_phase(state_dir, phase: str) -> dict:
    import torch

    return torch.load(Path(state_dir) / f"{phase}.pt", map_location="cpu", weights_only=True)


def evaluate(state_dir, phases, real_dirs, fit: bool = False, reimage: bool = True, log=print) -> list[dict]:
    """Rows (phase, case, acquisition, per-vertebra scores) for each phase's held-out (or, ``fit``, trained) cases."""
    rows = []
    for phase in phases:
        state = load_phase(state_dir, phase)
        net = load_weights(state)
        for case_id, name, v_ct, v_seg in phase_views(state, real_dirs, fit, reimage):
            t = time.time()
            scores = score_case(v_ct, v_seg, net)
            row = {"phase": phase, "step": state["step"], "case": case_id, "acquisition": name,
                   "held_out": not fit, "vertebrae": scores, "seconds": round(time.time() - t, 1),
                   "mean_dsc": round(float(np.mean([s["DSC"] for s in scores.values()])), 4) if scores else None}
            rows.append(row)
            log(f"{phase} {case_id:>22s} {name:>16s}: DSC {row['mean_dsc']}  "
                + " ".join(f"{c}:{s['DSC']:.2f}" for c, s in scores.items()))
    return rows


def report(summary: dict, rows: list[dict], json_path=None) -> None:
    """Print the summary; write it with the rows to ``json_path`` when given."""
    print(json.dumps(summary, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


def end_to_end(state_dir, phase, real_dirs, xunet_model=None, log=print) -> list[dict]:
    """The whole pipeline with and without stage 3 on the cases held out from BOTH the XUNet model and the
    phase's network (the XUNet's own record of its training cases decides): L1-L5 DSC, names found."""
    from ..inference import pipeline
    from ..inference.models import load_model
    from ..io.label_maps import to_internal_labels
    from ..measures.agreement import compare
    from . import real_views
    from .data import find_cases
    from .real_evaluation import held_out_cases

    model = load_model(xunet_model) if xunet_model else load_model()
    state = load_phase(state_dir, phase)
    held = {subject_of(s) for s in state["leave_out"]}
    net = load_weights(state)
    cases = {c.case_id: c for d in real_dirs if Path(d).is_dir() for c in find_cases(d)}
    rows = []
    for cid in held_out_cases(model.metadata, sorted(cases)):
        if subject_of(cid) not in held:
            continue
        ct, seg = real_views.load_source(str(cases[cid].ct), str(cases[cid].seg))
        for name, (v_ct, v_seg) in acquisitions(ct, seg).items():
            ref = to_internal_labels(sitk.GetArrayFromImage(v_seg), "verse")
            truth = sorted(set(np.unique(ref).tolist()) - {0})
            row = {"phase": phase, "case": cid, "acquisition": name}
            for key, refine in (("xunet", None), ("stage3", net)):
                res = pipeline.segment(v_ct, model=model, device="cpu", refine=refine)
                pred = sitk.GetArrayFromImage(res.labels)
                m = compare(pred, ref, v_ct.GetSpacing()[::-1])
                dsc = [m[n]["DSC"] for n in m if n in {f"L{k}" for k in truth}]
                row[key] = {"mean_dsc": round(float(np.mean(dsc)), 4) if dsc else None, "found": res.found,
                            "dsc": {n: round(float(v["DSC"]), 3) for n, v in m.items()},
                            "seconds": round(sum(res.timings.values()), 1)}
            rows.append(row)
            log(f"{cid} {name:>16s}: XUNet {row['xunet']['mean_dsc']} {row['xunet']['found']}  "
                f"+ stage 3 {row['stage3']['mean_dsc']} {row['stage3']['found']}")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Mean vertebra DSC / ASD / HD95 per acquisition, and whether the gate's targets are met."""
    out = {}
    for name in sorted({r["acquisition"] for r in rows}):
        vs = [s for r in rows if r["acquisition"] == name for s in r["vertebrae"].values()]
        out[name] = {k: round(float(np.mean([s[k] for s in vs if s[k] is not None])), 4) for k in ("DSC", "ASD", "HD95")}
        out[name]["vertebrae"] = len(vs)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m LumbarSegLib.training.vertebra_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--state")
    p.add_argument("--phases", nargs="+")
    p.add_argument("--real", nargs="+")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="instead of scoring: the rows of these earlier --json files (one per fold, scored as each "
                        "fold finished) summarised together into --json")
    p.add_argument("--fit", action="store_true", help="score the cases each network trained on (a fit)")
    p.add_argument("--no-reimage", action="store_true", help="only the cases as stored")
    p.add_argument("--json", help="write the rows and the summary here")
    p.add_argument("--end-to-end", action="store_true",
                   help="the whole pipeline with and without stage 3 on cases held out from both networks")
    p.add_argument("--xunet-model", help="the XUNet model bundle for --end-to-end (default: the bundled one)")
    args = p.parse_args(argv)
    if args.combine:
        rows = [r for f in args.combine for r in json.loads(Path(f).read_text())["rows"]]
        report(summarize(rows), rows, args.json)
        return 0
    if not (args.state and args.phases and args.real):
        p.error("--state, --phases and --real are needed unless --combine is given")
    import torch

    torch.set_num_threads(2)
    if args.end_to_end:
        rows = [r for ph in args.phases for r in end_to_end(args.state, ph, args.real, args.xunet_model)]
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    rows = evaluate(args.state, args.phases, args.real, fit=args.fit, reimage=not args.no_reimage)
    report(summarize(rows), rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
