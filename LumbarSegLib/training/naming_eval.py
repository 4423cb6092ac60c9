"""Naming measured: is each vertebra found where it is, named what it is, and warned of when it is not?

``lumbarseg evaluate-model --naming`` runs the whole pipeline (:func:`pipeline.segment`) on cases the model
never trained on - the real cases in ``--real`` that it holds out (as stored, re-imaged as the scans
hospitals store and as partial views: :mod:`.real_evaluation`'s fixed views) and phantoms with evaluation
seeds - and compares the centre of every reported vertebra with the truth's:

* centre recall within :data:`RECALL_MM`: the share of true lumbar vertebrae with a reported centre (any
  name) that close;
* VerSe's identification rate (Sekuboyina et al. 2021): the share of true lumbar vertebrae whose reported
  centre of the same name lies within :data:`IDENTIFIED_MM` and closer to it than to any other true vertebra;
* the share of scans with every reported name right (each so identified), split by the anchor in view
  (the sacrum, a rib-bearing T12 or T13, both, none) and by the acquisition;
* the share of wrong names that carry a warning (:func:`results.naming_basis.level_check`: the names
  unanchored, or the count says "check the levels").

A reported vertebra the truth leaves unlabelled because the field of view cuts it (:func:`beyond_labels`:
sub-verse007 labels T9-L3, and the top of its L4 shows below the cut L3) is neither right nor wrong: the
truth cannot score it. It is listed apart (``beyond_labels``) and counted in the summary.

A model that trained on a real case given is refused for that case (:func:`real_evaluation.held_out_cases`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..constants import LABEL_NAMES, VERSE_LUMBAR
from ..errors import InputError
from ..io.images import index_to_lps_matrix
from ..results.naming_basis import level_check

RECALL_MM = 10.0
IDENTIFIED_MM = 20.0  # VerSe's identification distance
MIN_TRUE_ML = 5.0  # a true vertebra with less in the field of view (a sliver at its edge) has no centre to find
ANCHOR_IN_VIEW_ML = 10.0  # this much of the sacrum or of T12/T13 in the field of view is an anchor in view
SACRUM_CODE, RIB_CODES = 26, (19, 28)  # VerSe: sacrum; T12 and T13 (the lowest rib-bearing vertebrae)
TRUE_CODES = tuple(range(1, 26)) + (28,)  # VerSe C1-L6, T13: every vertebra a reported centre could lie on
PHANTOM_FOVS = ("abdomen", "lumbar", "lower", "upper", "tight")  # the phantom fields of view that hold lumbar
ANCHORED = ("sacrum", "ribs", "both")
# The shortest whole vertebra measured in ../shared/data (instances.py's gap model: 34-61 mm high). Less room than
# this between the truth's last labelled vertebra and the image's edge holds at most a cut vertebra, which a
# VerSe mask often leaves unlabelled; a whole one it would have labelled.
WHOLE_VERTEBRA_MM = 34.0
UNLABELLED_SHARE = 0.5  # a reported vertebra mostly on voxels the truth leaves unlabelled
TARGETS = {"centre_recall_10mm": 0.95, "all_right_anchored": 1.0, "wrong_warned_unanchored": 1.0}


def centres_mm(labels: sitk.Image, codes, min_ml: float = 0.0) -> dict[int, np.ndarray]:
    """Code -> centroid (LPS mm) of each of ``codes`` in ``labels`` with at least ``min_ml`` in it."""
    arr = sitk.GetArrayViewFromImage(labels)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(arr.ravel().astype(np.int64), minlength=max(codes) + 1)
    present = [int(c) for c in codes if c < counts.size and counts[c] > 0 and counts[c] * voxel_ml >= min_ml]
    if not present:
        return {}
    idx = ndimage.center_of_mass(np.ones(arr.shape, np.uint8), arr, present)
    return {c: np.asarray(labels.TransformContinuousIndexToPhysicalPoint([float(v) for v in i[::-1]]))
            for c, i in zip(present, idx)}


def anchor_in_view(truth: sitk.Image) -> str:
    """"sacrum", "ribs", "both" or "none": which anchors of the count the truth has in the field of view."""
    arr = sitk.GetArrayViewFromImage(truth)
    voxel_ml = float(np.prod(truth.GetSpacing())) / 1000.0
    sacrum = float((arr == SACRUM_CODE).sum()) * voxel_ml >= ANCHOR_IN_VIEW_ML
    ribs = any(float((arr == c).sum()) * voxel_ml >= ANCHOR_IN_VIEW_ML for c in RIB_CODES)
    return "both" if sacrum and ribs else "sacrum" if sacrum else "ribs" if ribs else "none"


def _superior_mm(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """The LPS z (mm, superior positive) of each voxel of ``mask`` (an array of ``image``)."""
    idx = np.argwhere(mask)[:, ::-1].astype(float)  # (x, y, z) indices
    matrix = index_to_lps_matrix(image)
    return matrix[2, 3] + idx @ matrix[2, :3]


def beyond_labels(labels: sitk.Image, truth: sitk.Image, name: str, true: dict) -> bool:
    """Whether the reported vertebra ``name`` lies where the truth cannot score it: its level is the next one
    beyond the truth's last labelled vertebra on one side (L4 below a lowest labelled L3), its centre beyond that
    vertebra's, most of its voxels unlabelled in the truth, and less than one whole vertebra
    (:data:`WHOLE_VERTEBRA_MM`) of image between that vertebra and the image's edge: a vertebra the field of view
    cuts, which the truth did not label. ``true``: :func:`centres_mm` of the truth."""
    code = {LABEL_NAMES[k]: c for c, k in VERSE_LUMBAR.items()}[name]
    if code in true:
        return False
    arr = sitk.GetArrayViewFromImage(truth)
    mine = sitk.GetArrayViewFromImage(labels) == {v: k for k, v in LABEL_NAMES.items()}[name]
    if not mine.any() or float((arr[mine] == 0).mean()) <= UNLABELLED_SHARE:
        return False
    codes = [int(c) for c in np.unique(arr) if 0 < c <= SACRUM_CODE]  # VerSe order: a larger code is lower
    if not codes:
        return False
    centre = centres_mm(labels, [{v: k for k, v in LABEL_NAMES.items()}[name]])
    centre_z = float(next(iter(centre.values()))[2])
    size = np.asarray(truth.GetSize())
    corners = np.array([truth.TransformContinuousIndexToPhysicalPoint([(-0.5, s - 0.5)[b >> k & 1] for k, s in
                                                                        enumerate(size)]) for b in range(8)])
    for last, sign in ((max(codes), -1.0), (min(codes), 1.0)):  # the lowest labelled one, then the highest
        if code != last - int(sign) or last not in true:
            continue
        if sign * (centre_z - float(true[last][2])) <= 0:  # not beyond that vertebra's centre
            continue
        z = _superior_mm(truth, arr == last)
        room = float(z.min() - corners[:, 2].min()) if sign < 0 else float(corners[:, 2].max() - z.max())
        if room < WHOLE_VERTEBRA_MM:
            return True
    return False


def score_naming(labels: sitk.Image, naming: dict, naming_warnings, truth: sitk.Image,
                 column_alarms=()) -> dict:
    """One scan's naming scores: ``labels`` the pipeline's (0, 1..5 = L1..L5) and its ``naming`` (name -> how
    decided) and ``naming_warnings``; ``truth`` VerSe-coded on the same grid; ``column_alarms``: the size and
    column warnings the result got (:func:`measures.measurements.plausibility_warnings`, "probably two
    vertebrae under one name" ...), scored as alarms raised on a right or a wrong result."""
    true = centres_mm(truth, TRUE_CODES, MIN_TRUE_ML)
    true_lumbar = {LABEL_NAMES[VERSE_LUMBAR[c]]: p for c, p in true.items() if c in VERSE_LUMBAR}
    predicted = {LABEL_NAMES[k]: p for k, p in centres_mm(labels, list(LABEL_NAMES)).items()}
    verse_code = {name: code for code, name in ((c, LABEL_NAMES[k]) for c, k in VERSE_LUMBAR.items())}

    def identified(name: str) -> bool:  # VerSe: the same name within 20 mm, and no other true vertebra closer
        if name not in predicted or name not in true_lumbar:
            return False
        d = {c: float(np.linalg.norm(predicted[name] - p)) for c, p in true.items()}
        return d[verse_code[name]] <= IDENTIFIED_MM and min(d, key=d.get) == verse_code[name]

    recalled = [n for n, p in true_lumbar.items()
                if any(np.linalg.norm(q - p) <= RECALL_MM for q in predicted.values())]
    unscored = [n for n in predicted if not identified(n) and beyond_labels(labels, truth, n, true)]
    wrong = [n for n in predicted if not identified(n) and n not in unscored]
    warned = [n for n in wrong if level_check(naming.get(n, "unanchored"), naming_warnings)]
    return {"truth": sorted(true_lumbar), "found": sorted(predicted), "anchor": anchor_in_view(truth),
            "recalled": recalled, "identified": [n for n in sorted(true_lumbar) if identified(n)],
            "wrong": wrong, "wrong_warned": warned, "beyond_labels": unscored,
            "all_right": bool(predicted) and not wrong, "column_alarms": list(column_alarms),
            "naming": dict(naming), "naming_warnings": list(naming_warnings),
            "centre_error_mm": {n: round(float(np.linalg.norm(predicted[n] - true_lumbar[n])), 1)
                                for n in predicted if n in true_lumbar}}


def run_case(ct: sitk.Image, truth: sitk.Image, model, device: str = "cpu", refine=None, finder=None) -> dict:
    """One scan through the whole pipeline (stage 3 with the network ``refine``, as a study runs it; None: the
    XUNet's vertebrae; ``finder``: the finder's path, its peaks named by counting), scored: :func:`score_naming`,
    the size and column warnings and what they read (:func:`column_calibration.scan_record`)."""
    from ..inference import pipeline
    from ..measures import measurements
    from .column_calibration import scan_record

    from ..inference.orientation import OrientationError

    try:
        res = pipeline.segment(ct, model=model, device=device, refine=refine, finder=finder)
    except OrientationError as exc:  # refused as upside down: nothing reported, and the row says why
        empty = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(ct)
        return {**score_naming(empty, {}, [], truth, []), "refined": False, "refused": str(exc),
                **scan_record(empty, truth, {})}
    hu = sitk.GetArrayViewFromImage(ct)
    measured = measurements.measure(sitk.GetArrayViewFromImage(res.labels), hu, ct)
    alarms = measurements.plausibility_warnings(measured)
    return {**score_naming(res.labels, res.naming, res.naming_warnings, truth, alarms), "refined": res.refined,
            **scan_record(res.labels, truth, measured)}


def _held_out_test(state: dict, metadata: dict | None):
    """``held_out(case_id)`` of a model file (its ``metadata`` lists the real cases it trained on) or of a training
    checkpoint (``state`` lists the subjects it left out)."""
    from .vertebra_samples import subject_of

    if metadata is not None:
        trained = {subject_of(c) for c in ((metadata.get("training_data") or {}).get("real") or {}).get("cases") or []}
        return lambda cid: subject_of(cid) not in trained
    held = {subject_of(s) for s in state["leave_out"]}
    return lambda cid: subject_of(cid) in held


def load_stage3(path) -> tuple:
    """(network, description) of a stage-3 model: a bundle (``lumbarseg_stage3.pt``: its metadata lists the real
    cases it trained on) or a training checkpoint of :mod:`.vertebra_train` (it lists the subjects it left out).
    The description's ``held_out(case_id)`` says whether the network never trained on that real case."""
    import torch

    from ..inference.vertebra_stage import BUNDLE_FORMAT, bundle_network, load_weights

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == BUNDLE_FORMAT:
        net, meta = bundle_network(state, path)
        return net, {"path": str(path), "held_out": _held_out_test(state, meta)}
    if not isinstance(state, dict) or "weights" not in state or "leave_out" not in state:
        raise InputError(f"{path} is neither a stage-3 model nor a stage-3 training checkpoint.")
    return load_weights(state), {"path": str(path), "held_out": _held_out_test(state, None)}


def load_finder(path) -> tuple:
    """(network, description) of a finder: a model file (``lumbarseg_finder.pt``) or a training checkpoint of
    :mod:`.finder_train`; ``held_out`` as :func:`load_stage3`'s."""
    import torch

    from ..inference.finder import FINDER_BUNDLE, load_finder as finder_network

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == FINDER_BUNDLE.format:
        net, meta = FINDER_BUNDLE.network(state, path)
        return net, {"path": str(path), "held_out": _held_out_test(state, meta)}
    if not isinstance(state, dict) or "weights" not in state or "leave_out" not in state:
        raise InputError(f"{path} is neither a finder model nor a finder training checkpoint.")
    return finder_network(state, path), {"path": str(path), "held_out": _held_out_test(state, None)}


def real_rows(model, real_dirs, device: str = "cpu", partial_views: int = 4, log=print, stage3=(),
              skipped=None, finders=()) -> list[dict]:
    """Rows of the real cases in ``real_dirs`` that ``model`` never trained on: as stored, the fixed
    re-imagings (5 mm axial, 3 mm sagittal, 3 mm coronal) and ``partial_views`` fixed partial views each.
    ``stage3``: :func:`load_stage3` results; each case is refined by the first that never trained on it, and a
    case that every one trained on is left out (its id appended to ``skipped``). Empty: no stage 3.
    ``finders``: :func:`load_finder` results: the finder's path, each case with the first finder and stage 3 that
    never trained on it; the XUNet then only gives the localizer's box, so every real case counts, not only those
    the XUNet held out."""
    from pathlib import Path

    from . import real_views
    from .data import find_cases
    from .real_evaluation import PARTIAL_VIEW_SEED, held_out_cases
    from .vertebra_eval import acquisitions

    cases = {c.case_id: c for d in real_dirs if Path(d).is_dir() for c in find_cases(d)}
    trained = set(((model.metadata.get("training_data") or {}).get("real") or {}).get("cases") or [])
    rows = []
    for cid in (sorted(cases) if finders else held_out_cases(model.metadata, sorted(cases))):
        if cid in trained and not finders:  # held_out_cases never gives one; guards hand-edited metadata
            raise InputError(f"The model lists {cid} both as trained on and as left out.")
        if cid not in cases:
            continue
        refine, stage3_path = next(((net, info["path"]) for net, info in stage3 if info["held_out"](cid)), (None, None))
        finder, finder_path = next(((net, info["path"]) for net, info in finders if info["held_out"](cid)), (None, None))
        if (stage3 and refine is None) or (finders and finder is None):
            log(f"naming {cid}: skipped, every {'stage-3 model' if refine is None else 'finder'} given trained on it")
            if skipped is not None:
                skipped.append(cid)
            continue
        ct, seg = real_views.load_source(str(cases[cid].ct), str(cases[cid].seg))
        views = [(name, v_ct, v_seg) for name, (v_ct, v_seg) in acquisitions(ct, seg).items()]
        rng = np.random.default_rng([PARTIAL_VIEW_SEED, int(np.frombuffer(cid.encode(), np.uint8).sum())])
        views += [("partial view", *real_views.make_view(ct, seg, rng, kind="tight")[:2]) for _ in range(partial_views)]
        for name, v_ct, v_seg in views:
            row = {"source": cid, "acquisition": name, **run_case(v_ct, v_seg, model, device, refine, finder),
                   "stage3": stage3_path, "finder": finder_path}
            rows.append(row)
            log(_log_line(row))
    return rows


def phantom_rows(model, n: int, seed: int, device: str = "cpu", fovs=PHANTOM_FOVS, log=print,
                 refine=None, finder=None) -> list[dict]:
    """Rows of ``n`` phantoms with seeds from ``seed`` (evaluation seeds only), cycling ``fovs``; ``refine``: the
    stage-3 network (None: none); ``finder``: the finder (None: the XUNet's path)."""
    from .. import phantoms
    from .data import EVAL_SEED_START

    if n and seed < EVAL_SEED_START:
        raise InputError(f"Evaluation phantom seeds must be >= {EVAL_SEED_START}; got {seed}.")
    library = phantoms.load_shape_library()
    rows = []
    for i in range(n):
        fov = fovs[i % len(fovs)]
        ct, truth = phantoms.generate_phantom(seed + i, fov=fov, shape_library=library)
        row = {"source": f"phantom {seed + i}", "acquisition": f"phantom ({fov})",
               **run_case(ct, truth, model, device, refine, finder)}
        rows.append(row)
        log(_log_line(row))
    return rows


def _log_line(row: dict) -> str:
    return (f"naming {row['source']} {row['acquisition']:>16s} [{row['anchor']}]: truth {','.join(row['truth']) or '-'}"
            f" found {','.join(row['found']) or '-'} wrong {','.join(row['wrong']) or '-'}"
            f" (warned {','.join(row['wrong_warned']) or '-'})"
            + (f" unlabelled in the truth {','.join(row['beyond_labels'])}" if row.get("beyond_labels") else "")
            + f" by {row['naming'] or '-'}"
            + (f"; column alarm: {len(row['column_alarms'])} warning(s)" if row.get("column_alarms") else ""))


def _share(k: int, n: int) -> dict:
    return {"n": n, "k": k, "share": k / n if n else None}


def summarize(rows: list[dict]) -> dict:
    """The naming measures over ``rows`` (scans with at least one true lumbar vertebra), their splits and
    the issue's targets."""
    scans = [r for r in rows if r["truth"]]
    real = [r for r in scans if not r["source"].startswith("phantom") and r["acquisition"] != "partial view"]

    def measures(sub):
        return {"scans": len(sub),
                "centre_recall_10mm": _share(sum(len(r["recalled"]) for r in sub), sum(len(r["truth"]) for r in sub)),
                "identification_rate_20mm": _share(sum(len(r["identified"]) for r in sub),
                                                   sum(len(r["truth"]) for r in sub)),
                "all_right": _share(sum(r["all_right"] for r in sub), len(sub)),
                "wrong_warned": _share(sum(len(r["wrong_warned"]) for r in sub), sum(len(r["wrong"]) for r in sub)),
                # the size and column warnings: raised on scans whose names are all right (false alarms) and on
                # scans with a wrong name (detections)
                "column_false_alarms": _share(sum(bool(r.get("column_alarms")) for r in sub if r["all_right"]),
                                              sum(r["all_right"] for r in sub)),
                "column_detections": _share(sum(bool(r.get("column_alarms")) for r in sub if r["wrong"]),
                                            sum(bool(r["wrong"]) for r in sub))}

    anchored = [r for r in scans if r["anchor"] in ANCHORED]
    unanchored = [r for r in scans if r["anchor"] == "none"]
    out = {"overall": measures(scans),
           "by_anchor": {a: measures([r for r in scans if r["anchor"] == a]) for a in (*ANCHORED, "none")},
           "by_acquisition": {a: measures([r for r in scans if r["acquisition"] == a])
                              for a in dict.fromkeys(r["acquisition"] for r in scans)},
           "real_held_out_and_reimaged": measures(real),
           # reported vertebrae the truth does not label (cut by the field of view): neither right nor wrong
           "beyond_labels": _share(sum(bool(r.get("beyond_labels")) for r in scans), len(scans)),
           "negatives": {"scans": len(rows) - len(scans),
                         "lumbar_reported": sum(len(r["found"]) for r in rows if not r["truth"])}}
    got = {"centre_recall_10mm": measures(real)["centre_recall_10mm"]["share"],
           "all_right_anchored": measures(anchored)["all_right"]["share"],
           "wrong_warned_unanchored": measures(unanchored)["wrong_warned"]["share"]}
    out["targets"] = {k: {"target": t, "value": got[k], "met": None if got[k] is None else got[k] >= t}
                      for k, t in TARGETS.items()}
    return out


# A context class whose output row lies this close to background's, against the lumbar classes' own distance from
# it, never split off from background: load_compatible_state started it as background's copy (bias lowered by
# NEW_CLASS_BIAS) and training did not move it. The bundled cpu model's thoracic and caudal rows: 0.12 of the
# lumbar classes' distance (0.62 against 4.5-5.3), their biases still 2.2 under background's - they never win a
# voxel (softmax at most 0.05 on a phantom with T11-sacrum in the box), so the count never finds an anchor.
UNTRAINED_HEAD_RATIO = 0.3


def untrained_context_classes(model) -> list[str]:
    """The model's context classes (thoracic, caudal) that its XUNet never learned (:data:`UNTRAINED_HEAD_RATIO`):
    with them the naming cannot anchor on the ribs or the sacrum, whatever the crop shows."""
    from ..constants import NUM_CLASSES

    classes = list(getattr(model.config, "context_classes", ()) or ())
    if not classes:
        return []
    import torch

    w = model.xunet.head.weight.detach().float().reshape(model.xunet.head.weight.shape[0], -1)
    lumbar = float(torch.median(torch.stack([(w[k] - w[0]).norm() for k in range(1, NUM_CLASSES)])))
    return [name for i, name in enumerate(classes)
            if float((w[NUM_CLASSES + i] - w[0]).norm()) < UNTRAINED_HEAD_RATIO * lumbar]


def measure(model, real_dirs=(), n_phantoms: int = 10, seed: int = 100_000, device: str = "cpu",
            partial_views: int = 4, log=print, stage3=(), finders=()) -> dict:
    """The card's ``naming`` section: rows and :func:`summarize` of them. ``stage3``: :func:`load_stage3` results,
    the first for the phantoms (the product's), each real case with the first that held it out; empty: none."""
    skipped: list[str] = []
    rows = real_rows(model, real_dirs, device, partial_views, log, stage3, skipped, finders) if real_dirs else []
    rows += phantom_rows(model, n_phantoms, seed, device, log=log, refine=stage3[0][0] if stage3 else None,
                         finder=finders[0][0] if finders else None)
    return {"rows": rows, "summary": summarize(rows), "seed_phantoms": [seed, seed + n_phantoms - 1],
            # on the finder's path the finder names the vertebrae: the XUNet's context classes anchor nothing there
            "untrained_context_classes": [] if finders else untrained_context_classes(model),
            "stage3": [info["path"] for _, info in stage3], "finder": [info["path"] for _, info in finders],
            "real_skipped_stage3_trained": skipped}


def _pct(s: dict) -> str:
    return "-" if not s["n"] else f"{100 * s['share']:.0f} % ({s['k']}/{s['n']})"


def naming_markdown(naming: dict) -> list[str]:
    """The model card's section on naming (:func:`measure`)."""
    s = naming["summary"]
    cols = ("centre_recall_10mm", "identification_rate_20mm", "all_right", "wrong_warned", "column_false_alarms",
            "column_detections")
    head = ["| {} | scans | centre recall 10 mm | identification rate 20 mm | scans all names right | wrong names "
            "warned | size/column warning on a right result (false alarm) | on a wrong result (detection) |",
            "|---|---|---|---|---|---|---|---|"]
    first, last = naming["seed_phantoms"]
    phantoms = f"on phantoms with evaluation seeds {first}-{last}" if last >= first else "on no phantom"
    lines = ["## Naming (held out)", "",
             "The whole pipeline on the real cases held out from this model (as stored, the fixed re-imagings and "
             f"partial views) and {phantoms}. Centre recall: true lumbar vertebrae with a reported centre within "
             f"{RECALL_MM:g} mm; identification rate (VerSe): the centre of the same name within {IDENTIFIED_MM:g} mm "
             "and nearest to it; a wrong name is warned when it is unanchored or the count says 'check the levels'.",
             "", head[0].format("anchor in view"), head[1]]
    for name, m in (*s["by_anchor"].items(), ("all", s["overall"])):
        lines.append(f"| {name} | {m['scans']} | " + " | ".join(_pct(m[c]) for c in cols) + " |")
    lines += ["", head[0].format("acquisition"), head[1]]
    for name, m in (*s["by_acquisition"].items(), ("real, held out and re-imaged", s["real_held_out_and_reimaged"])):
        lines.append(f"| {name} | {m['scans']} | " + " | ".join(_pct(m[c]) for c in cols) + " |")
    lines.append("")
    if naming.get("untrained_context_classes"):
        lines += [f"**This model never learned its context classes ({', '.join(naming['untrained_context_classes'])}"
                  "): their output weights are still near-copies of background's, so the network anchors no name; only "
                  "the ribs and sacrum read from the CT itself (inference/anchors.py) can. Retrain them.**", ""]
    if s.get("beyond_labels", {}).get("k"):
        lines += [f"Scans with a reported vertebra the truth leaves unlabelled at the edge of the field of view "
                  f"(not scored): {_pct(s['beyond_labels'])}.", ""]
    for key, t in s["targets"].items():
        value = "-" if t["value"] is None else f"{100 * t['value']:.0f} %"
        lines.append(f"- Target {key} >= {100 * t['target']:.0f} %: {value} -> "
                     f"{'-' if t['met'] is None else 'met' if t['met'] else '**not met**'}")
    return lines + [""]
