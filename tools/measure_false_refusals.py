"""Refusals, orientation warnings, anchors and invented vertebrae of the whole pipeline (bundled models), on
phantoms and real CTs, upright and upside down: the numbers of issue 24 and of the upside-down checks in
docs/accuracy.md and docs/accuracy_history.md.

    python3 tools/measure_false_refusals.py phantoms --seed 5000 --n 15 --shape 160 160 120 --spacing 2 2 2.5
    python3 tools/measure_false_refusals.py phantoms --seed 7000 --n 5 --fov thoracic --shape 160 160 120 --spacing 2 2 2.5
    python3 tools/measure_false_refusals.py real ../shared/data
    python3 tools/measure_false_refusals.py phantoms ... --refine --finder --upside-down   # as a study runs
    python3 tools/measure_false_refusals.py phantoms ... --refine --finder-model ../finder_state/fold-A.pt

``phantoms`` draws phantoms as ``lumbarseg phantom`` does (with the shape library when it is there; item i has
seed SEED + i; ``--fov cycle`` cycles over every field of view) and prints, for each, the true levels, what
was reported, whether it was refused as upside down or warned, how the names were decided (anchored by the
ribs, the sacrum, both, or unanchored), and the lumbar vertebrae reported on a phantom with none;
``--upside-down`` runs each one turned head-to-feet too. ``real`` runs each CT of DATA/real, DATA/real_boneonly
and DATA/tptbox_l3 upright and mirrored head-to-feet (header kept), and the thoracic DICOM series DATA/ts_dicom.
Without ``--finder`` or ``--finder-model`` the XUNet's path runs; a study with stage 3 on takes the finder's
path (``--refine --finder``). Each line is printed as it is done; a summary ends the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import orientation, pipeline, preprocess  # noqa: E402

LUMBAR_CODES = range(20, 26)  # VerSe L1-L5 and L6


def upside_down(image: sitk.Image) -> sitk.Image:
    return preprocess.mirrored_head_to_feet(preprocess.to_canonical(image))


FINDER = None  # --finder-model: the finder's path (inference/by_vertebra.py) instead of the XUNet's


REAL_FOLDERS = ("real", "real_boneonly", "tptbox_l3")


def run(image, model, refine) -> tuple[str, list[str], list[str], str]:
    """(outcome: "refused" / "warned" / "named", found, messages, how the names were decided) of one run."""
    try:
        result = pipeline.segment(image, model=model, device="cpu", refine=refine, finder=FINDER)
    except orientation.OrientationError:
        return "refused", [], [], ""
    warned = any(m.startswith("WARNING: the image may be upside down") for m in result.messages)
    how = ", ".join(sorted(set(result.naming.values())))
    return ("warned" if warned else "named"), result.found, result.messages, how


def table_row(case, truth, view, run_out, invented: bool) -> dict:
    outcome, found, messages, how = run_out
    return {"case": case, "truth": truth, "view": view, "outcome": outcome, "found": found, "names": how,
            "invented": found if invented else [], "column_drops": sum("off the spinal column" in m for m in messages)}


def phantom_rows(args, model, refine):
    from LumbarSegLib import phantoms

    library = phantoms.load_shape_library()
    for i in range(args.n):
        seed = args.seed + i
        fov = phantoms.FOV_CHOICES[i % len(phantoms.FOV_CHOICES)] if args.fov == "cycle" else args.fov
        ct, truth = phantoms.generate_phantom(seed, shape=tuple(args.shape), spacing=tuple(args.spacing), fov=fov,
                                              shape_library=library)
        codes = sorted(int(c) for c in np.unique(sitk.GetArrayViewFromImage(truth)) if c)
        lumbar = any(c in LUMBAR_CODES for c in codes)
        views = [("upright", ct)] + ([("upside down", upside_down(ct))] if args.upside_down else [])
        for view, image in views:
            yield table_row(f"seed {seed} ({fov or 'drawn'})", f"codes {codes[0]}-{codes[-1]}" if codes else "-",
                            view, run(image, model, refine), invented=not lumbar)


def real_rows(args, model, refine):
    from LumbarSegLib.io import images
    from LumbarSegLib.training.real_views import is_bone_only_file

    data = Path(args.data)
    for path in [p for folder in REAL_FOLDERS for p in sorted((data / folder).glob("*_ct.nii.gz"))]:
        # a bone-only CT (soft tissue blanked to 0) is not in HU, which load_ct refuses: read as stored
        ct = sitk.ReadImage(str(path)) if is_bone_only_file(str(path)) else images.load_ct(path).image
        for view, image in (("upright", ct), ("upside down", upside_down(ct))):
            yield table_row(path.name, "", view, run(image, model, refine), invented=False)
    if (data / "ts_dicom").is_dir():
        ct = images.load_ct(data / "ts_dicom").image
        yield table_row("ts_dicom (T11-T12)", "no lumbar", "upright", run(ct, model, refine), invented=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("phantoms")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--shape", type=int, nargs=3, required=True)
    p.add_argument("--spacing", type=float, nargs=3, required=True)
    p.add_argument("--fov", default=None, help="a field of view, 'cycle' (all in turn) or none (drawn per seed)")
    p.add_argument("--upside-down", action="store_true", help="run each phantom turned head-to-feet too")
    r = sub.add_parser("real")
    r.add_argument("data", help="the shared data folder (holding real/ and ts_dicom/)")
    for q in (p, r):
        q.add_argument("--refine", action="store_true", help="run stage 3 too (the CLI's default when bundled)")
        q.add_argument("--threads", type=int, default=1, help="torch threads (1: beside a training run)")
        q.add_argument("--finder", action="store_true", help="the finder's path with the bundled finder, as a "
                       "study with stage 3 on runs (needs --refine)")
        q.add_argument("--finder-model", help="the finder's path with this model file or training checkpoint "
                       "(needs --refine); a checkpoint's held-out subjects are the only real cases it may score")
    args = parser.parse_args()
    import torch

    from LumbarSegLib.inference.models import load_model
    from LumbarSegLib.inference.vertebra_stage import choose

    torch.set_num_threads(args.threads)
    model = load_model()
    refine = choose(True)[0] if args.refine else None
    if args.finder or args.finder_model:
        global FINDER
        from LumbarSegLib.inference.finder import choose as choose_finder, load_finder

        if refine is None:
            parser.error("--finder and --finder-model need --refine")
        FINDER = (load_finder(torch.load(args.finder_model, map_location="cpu", weights_only=True), args.finder_model)
                  if args.finder_model else choose_finder(True, refine)[0])
    rows = phantom_rows(args, model, refine) if args.what == "phantoms" else real_rows(args, model, refine)
    print("| case | truth | view | outcome | found | names | lumbar reported with none true | pieces dropped off the "
          "column |")
    print("|---|---|---|---|---|---|---|---|")
    counts = {"upright": {}, "upside down": {}}
    invented = 0
    for row in rows:
        print(f"| {row['case']} | {row['truth']} | {row['view']} | {row['outcome']} | {', '.join(row['found']) or '-'} "
              f"| {row['names'] or '-'} | {', '.join(row['invented']) or '-'} "
              f"| {row['column_drops'] and 'yes' or '-'} |", flush=True)
        counts[row["view"]][row["outcome"]] = counts[row["view"]].get(row["outcome"], 0) + 1
        invented += bool(row["invented"])
    for view, c in counts.items():
        if c:
            print(f"\n{view}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    print(f"cases with no lumbar vertebra that reported one: {invented}")


if __name__ == "__main__":
    main()
