"""Held-out evaluation of a model bundle and its model card (JSON + Markdown).

``lumbarseg evaluate-model`` generates phantoms with seeds that training never uses (training phantoms:
seeds 0-99999, see :data:`.data.EVAL_SEED_START`; evaluation: 100000 and up), runs the full inference
pipeline (:func:`pipeline.segment`) on each and compares with the phantom's labels (:func:`metrics.compare`):

* per vertebra: DSC, FND, FPD, MSD, ASD, HD95 as mean ± sd over the cases whose truth contains that
  vertebra (a missed vertebra counts DSC 0, FND 1; distances only where both exist);
* identity: every predicted vertebra is matched to the truth vertebra it overlaps most; it is *correct*
  when that is the same name, *wrong identity* otherwise (e.g. predicted L2 lying on the true L3);
* invented vertebrae: a predicted name absent from the truth (e.g. any "L1" on a thoracic-only FOV);
* missed vertebrae: a truth vertebra with no prediction of that name;
* per field of view and timing.

With ``--loo`` the card also holds the leave-one-real-case-out scores (:mod:`.real_evaluation`).
When ``<repo>/../shared/data`` exists, two real-CT sanity checks are added: ``tptbox_l3`` (labels 21-23 =
L2-L4: metrics for those) and ``ts_dicom`` (a thoracic DICOM series: the number of lumbar vertebrae
reported must be 0).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..constants import LABEL_NAMES
from ..errors import InputError
from ..io.label_maps import to_internal_labels
from .data import EVAL_SEED_START

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# Product targets (issue "Real-CT accuracy"): phantom hold-out, real cases left out of training, negatives.
TARGETS = {"phantom_mean_dsc": 0.90, "identity": 0.98, "real_case_dsc": 0.85}
METRICS = ("DSC", "FND", "FPD", "MSD", "ASD", "HD95")


def _mean_sd(values) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    return {"mean": float(v.mean()) if v.size else float("nan"), "sd": float(v.std()) if v.size else float("nan"),
            "n": int(v.size)}


def identity_analysis(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Match each predicted vertebra to the truth vertebra it overlaps most (see module docstring)."""
    pred_labels = sorted(set(np.unique(pred).tolist()) & set(LABEL_NAMES))
    ref_labels = sorted(set(np.unique(ref).tolist()) & set(LABEL_NAMES))
    out = {"correct": [], "wrong": [], "invented": [], "missed": [], "no_overlap": []}
    for k in pred_labels:
        overlap = np.bincount(ref[pred == k].astype(np.int64), minlength=6)[1:6]
        name = LABEL_NAMES[k]
        if k not in ref_labels:
            out["invented"].append(name)
        if overlap.sum() == 0:
            out["no_overlap"].append(name)
            continue
        best = int(np.argmax(overlap)) + 1
        if best == k:
            out["correct"].append(name)
        else:
            out["wrong"].append(f"{name}->{LABEL_NAMES[best]}")
    out["missed"] = [LABEL_NAMES[k] for k in ref_labels if k not in pred_labels]
    return out


def _labels_array(image: sitk.Image) -> np.ndarray:
    return to_internal_labels(sitk.GetArrayFromImage(image), "verse")


def evaluate_case(ct: sitk.Image, ref: np.ndarray, model, device: str = "cpu") -> dict:
    from ..inference import pipeline
    from ..measures import agreement

    t0 = time.perf_counter()
    res = pipeline.segment(ct, model=model, device=device)
    seconds = time.perf_counter() - t0
    pred = sitk.GetArrayFromImage(res.labels)
    m = agreement.compare(pred, ref, ct.GetSpacing()[::-1])
    return {"metrics": m, "identity": identity_analysis(pred, ref), "found": res.found,
            "truth": [LABEL_NAMES[k] for k in sorted(set(np.unique(ref).tolist()) & set(LABEL_NAMES))],
            "seconds": seconds, "timings": res.timings, "heatmap_peak": res.heatmap_peak,
            "messages": res.messages}


