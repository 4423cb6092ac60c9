"""Check the CT anchor detectors (LumbarSegLib.inference.anchors) against the truth, without any network:
the column's centres come from the truth's lumbar labels, the verdict from the truth's T12/T13 (ribs above)
and sacrum (label 26) in view. Prints one line per case and the hits, misses and false fires.
``--upside-down`` reads each case turned head-to-feet too (voxels mirrored), where neither anchor may fire: the
pelvis then lies right above the column and the ribs below it.

    PYTHONPATH=. python tools/check_ct_anchors.py [--phantoms N --seed S] [--upside-down] [CT MASK ...]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import SimpleITK as sitk

from LumbarSegLib.inference import anchors, preprocess

LUMBAR = (20, 21, 22, 23, 24)  # VerSe L1-L5
ML = 10.0  # this much of a vertebra in view counts as in view


def truth_case(ct: sitk.Image, seg: sitk.Image):
    ct, seg = preprocess.to_canonical(ct), preprocess.to_canonical(seg)
    hu, lab = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(seg)
    spacing = np.asarray(ct.GetSpacing(), float)[::-1]
    vox = float(np.prod(spacing)) / 1000.0
    present = [c for c in LUMBAR if (lab == c).sum() * vox >= ML]
    centres = [np.argwhere(lab == c).mean(axis=0) * spacing for c in present]  # L1 first = top first
    has = lambda c: (lab == c).sum() * vox >= ML  # noqa: E731
    # the ribs anchor is right only when the top piece is L1 and T12 (or T13 above an L1) is in view
    ribs_truth = bool(present) and present[0] == 20 and (has(19) or has(28))
    sac_truth = bool(present) and present[-1] == 24 and has(26) and not has(25)
    return hu, spacing, present, centres, ribs_truth, sac_truth


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--phantoms", type=int, default=0)
    p.add_argument("--seed", type=int, default=100200)
    p.add_argument("--fovs", default="abdomen,lumbar,lower,upper,tight,thoracic",
                   help="fields of view in turn, comma-separated; 'cycle': all of phantoms.FOV_CHOICES in turn")
    p.add_argument("--shape", type=int, nargs=3, help="phantom grid (voxels); default: drawn per seed")
    p.add_argument("--spacing", type=float, nargs=3, help="phantom spacing (mm); default: drawn per seed")
    p.add_argument("--upside-down", action="store_true", help="each case turned head-to-feet too")
    p.add_argument("pairs", nargs="*")
    a = p.parse_args(argv)
    cases = []
    if a.phantoms:
        from LumbarSegLib import phantoms
        lib = phantoms.load_shape_library()
        fovs = list(phantoms.FOV_CHOICES) if a.fovs == "cycle" else a.fovs.split(",")
        grid = {"shape": tuple(a.shape) if a.shape else None, "spacing": tuple(a.spacing) if a.spacing else None}
        for i in range(a.phantoms):
            fov = fovs[i % len(fovs)]
            ct, seg = phantoms.generate_phantom(a.seed + i, fov=fov, shape_library=lib, **grid)
            cases.append((f"phantom {a.seed + i} {fov} {ct.GetSpacing()[2]:.2f}mm", ct, seg))
    for ct_path, seg_path in zip(a.pairs[::2], a.pairs[1::2]):
        cases.append((ct_path.split("/")[-1], sitk.ReadImage(ct_path), sitk.ReadImage(seg_path)))
    tally = {"ribs": [0, 0, 0, 0], "sacrum": [0, 0, 0, 0]}  # hit, miss, false fire, right silence
    for name, ct, seg in cases:
        hu, spacing, present0, centres0, ribs_t0, sac_t0 = truth_case(ct, seg)
        if not centres0:
            print(f"{name}: no lumbar vertebra in view")
            continue
        # as found, and as if the network had missed the top or the lowest vertebra (a wrong anchor would fire)
        variants = [("", hu, present0, centres0, ribs_t0, sac_t0)]
        if len(present0) >= 2:
            variants += [(" [top dropped]", hu, present0[1:], centres0[1:], False, sac_t0),
                         (" [lowest dropped]", hu, present0[:-1], centres0[:-1], ribs_t0, False)]
        if a.upside_down:  # z mirrored: the lowest vertebra comes first; nothing rib-bearing above, no sacrum below
            height = (hu.shape[0] - 1) * spacing[0]
            turned = [np.array([height - c[0], c[1], c[2]]) for c in centres0[::-1]]
            variants += [(" [upside down]", hu[::-1], present0[::-1], turned, False, False)]
        for tag, case_hu, present, centres, ribs_t, sac_t in variants:
            one(name + tag, case_hu, spacing, present, centres, ribs_t, sac_t, tally)
    for k, (h, mi, f, s) in tally.items():
        print(f"{k}: hits {h}, misses {mi}, false fires {f}, right silences {s}")


def one(name, hu, spacing, present, centres, ribs_t, sac_t, tally):
    if True:
        got = anchors.detect(hu, spacing, centres)
        for key, truth, fired in (("ribs", ribs_t, got.ribs), ("sacrum", sac_t, got.sacrum)):
            tally[key][(0 if fired else 1) if truth else (2 if fired else 3)] += 1
        flag = "" if (got.ribs == ribs_t and got.sacrum == sac_t) else "  <-- " + \
            ("FALSE " if (got.ribs and not ribs_t) or (got.sacrum and not sac_t) else "miss")
        m = {k: (tuple(round(float(x)) for x in v) if isinstance(v, tuple) else v) for k, v in got.measures.items()}
        print(f"{name}: lumbar {[c - 19 for c in present]} ribs {got.ribs}/{ribs_t} sacrum {got.sacrum}/{sac_t} {m}{flag}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
