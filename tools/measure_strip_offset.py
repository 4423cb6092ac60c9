"""Where the pipeline runs the finder's strip against where the vertebral bodies lie, on the real CTs as stored and
re-imaged (5 mm axial, 3 mm sagittal, 3 mm coronal): the in-plane offset of :func:`pipeline.strip_centre` from the
median of the true lumbar and thoracic bodies' centres (LPS mm: +x left, +y posterior).

    python3 tools/measure_strip_offset.py ../shared/data/real ../shared/data/tptbox_l3 ../shared/data/real_boneonly

The finder trained on windows centred within ``finder_samples.INPLANE_JITTER_MM`` of a body's centre; a strip placed
further off puts the spine where training never did - though on session 8's folds re-centring the strip on the bodies
changed nothing end to end (docs/accuracy.md). Only the bundled localizer runs (it places the box).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LumbarSegLib.inference import pipeline, preprocess  # noqa: E402

BODY_CODES = range(1, 26)  # VerSe C1-L6: every labelled vertebra's centre (the sacrum's is not a body's)


def offset(ct: sitk.Image, seg: sitk.Image, model) -> tuple[float, float] | None:
    """(x, y) mm of the strip's centre minus the bodies' median centre; None when the localizer finds no box."""
    import torch

    canonical = preprocess.to_canonical(ct)
    labels = sitk.GetArrayFromImage(preprocess.to_canonical(seg))
    heat = pipeline.run_localizer(canonical, model, torch.device("cpu"))
    if heat.max() < pipeline.MIN_HEATMAP_PEAK:
        return None
    box = preprocess.heatmap_box(heat, np.asarray(canonical.GetSize()))
    x, y = pipeline.strip_centre(canonical, box)
    centres = [canonical.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.argwhere(labels == k).mean(0)[::-1]])
               for k in np.unique(labels) if k in BODY_CODES]
    if not centres:
        return None
    cx, cy = np.median(np.asarray(centres)[:, :2], axis=0)
    return float(x - cx), float(y - cy)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("real", nargs="+", help="folders of real CTs with labels (training/data.find_cases)")
    args = p.parse_args(argv)
    from LumbarSegLib.inference.models import load_model
    from LumbarSegLib.training.vertebra_eval import phase_views

    model = load_model()
    rows = []
    for case, view, ct, seg in phase_views({"leave_out": []}, args.real, fit=True):  # every case: none held out
        got = offset(ct, seg, model)
        print(f"{case:20s} {view:18s} " + ("no box" if got is None else f"x {got[0]:+6.1f} mm  y {got[1]:+6.1f} mm"),
              flush=True)
        if got is not None:
            rows.append(got)
    if rows:
        a = np.asarray(rows)
        print(f"{len(rows)} views: x {a[:, 0].min():+.1f} to {a[:, 0].max():+.1f} mm, y (posterior +) "
              f"{a[:, 1].min():+.1f} to {a[:, 1].max():+.1f} mm, median {np.median(a[:, 1]):+.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