def aggregate(cases: list[dict]) -> dict:
    per_vertebra = {}
    for name in LABEL_NAMES.values():
        rows = [c["metrics"][name] for c in cases if name in c["truth"]]
        per_vertebra[name] = {k: _mean_sd([r[k] for r in rows]) for k in METRICS}
        per_vertebra[name]["cases"] = len(rows)
    all_rows = [c["metrics"][n] for c in cases for n in c["truth"]]
    overall = {k: _mean_sd([r[k] for r in all_rows]) for k in METRICS}
    ids = identity_counts(cases)
    partial = [c for c in cases if c.get("fov") != "abdomen"]
    by_fov: dict[str, dict] = {}
    for fov in sorted({c.get("fov", "?") for c in cases}):
        sub = [c for c in cases if c.get("fov", "?") == fov]
        rows = [c["metrics"][n] for c in sub for n in c["truth"]]
        sub_ids = identity_counts(sub)
        by_fov[fov] = {
            "cases": len(sub),
            "truth_vertebrae": len(rows),
            "DSC": _mean_sd([r["DSC"] for r in rows]),
            "ASD": _mean_sd([r["ASD"] for r in rows]),
            "correct": sub_ids["correct"], "wrong_identity": sub_ids["wrong"], "invented": sub_ids["invented"],
            "missed": sub_ids["missed"],
            "lumbar_reported_on_negatives": sum(len(c["found"]) for c in sub if not c["truth"]),
        }
    secs = [c["seconds"] for c in cases]
    return {
        "per_vertebra": per_vertebra, "overall": overall,
        "identity": {"predicted": ids["predicted"], "correct": ids["correct"], "wrong_identity": ids["wrong"],
                     "no_overlap": ids["no_overlap"], "accuracy": ids["accuracy"], "invented": ids["invented"],
                     "invented_in_partial_fovs": identity_counts(partial)["invented"], "missed": ids["missed"]},
        "by_fov": by_fov,
        "timing": {"mean_s": float(np.mean(secs)) if secs else float("nan"),
                   "max_s": float(np.max(secs)) if secs else float("nan")},
    }


def targets_status(agg: dict, loo: dict | None = None, real: dict | None = None) -> dict:
    """Each target with its measured value; real-CT targets only where they were measured."""
    mean_dsc = agg["overall"]["DSC"]["mean"]
    ident = agg["identity"]["accuracy"]
    out = {
        "phantom_mean_dsc": {"target": f">= {TARGETS['phantom_mean_dsc']}", "value": mean_dsc,
                             "met": bool(mean_dsc >= TARGETS["phantom_mean_dsc"])},
        "phantom_identity": {"target": f">= {TARGETS['identity']:.0%}", "value": ident,
                             "met": bool(ident >= TARGETS["identity"])},
    }
    if loo:
        worst = loo["summary"]["min_case_dsc_complete"]
        out["real_left_out_dsc"] = {"target": f">= {TARGETS['real_case_dsc']} on each held-out real case with L1-L5",
                                    "value": worst, "met": bool(worst >= TARGETS["real_case_dsc"])}
        out["real_left_out_names"] = {"target": "every vertebra named right on every held-out real case",
                                      "value": loo["summary"]["all_names_correct"],
                                      "met": bool(loo["summary"]["all_names_correct"])}
    dicom = (real or {}).get("ts_dicom")
    if dicom and "passed" in dicom:
        out["thoracic_dicom_no_lumbar"] = {"target": "0 lumbar vertebrae on the real thoracic series",
                                           "value": dicom["lumbar_vertebrae_reported"], "met": bool(dicom["passed"])}
    return out


def identity_counts(results) -> dict:
    """Identity tallies over cases (each with an ``identity`` from :func:`identity_analysis`)."""
    out = {k: sum(len(r["identity"][k]) for r in results) for k in ("correct", "wrong", "invented", "missed",
                                                                    "no_overlap")}
    out["predicted"] = out["correct"] + out["wrong"] + out["no_overlap"]
    out["accuracy"] = out["correct"] / out["predicted"] if out["predicted"] else float("nan")
    return out


