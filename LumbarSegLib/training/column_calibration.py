"""The column and size warnings calibrated against truth: what each reported vertebra measured and what it was.

``lumbarseg evaluate-model --naming --rows-json FILE`` writes one row per scan (:func:`scan_record`): the
measurements the warnings read (:func:`measures.measurements.measure`: height, volume, centroid, whether the
image edge cuts it), the scan's slice spacing, and per reported vertebra its truth: the VerSe codes its voxels
lie on, the share on the second one, and the true vertebrae it covers (:data:`COVERED_SHARE` of each; two
covered are two vertebrae under one name, ``merged``). The warnings can then be scored with
other thresholds without running the pipeline again:

    python -m LumbarSegLib.training.column_calibration ROWS.json [ROWS.json ...]

prints, for the thresholds of :mod:`measures.measurements` now (``COLUMN_LIMITS``) and for those it had before
the calibration (:data:`OLD_LIMITS`), the share of scans with every name right that get a size or column warning (false
alarms) beside the share of scans with a wrong name that get one (detections), and how many merged vertebrae
are flagged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import LABEL_NAMES
from ..measures.measurements import ColumnLimits, plausibility_warnings

COVERED_SHARE = 0.5  # a true vertebra this much inside one reported vertebra is covered by it
MERGE_SHARE = 0.2  # ... and counts towards a merge when it is this share of the reported vertebra (no sliver)
MEASURED = ("height_mm", "volume_ml", "centroid_mm", "touches_image_edge")
# The thresholds of measures.measurements before the calibration of issue 24 (item 3), for the comparison (the
# skipped-level check did not exist).
OLD_LIMITS = ColumnLimits(merged_height_ratio=1.3, skipped_level_mm=0.0)


def vertebra_truth(labels: np.ndarray, truth: np.ndarray) -> dict[str, dict]:
    """Per reported vertebra (name -> ...): ``on_truth`` VerSe code -> share of its voxels on that true vertebra
    (unlabelled voxels count in the denominator), ``second_share`` the share on its second true vertebra,
    ``covers`` the true codes of which it holds at least :data:`COVERED_SHARE`, and ``merged``
    (:func:`merged`)."""
    labels = np.asarray(labels)
    truth = np.asarray(truth).astype(np.int64)
    true_count = np.bincount(truth.ravel(), minlength=64)
    out = {}
    for lab, name in LABEL_NAMES.items():
        mine = labels == lab
        n = int(mine.sum())
        if not n:
            continue
        count = np.bincount(truth[mine], minlength=true_count.size)
        codes = [int(c) for c in np.argsort(count)[::-1] if c > 0 and count[c] > 0]
        shares = {c: round(float(count[c]) / n, 4) for c in codes}
        covers = [c for c in codes if count[c] >= COVERED_SHARE * true_count[c]]
        second = shares[codes[1]] if len(codes) > 1 else 0.0
        out[name] = {"on_truth": shares, "second_share": second, "covers": covers}
        out[name]["merged"] = merged(out[name])
    return out


def merged(vertebra: dict) -> bool:
    """Whether a reported vertebra (:func:`vertebra_truth`) is two true vertebrae under one name: it covers two,
    each at least :data:`MERGE_SHARE` of its voxels (a sliver of a vertebra cut by the field of view is none)."""
    shares = {int(c): s for c, s in (vertebra.get("on_truth") or {}).items()}
    return sum(shares.get(int(c), 0.0) >= MERGE_SHARE for c in vertebra.get("covers") or []) >= 2


def scan_record(labels: sitk.Image, truth: sitk.Image, measurements: dict) -> dict:
    """What a rows-json row adds to a naming row: the warnings' inputs and each vertebra's truth."""
    found = vertebra_truth(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(truth))
    return {"spacing_mm": [round(float(s), 3) for s in labels.GetSpacing()],
            "vertebrae": {n: {**{k: m.get(k) for k in MEASURED}, **found.get(n, {})} for n, m in measurements.items()}}


def alarms(row: dict, limits: ColumnLimits | None = None) -> list[str]:
    """The size and column warnings of a rows-json row under ``limits`` (None: the thresholds now)."""
    return plausibility_warnings({n: dict(v) for n, v in row["vertebrae"].items()}, limits)


def rates(rows: list[dict], limits: ColumnLimits | None = None) -> dict:
    """False alarms (warned scans among those with every name right), detections (among scans with a wrong
    name), and merged vertebrae flagged by name, over ``rows`` with at least one true lumbar vertebra."""
    scans = [r for r in rows if r["truth"]]
    right = [r for r in scans if r["all_right"]]
    wrong = [r for r in scans if r["wrong"]]
    warned = {id(r): alarms(r, limits) for r in scans}
    two = [(r, n) for r in scans for n, v in r["vertebrae"].items() if merged(v)]
    return {"false_alarms": [sum(bool(warned[id(r)]) for r in right), len(right)],
            "detections": [sum(bool(warned[id(r)]) for r in wrong), len(wrong)],
            "merged_flagged": [sum(any(f" {n} is " in w for w in warned[id(r)]) for r, n in two), len(two)],
            "false_alarm_scans": [f"{r['source']} {r['acquisition']}" for r in right if warned[id(r)]],
            "missed_scans": [f"{r['source']} {r['acquisition']}" for r in wrong if not warned[id(r)]]}


def _pct(k_n) -> str:
    k, n = k_n
    return f"{100 * k / n:.0f} % ({k}/{n})" if n else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m LumbarSegLib.training.column_calibration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help="--rows-json files of lumbarseg evaluate-model --naming")
    p.add_argument("--real-only", action="store_true", help="only the rows of real cases")
    p.add_argument("--phantoms-only", action="store_true", help="only the rows of phantoms")
    args = p.parse_args(argv)
    rows = [r for f in args.rows for r in json.loads(Path(f).read_text())["rows"]]
    if args.real_only:
        rows = [r for r in rows if not r["source"].startswith("phantom")]
    if args.phantoms_only:
        rows = [r for r in rows if r["source"].startswith("phantom")]
    for label, limits in (("before (issue 24)", OLD_LIMITS), ("now", None)):
        r = rates(rows, limits)
        print(f"{label:>18s}: false alarms {_pct(r['false_alarms'])}, detections {_pct(r['detections'])}, "
              f"vertebrae holding two true ones flagged {_pct(r['merged_flagged']) if r['merged_flagged'][1] else 'none'}")
        for key in ("false_alarm_scans", "missed_scans"):
            if r[key]:
                print(f"{'':20s}{key.replace('_', ' ')}: {'; '.join(r[key])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
