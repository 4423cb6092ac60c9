"""Leave-one-real-case-out evaluation: each real case scored by a model that never trained on it.

Every fold model is trained with ``lumbarseg train --real DIR ... --leave-out CASE`` and records the real
cases it trained on and the ones it left out. :func:`leave_one_out` scores each left-out case with the whole
pipeline (localizer included) of the model that left it out, on the case as it is and on ``partial_views``
spine-targeted views of it (2-5 consecutive vertebrae, :func:`real_views.make_view` with kind "tight"), which
measure whether names survive partial fields of view. It refuses a model that trained on the case it would
score, so no number here comes from a case the model saw.

Shape leakage is reported, not hidden: phantoms draw vertebra shapes from real label masks, and when the
masks a fold's phantoms (or the model it was warm-started from) drew from include the held-out subject's own
mask, the case is flagged ``shape_seen``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.label_maps import to_internal_labels
from . import real_views
from .data import find_cases
from .evaluation import evaluate_case, identity_counts

# Real-data subject ids in case ids and shape-library folder names (VerSe "verse005", TotalSegmentator "s0328").
_SUBJECT = re.compile(r"(verse\d+|s\d{4})")
PARTIAL_VIEW_SEED = 424242  # partial views are fixed: every model is scored on the same ones
# The acquisitions hospitals store, as fixed re-imagings of each held-out case (no tilt, the case's own
# tissue; the 5 mm axial one widened to a body-wide field of view): (view kind, spacing xyz mm, thick axis).
REIMAGINGS = {
    "axial 5 mm wide": ("wide", (0.7, 0.7, 5.0), 2),
    "sagittal 3 mm": ("native", (0.8, 0.8, 0.8), 0),
    "coronal 3 mm": ("native", (0.8, 0.8, 0.8), 1),
}
THICK_MM = 3.0


def _subject(name: str) -> str | None:
    m = _SUBJECT.search(name)
    return m.group(1) if m else None


def shape_sources(metadata: dict) -> list[str]:
    """Shape-library folders the model's phantoms drew from, through its whole warm-start chain.

    A model trained before the library was recorded drew from the default library of its time,
    ``<repo>/../shared/data/masks``: its folders now are taken for it ("unknown" when that folder is absent,
    which flags every case).
    """
    out = []
    node = metadata
    while node:
        ph = (node.get("training_data") or {}).get("phantoms")
        if ph:
            lib = ph.get("shape_library")
            out += lib["sources"] if isinstance(lib, dict) else _default_library_sources()
        node = node.get("initialised_from")
    return out


def _default_library_sources() -> list[str]:
    from ..phantoms.shapes import DEFAULT_MASKS_ROOT, load_shape_library

    lib = load_shape_library(DEFAULT_MASKS_ROOT)
    return sorted({s.source for c in lib.shapes for s in lib.shapes[c]}) if lib else ["unknown"]


def _score(ct, seg, model, device) -> dict:
    ref = to_internal_labels(sitk.GetArrayFromImage(seg), "verse")
    r = evaluate_case(ct, ref, model, device)
    dsc = [r["metrics"][n]["DSC"] for n in r["truth"]]
    asd = [r["metrics"][n]["ASD"] for n in r["truth"] if r["metrics"][n]["ASD"] is not None
           and math.isfinite(r["metrics"][n]["ASD"])]
    return {"truth": r["truth"], "found": r["found"], "identity": r["identity"],
            "mean_dsc": float(np.mean(dsc)) if dsc else float("nan"),
            "mean_asd_mm": float(np.mean(asd)) if asd else float("nan"),
            "dsc": {n: r["metrics"][n]["DSC"] for n in r["truth"]},
            "asd_mm": {n: r["metrics"][n]["ASD"] for n in r["truth"]},
            "seconds": r["seconds"], "messages": r["messages"]}


def reimagings(ct, seg, rng) -> dict:
    """The case re-imaged as each of :data:`REIMAGINGS`: name -> (ct, seg, info)."""
    out = {}
    for name, (kind, spacing, axis) in REIMAGINGS.items():
        spacing = list(spacing)
        if axis != 2:
            spacing[axis] = THICK_MM
        out[name] = real_views.make_view(ct, seg, rng, kind=kind, acquisition=(spacing, axis), tilt=False)
    return out


def held_out_cases(metadata: dict, case_ids) -> list[str]:
    """Of ``case_ids``, those the model never trained on: the ones it left out, and any it records no
    training on (a model records every real case it trained on)."""
    real = (metadata.get("training_data") or {}).get("real") or {}
    trained = set(real.get("cases") or [])
    left_out = list(real.get("left_out") or [])
    return left_out + [c for c in case_ids if c not in trained and c not in left_out]


def leave_one_out(fold_models, real_dirs, device: str = "cpu", partial_views: int = 4, log=print,
                  reimaged: bool = True) -> dict:
    """Score every real case left out by one of ``fold_models`` (see the module docstring), also as the
    :data:`REIMAGINGS` (``reimaged``)."""
    from ..inference.models import load_model

    cases = {c.case_id: c for d in real_dirs for c in find_cases(d)}
    if not cases:
        raise InputError(f"No real CT + vertebra mask pairs in {', '.join(str(d) for d in real_dirs)}.")
    rows, seen = [], set()
    for path in fold_models:
        model = load_model(path, allow_untrained=False)
        real = (model.metadata.get("training_data") or {}).get("real") or {}
        trained = set(real.get("cases") or [])
        held = held_out_cases(model.metadata, sorted(cases))
        if not held:
            raise InputError(f"{path}: this model trained on every real case given and was not trained with "
                             "--real ... --leave-out CASE, so no real case is held out from it.")
        sources = shape_sources(model.metadata)
        for cid in held:
            if cid in trained:  # cannot happen with lumbarseg train; guards hand-edited metadata
                raise InputError(f"{path} lists {cid} both as trained on and as left out.")
            if cid not in cases:
                raise InputError(f"{path} left out {cid}, which is not in {', '.join(str(d) for d in real_dirs)}.")
            if cid in seen:
                raise InputError(f"{cid} is left out by more than one of the given models; give one per case.")
            seen.add(cid)
            c = cases[cid]
            ct, seg = real_views.load_source(str(c.ct), str(c.seg))
            whole = _score(ct, seg, model, device)
            subject = _subject(cid)
            row = {"case": cid, "model": Path(path).name, "size": list(ct.GetSize()),
                   "spacing": [round(v, 3) for v in ct.GetSpacing()],
                   "bone_only_filled": real_views.is_bone_only_file(str(c.ct)),
                   "shape_seen": bool(subject and any(subject in s for s in sources)) or "unknown" in sources,
                   **whole, "partial": []}
            rng = np.random.default_rng([PARTIAL_VIEW_SEED, int(np.frombuffer(cid.encode(), np.uint8).sum())])
            for v in range(partial_views):
                view_ct, view_seg, info = real_views.make_view(ct, seg, rng, kind="tight")
                part = _score(view_ct, view_seg, model, device)
                part["view"] = info
                row["partial"].append(part)
            row["reimaged"] = {}
            if reimaged:
                for name, (view_ct, view_seg, info) in reimagings(ct, seg, rng).items():
                    row["reimaged"][name] = {**_score(view_ct, view_seg, model, device), "view": info}
            rows.append(row)
            log(f"{cid}: mean DSC {row['mean_dsc']:.3f} ASD {row['mean_asd_mm']:.2f} mm, found "
                f"{','.join(row['found']) or '-'} (truth {','.join(row['truth'])}), wrong {row['identity']['wrong'] or '-'}"
                f"; partial views: " + "; ".join(f"{','.join(p['truth'])}->{','.join(p['found']) or '-'}"
                                                 for p in row["partial"])
                + "".join(f"; {k}: {v['mean_dsc']:.3f} {','.join(v['found']) or '-'}" for k, v in row["reimaged"].items()))
    return {"cases": rows, "summary": summarize(rows)}


def training_fit(model_path, real_dirs, device: str = "cpu", log=print) -> dict:
    """The model's scores on the real cases it trained on (whole case, as stored): how well it fits what it
    has seen. Never an estimate of accuracy on new scans; kept apart from :func:`leave_one_out`."""
    from ..inference.models import choose_model, load_model, resolve_device

    model = load_model(choose_model(model_path, resolve_device(device)), allow_untrained=False)
    trained = set(((model.metadata.get("training_data") or {}).get("real") or {}).get("cases") or [])
    rows = []
    for d in real_dirs:
        for c in find_cases(d):
            if c.case_id not in trained:
                continue
            ct, seg = real_views.load_source(str(c.ct), str(c.seg))
            row = {"case": c.case_id, **_score(ct, seg, model, device)}
            rows.append(row)
            log(f"{c.case_id} (trained on): mean DSC {row['mean_dsc']:.3f}, found {','.join(row['found']) or '-'}")
    return {"cases": rows, "mean_dsc": float(np.mean([r["mean_dsc"] for r in rows])) if rows else float("nan"),
            "min_case_dsc": min((r["mean_dsc"] for r in rows), default=float("nan"))}


def summarize(rows) -> dict:
    complete = [r for r in rows if len(r["truth"]) == 5]
    partial = [p for r in rows for p in r["partial"]]
    return {
        "cases": len(rows),
        "mean_dsc": float(np.mean([r["mean_dsc"] for r in rows])) if rows else float("nan"),
        "min_case_dsc_complete": min((r["mean_dsc"] for r in complete), default=float("nan")),
        "identity_whole": identity_counts(rows),
        "identity_partial_views": identity_counts(partial),
        "partial_views_mean_dsc": float(np.mean([p["mean_dsc"] for p in partial])) if partial else float("nan"),
        "all_names_correct": all(not r["identity"]["wrong"] and not r["identity"]["invented"] for r in rows),
        "reimaged_mean_dsc": {k: float(np.mean([r["reimaged"][k]["mean_dsc"] for r in rows if k in r.get("reimaged", {})]))
                              for k in REIMAGINGS if any(k in r.get("reimaged", {}) for r in rows)},
        "min_reimaged_dsc_complete": min((v["mean_dsc"] for r in complete for v in r.get("reimaged", {}).values()),
                                         default=float("nan")),
    }