def real_ct_checks(model, device: str = "cpu", data_dir: Path | None = None) -> dict:
    """Sanity checks on the few real CTs under ../shared/data (absent folders are skipped)."""
    from ..io import images

    data_dir = Path(data_dir) if data_dir else SHARED_DATA
    out: dict = {}
    tpt = data_dir / "tptbox_l3"
    cts = sorted(tpt.glob("*_ct.nii.gz")) if tpt.is_dir() else []
    trained_on = set(((model.metadata.get("training_data") or {}).get("real") or {}).get("cases") or [])
    if cts and any(cts[0].name.startswith(c + "_") for c in trained_on):
        out["tptbox_l3"] = {"skipped": "the model trained on this case: its held-out score is in the "
                                       "leave-one-case-out table"}
    elif cts:
        ct_path = cts[0]
        seg_path = next(iter(sorted(tpt.glob("*seg-vert*_msk.nii.gz"))), None)
        try:
            ct = images.read_ct(ct_path)
            seg = sitk.ReadImage(str(seg_path))
            ref = _labels_array(seg)
            r = evaluate_case(ct, ref, model, device)
            m = {n: r["metrics"][n] for n in ("L2", "L3", "L4") if n in r["metrics"]}
            out["tptbox_l3"] = {
                "what": "real CT crop (1.5 mm, PIR) with labels 21-23 = L2-L4; metrics for L2-L4",
                "file": str(ct_path.relative_to(data_dir.parent.parent)) if data_dir.parent.parent in ct_path.parents else str(ct_path),
                "found": r["found"], "truth": r["truth"], "metrics": m,
                "mean_dsc_L2_L4": float(np.mean([v["DSC"] for v in m.values()])) if m else float("nan"),
                "identity": r["identity"], "heatmap_peak": r["heatmap_peak"], "seconds": r["seconds"],
                "messages": r["messages"],
            }
        except Exception as exc:  # noqa: BLE001 - a sanity check must not hide the phantom results
            out["tptbox_l3"] = {"error": str(exc)}
    dcm = data_dir / "ts_dicom"
    if dcm.is_dir():
        from ..inference import pipeline

        try:
            ct = images.read_ct(dcm)
            t0 = time.perf_counter()
            res = pipeline.segment(ct, model=model, device=device)
            out["ts_dicom"] = {
                "what": "real thoracic CT DICOM series (20 slices, T11/T12 level, no lumbar vertebra); "
                        "must report 0 lumbar vertebrae",
                "lumbar_vertebrae_reported": len(res.found), "found": res.found, "passed": len(res.found) == 0,
                "heatmap_peak": res.heatmap_peak, "seconds": time.perf_counter() - t0, "messages": res.messages,
            }
        except Exception as exc:  # noqa: BLE001
            out["ts_dicom"] = {"error": str(exc)}
    return out


def evaluate_model(model_path=None, n: int = 20, seed: int = EVAL_SEED_START, fovs=None, spacing=None,
                   device: str = "cpu", real_ct: bool = True, log=print) -> dict:
    """Run the held-out phantom evaluation (and real-CT checks); returns the model card dictionary."""
    from .. import phantoms
    from ..inference.models import choose_model, files_sha256, load_model, resolve_device

    if seed < EVAL_SEED_START:
        raise InputError(f"Evaluation phantom seeds must be >= {EVAL_SEED_START} (lower seeds are training seeds); "
                         f"got --seed {seed}.")
    fovs = list(fovs) if fovs else list(phantoms.FOV_CHOICES)
    for f in fovs:
        if f not in phantoms.FOV_CHOICES:
            raise InputError(f"Unknown field of view '{f}': choose from {', '.join(phantoms.FOV_CHOICES)}.")
    model = load_model(choose_model(model_path, resolve_device(device)), allow_untrained=False)
    lib = phantoms.load_shape_library()
    t_start = time.time()
    cases = []
    for i in range(n):
        s = seed + i
        fov = fovs[i % len(fovs)]
        t0 = time.perf_counter()
        ct, lab = phantoms.generate_phantom(s, spacing=spacing, fov=fov, shape_library=lib)
        gen_s = time.perf_counter() - t0
        r = evaluate_case(ct, _labels_array(lab), model, device)
        r.update(seed=s, fov=fov, size=list(ct.GetSize()), spacing=[round(v, 3) for v in ct.GetSpacing()],
                 generate_seconds=gen_s)
        cases.append(r)
        dsc = [r["metrics"][n_]["DSC"] for n_ in r["truth"]]
        log(f"[{i + 1}/{n}] seed {s} {fov:9s} size {tuple(ct.GetSize())} truth {','.join(r['truth']) or '-':15s} "
            f"found {','.join(r['found']) or '-':15s} mean DSC {np.mean(dsc) if dsc else float('nan'):.3f}  "
            f"wrong {r['identity']['wrong'] or '-'} invented {r['identity']['invented'] or '-'}  {r['seconds']:.1f} s")
    agg = aggregate(cases)
    real = real_ct_checks(model, device) if real_ct else {}
    card = {
        "model": {"file": " + ".join(Path(f).name for f in model.files), "name": model.name,
                  "bytes": sum(Path(f).stat().st_size for f in model.files), "sha256": files_sha256(model.files),
                  "config": model.config.to_dict()},
        "training": {k: model.metadata.get(k) for k in ("config", "training_data", "training_minutes", "finished",
                                                         "command", "created", "torch", "git_commit", "options",
                                                         "initialised_from")},
        "training_networks": {k: {kk: v.get(kk) for kk in ("steps", "epochs_completed", "training_minutes",
                                                            "final_train_loss", "final_validation")}
                              for k, v in model.metadata.get("networks", {}).items()},
        "evaluation": {
            "phantoms": n, "seeds": [seed, seed + n - 1], "fovs": fovs,
            "spacing": list(spacing) if spacing else "generator default (random clinical spacings)",
            "seed_policy": f"training phantoms use seeds 0-{EVAL_SEED_START - 1}; evaluation seeds start at "
                           f"{EVAL_SEED_START}, so no evaluation phantom was seen in training",
            "device": device, "minutes": round((time.time() - t_start) / 60, 2),
            **agg,
        },
        "training_notes": model.metadata.get("notes") or [],
        "targets": targets_status(agg, real=real),
        "real_ct": real,
        "cases": [{k: c[k] for k in ("seed", "fov", "size", "spacing", "truth", "found", "identity", "seconds",
                                     "heatmap_peak", "metrics")} for c in cases],
    }
    return card


def _f(v, digits=3):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _ms(d, digits=3):
    return "-" if not d["n"] else f"{_f(d['mean'], digits)} ± {_f(d['sd'], digits)}"


def card_markdown(card: dict) -> str:
    ev, tr, model = card["evaluation"], card["training"], card["model"]
    td = tr.get("training_data") or {}
    ph = td.get("phantoms") or {}
    lines = [f"# Model card: {model['file']}", ""]
    lines += ["## Model", "",
              f"- Configuration `{model['config']['name']}`: localizer {model['config']['localizer_channels']} channels, "
              f"input {tuple(model['config']['localizer_input'])} (x, y, z); XUNet base width {model['config']['xunet_base']}, "
              f"input {tuple(model['config']['xunet_input'])}; bone window level {model['config']['window_level']:g} / "
              f"width {model['config']['window_width']:g} HU.",
              f"- File size {model['bytes'] / 1e6:.2f} MB (half-precision weights), SHA-256 `{model['sha256']}`.",
              "- Method: two-stage localizer heatmap + crop + XUNet of Lu et al. 2023, retrained here on "
              + ("synthetic phantoms and real labelled CT." if td.get("real") else "synthetic data."),
              ""]
    lines += ["## Training data", ""]
    if ph:
        lines.append(f"- {ph.get('count')} synthetic phantoms from `LumbarSegLib.phantoms` (seeds {ph['seeds'][0]}–"
                     f"{ph['seeds'][1]}), fields of view {ph.get('fov_counts')}, in-plane spacing "
                     f"{ph['spacing_xy_mm'][0]}–{ph['spacing_xy_mm'][1]} mm, slice spacing {ph.get('spacing_z_mm')} mm.")
    for folder, count in (td.get("data_dirs") or {}).items():
        lines.append(f"- {count} cases from `{folder}`.")
    if td.get("data_dir") and not td.get("data_dirs"):
        lines.append(f"- {td.get('data_dir_cases')} cases from {td['data_dir']}.")
    real_td = td.get("real")
    if real_td:
        lines.append(f"- Real labelled CT: {len(real_td['cases'])} cases ({', '.join(real_td['cases'])}) from "
                     f"{', '.join(f'`{d}`' for d in real_td['dirs'])}, each as {real_td['views_per_case']} views (the "
                     f"case itself and re-imagings with other tilts, grids and fields of view), drawn for "
                     f"{real_td['sample_share']:.0%} of the training samples"
                     + (f"; left out: {', '.join(real_td['left_out'])}." if real_td.get("left_out") else "."))
    if ph and ph.get("shape_library"):
        lib = ph["shape_library"]
        lines.append(f"- Phantom vertebra shapes: {'real masks from ' + ', '.join(lib['sources']) if lib.get('sources') else 'procedural only (no real masks)'}.")
    for note in (card.get("training_notes") or []):
        lines.append(f"- {note}")
    lines.append(f"- {td.get('train_cases')} training / {td.get('validation_cases')} validation cases "
                 f"({td.get('with_lumbar')} with and {td.get('without_lumbar')} without lumbar vertebrae), "
                 f"{td.get('crops_per_case')} XUNet crops per case (exact + jittered ground-truth boxes).")
    if not real_td:
        lines.append("- No real CT was used for training.")
    lines += ["", "## Training", ""]
    lines.append(f"- Wall time {tr.get('training_minutes')} min on a shared 2-core CPU "
                 f"(torch {tr.get('torch')}), finished: {tr.get('finished')}; git {tr.get('git_commit')}.")
    for k, v in card.get("training_networks", {}).items():
        fv = v.get("final_validation") or {}
        extra = ""
        if k == "xunet" and fv:
            extra = " validation Dice (crops) " + ", ".join(f"{n} {_f(fv.get(f'dice_{n}'))}" for n in LABEL_NAMES.values())
        elif fv:
            extra = f" validation box IoU {_f(fv.get('box_iou'))}, lumbar found {_f(fv.get('pos_found'), 2)}, " \
                    f"negatives fired {_f(fv.get('neg_fired'), 2)}"
        lines.append(f"- {k}: {v.get('steps')} steps, {v.get('epochs_completed')} epochs, "
                     f"{v.get('training_minutes')} min, final train loss {_f(v.get('final_train_loss'), 4)};{extra}")
    init = tr.get("initialised_from")
    while init:
        nets = ", ".join(f"{k} {v.get('steps')} steps / {v.get('training_minutes')} min"
                         for k, v in (init.get("networks") or {}).items())
        lines.append(f"- Warm-started from `{init.get('path')}` (itself trained {init.get('training_minutes')} min: "
                     f"{nets}; command `{init.get('command')}`).")
        init = init.get("initialised_from")
    lines.append(f"- Command: `{tr.get('command')}` (see `tools/train_bundled.sh`).")
    lines += ["", "## Held-out evaluation (synthetic phantoms)", "",
              f"{ev['phantoms']} phantoms, seeds {ev['seeds'][0]}–{ev['seeds'][1]} ({ev['seed_policy']}); "
              f"fields of view cycled over {', '.join(ev['fovs'])}; spacing: {ev['spacing']}; full pipeline "
              f"(`pipeline.segment`) on {ev['device']}; metrics on the input grid.", "",
              "| Vertebra | cases | DSC | FND | FPD | MSD mm | ASD mm | HD95 mm |",
              "|---|---|---|---|---|---|---|---|"]
    for name, d in ev["per_vertebra"].items():
        lines.append(f"| {name} | {d['cases']} | {_ms(d['DSC'])} | {_ms(d['FND'])} | {_ms(d['FPD'])} | "
                     f"{_ms(d['MSD'], 2)} | {_ms(d['ASD'], 2)} | {_ms(d['HD95'], 2)} |")
    o = ev["overall"]
    lines.append(f"| **all** | {o['DSC']['n']} | {_ms(o['DSC'])} | {_ms(o['FND'])} | {_ms(o['FPD'])} | "
                 f"{_ms(o['MSD'], 2)} | {_ms(o['ASD'], 2)} | {_ms(o['HD95'], 2)} |")
    idn = ev["identity"]
    lines += ["", "Per vertebra: mean ± sd over the cases whose truth contains it (a missed vertebra counts DSC 0; "
              "distances only where both exist).", "",
              f"- Identity: {idn['correct']} of {idn['predicted']} predicted vertebrae overlap the true vertebra of the "
              f"same name best (accuracy {_f(idn['accuracy'])}); wrong identity {idn['wrong_identity']}; "
              f"predicted with no overlap {idn['no_overlap']}.",
              f"- Invented vertebrae (predicted name absent from the truth): {idn['invented']} "
              f"({idn['invented_in_partial_fovs']} on partial/thoracic fields of view). Missed: {idn['missed']}.",
              f"- Time per case (pipeline.segment): mean {_f(ev['timing']['mean_s'], 1)} s, max "
              f"{_f(ev['timing']['max_s'], 1)} s; evaluation took {ev['minutes']} min.", "",
              "| FOV | cases | truth vertebrae | DSC | ASD mm | correct | wrong identity | invented | missed | lumbar reported on negatives |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for fov, d in ev["by_fov"].items():
        lines.append(f"| {fov} | {d['cases']} | {d['truth_vertebrae']} | {_ms(d['DSC'])} | {_ms(d['ASD'], 2)} | "
                     f"{d['correct']} | {d['wrong_identity']} | {d['invented']} | {d['missed']} | "
                     f"{d['lumbar_reported_on_negatives']} |")
    if card.get("real_leave_one_out"):
        lines += [""] + _loo_markdown(card["real_leave_one_out"])
    if card.get("real_fit"):
        fit = card["real_fit"]
        lines += ["", "## Real CT it trained on (fit, not accuracy)", "",
                  "The same whole-pipeline scores on the real cases this model trained on. They say how well it fits "
                  "what it has seen; they are not an estimate of accuracy on new scans (see the held-out table).", "",
                  "| case (trained on) | found | DSC per vertebra | mean DSC |", "|---|---|---|---|"]
        for r in fit["cases"]:
            per = ", ".join(f"{n} {_f(d)}" for n, d in r["dsc"].items())
            lines.append(f"| {r['case']} | {','.join(r['found']) or '-'} | {per} | {_f(r['mean_dsc'])} |")
        lines += ["", f"- Mean {_f(fit['mean_dsc'])}, worst case {_f(fit['min_case_dsc'])}."]
    lines += ["", "## Targets (product owner)", "", "| target | required | value | met |", "|---|---|---|---|"]
    for k, t in card["targets"].items():
        v = t["value"]
        lines.append(f"| {k} | {t['target']} | {_f(v) if isinstance(v, float) else v} | {'yes' if t['met'] else '**no**'} |")
    lines += ["", "## Real-CT sanity checks", ""]
    real = card.get("real_ct") or {}
    if not real:
        lines.append("- Not run (no `../shared/data`).")
    t = real.get("tptbox_l3")
    if t:
        if "skipped" in t:
            lines.append(f"- tptbox_l3: not scored here: {t['skipped']}.")
        elif "error" in t:
            lines.append(f"- tptbox_l3: failed: {t['error']}")
        else:
            ms = ", ".join(f"{n} DSC {_f(m['DSC'])} / ASD {_f(m['ASD'], 2)} mm" for n, m in t["metrics"].items())
            lines.append(f"- tptbox_l3 ({t['what']}): found {', '.join(t['found']) or 'nothing'} "
                         f"(truth {', '.join(t['truth'])}); {ms or 'no overlap'}; mean DSC L2-L4 {_f(t['mean_dsc_L2_L4'])}; "
                         f"heatmap peak {_f(t['heatmap_peak'], 2)}; wrong identity {t['identity']['wrong'] or 'none'}.")
    t = real.get("ts_dicom")
    if t:
        if "error" in t:
            lines.append(f"- ts_dicom: failed: {t['error']}")
        else:
            lines.append(f"- ts_dicom ({t['what']}): {t['lumbar_vertebrae_reported']} lumbar vertebrae reported "
                         f"({', '.join(t['found']) or 'none'}) -> {'PASS' if t['passed'] else '**FAIL**'}; "
                         f"heatmap peak {_f(t['heatmap_peak'], 2)}.")
    if card.get("naming"):
        from .naming_eval import naming_markdown

        lines += [""] + naming_markdown(card["naming"])[:-1]
    lines += ["", "## Limitations", "", _limitation(card, real_td),
              "- The bundled `cpu` configuration is narrow and was trained on a 2-core CPU; it is meant to make the "
              "extension usable out of the box, not to match the paper's results.",
              "", "## Reproduce", "", f"```\n{card.get('command', '')}\n```", ""]
    return "\n".join(lines)


def _limitation(card: dict, real_training: dict | None) -> str:
    """What the card's numbers can and cannot say, by what the model trained on and what was scored."""
    if card.get("real_leave_one_out"):
        return ("- Phantom numbers do not transfer to clinical CT. The real cases are few, small spine-targeted crops "
                "(and one bone-only scan given a synthetic body): a left-out score is an estimate from a handful of "
                "scans, not a validation.")
    real_named = ((card.get("naming") or {}).get("summary") or {}).get("real_held_out_and_reimaged", {}).get("scans")
    if real_named:
        return (f"- Phantom numbers do not transfer to clinical CT. The naming section scores {real_named} real scans "
                "held out (the cases as stored, re-imaged and in partial views) by models that never trained on them: "
                "an estimate from a handful of small spine-targeted crops, not a validation. Segmentation held out: "
                "`evaluate-model --loo`.")
    if real_training:
        return (f"- Trained on synthetic phantoms and {len(real_training.get('cases') or [])} real CTs (listed above), "
                "but evaluated here on synthetic phantoms only: no real case was scored held out (`evaluate-model "
                "--loo` does that). The phantom numbers do not transfer to clinical CT, and the real-CT checks above "
                "are sanity checks, not a validation.")
    return ("- Trained and evaluated on synthetic phantoms only; the phantom numbers do not transfer to clinical CT. "
            "The two real-CT checks above are sanity checks on two small images, not a validation.")


def _loo_markdown(loo: dict) -> list[str]:
    """The card's section on the leave-one-real-case-out scores (:mod:`.real_evaluation`)."""
    lines = ["## Real CT, leave one case out", "",
             "Each real case is scored with the whole pipeline (localizer included) by a model trained with the same "
             "recipe on everything else (the other real cases and the phantoms), never on this case. Partial views: "
             "spine-targeted re-imagings of the held-out case (2-5 consecutive vertebrae, another tilt and grid), "
             "scored the same way. Re-imaged: the held-out case as the scans hospitals store - 5 mm axial slices "
             "(0.7 mm in-plane) in a body-wide field of view, 3 mm sagittal and 3 mm coronal reconstructions "
             "(0.8 mm within the slice), each with the slice profile's blur: mean DSC (names right).", "",
             "| case | scored by | truth | found | DSC per vertebra | mean DSC | mean ASD mm | wrong names | "
             "partial views: mean DSC, names right | re-imaged: axial 5 mm / sagittal 3 mm / coronal 3 mm |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in loo["cases"]:
        reim = " / ".join(f"{_f(v['mean_dsc'])} ({identity_counts([v])['correct']}/{len(v['truth'])})"
                          for v in (r.get("reimaged") or {}).values()) or "-"
        ids = identity_counts(r["partial"])
        per = ", ".join(f"{n} {_f(d)}" for n, d in r["dsc"].items())
        part_dsc = float(np.mean([p["mean_dsc"] for p in r["partial"]])) if r["partial"] else float("nan")
        lines.append(f"| {r['case']}{' (shape seen)' if r.get('shape_seen') else ''} | `{r['model']}` | "
                     f"{','.join(r['truth'])} | {','.join(r['found']) or '-'} | {per} | {_f(r['mean_dsc'])} | "
                     f"{_f(r['mean_asd_mm'], 2)} | {', '.join(r['identity']['wrong']) or '-'} | "
                     f"{_f(part_dsc)}, {ids['correct']}/{ids['predicted']} | {reim} |")
    s = loo["summary"]
    iw, ip = s["identity_whole"], s["identity_partial_views"]
    lines += ["", f"- Mean DSC over the {s['cases']} held-out cases {_f(s['mean_dsc'])}; worst case with complete "
              f"L1-L5 {_f(s['min_case_dsc_complete'])}.",
              f"- Names on whole cases: {iw['correct']} of {iw['predicted']} predicted vertebrae right (wrong "
              f"{iw['wrong']}, invented {iw['invented']}, missed {iw['missed']}). On partial views: {ip['correct']} of "
              f"{ip['predicted']} (wrong {ip['wrong']}, invented {ip['invented']}, missed {ip['missed']}), mean DSC "
              f"{_f(s['partial_views_mean_dsc'])}."]
    if s.get("reimaged_mean_dsc"):
        lines.append("- Re-imaged, mean DSC over the held-out cases: " + "; ".join(
            f"{k} {_f(v)}" for k, v in s["reimaged_mean_dsc"].items())
            + f"; worst re-imaging of a case with complete L1-L5 {_f(s['min_reimaged_dsc_complete'])}.")
    if any(r.get("shape_seen") for r in loo["cases"]):
        lines.append("- *Shape seen*: the phantoms of that case's model, or of the model it was warm-started from, "
                     "drew vertebra shapes from real label masks that include this subject's own mask. Its CT was "
                     "never trained on, but its vertebra shapes were, deformed, inside synthetic phantoms.")
    return lines


def write_card(card: dict, json_path=None, md_path=None):
    """Write the card as JSON and Markdown, with names instead of the training machine's paths."""
    from ..results.machine_paths import names_not_paths
    from ..io.text_files import write_json

    card = names_not_paths(card)
    if json_path:
        write_json(card, json_path)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(card_markdown(card), encoding="utf-8")
