"""Training both networks: processes and threads, model bundles assembled from the latest checkpoints,
resuming/fine-tuning, and k-fold cross-validation with the full pipeline."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..constants import LABEL_NAMES
from ..errors import InputError, LumbarSegError
from ..io.label_maps import to_internal_labels
from ..inference.networks import ModelConfig, build_networks
from .data import Case, split_cases
from .loop import checkpoint_paths, load_checkpoint, train_worker


def assemble_bundle(out: Path, ckpts: dict[str, Path], config: ModelConfig, metadata: dict) -> Path | None:
    """Write the model bundle from the two latest checkpoints (None while one is missing)."""
    from ..inference.models import save_model

    if not all(p.is_file() for p in ckpts.values()):
        return None
    states = {k: load_checkpoint(p) for k, p in ckpts.items()}
    loc, xu = build_networks(config)
    loc.load_state_dict(states["localizer"]["state"])
    xu.load_state_dict(states["xunet"]["state"])
    meta = dict(metadata)
    meta["networks"] = {}
    for k, s in states.items():
        hist = json.loads(s.get("history_json", "[]"))
        meta["networks"][k] = {
            "steps": int(s["step"]), "epochs_completed": int(s["epoch"]),
            "training_minutes": round(float(s["elapsed"]) / 60, 2), "finished": bool(s["done"]),
            "final_train_loss": float(s.get("train_loss", float("nan"))),
            "final_validation": json.loads(s.get("last_val_json", "{}")),
            "history": hist[-30:],
        }
    meta["training_minutes"] = round(max(float(s["elapsed"]) for s in states.values()) / 60, 2)
    meta["finished"] = all(bool(s["done"]) for s in states.values())
    tmp = out.with_name(out.name + ".tmp")
    save_model(tmp, config, loc, xu, json.loads(json.dumps(meta, default=_json_default)))
    os.replace(tmp, out)
    return out


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def _resume_paths(resume) -> tuple[dict[str, Path | None], dict | None]:
    """--resume: a checkpoint of either network (finds its sibling), a folder of them, or a model bundle."""
    if not resume:
        return {"localizer": None, "xunet": None}, None
    p = Path(resume)
    if p.is_dir():
        found = {k: sorted(p.glob(f"*.{k}.ckpt")) for k in ("localizer", "xunet")}
        return {k: (v[-1] if v else None) for k, v in found.items()}, None
    m = re.match(r"^(?P<stem>.+)\.(localizer|xunet)\.ckpt$", p.name)
    if m:
        sib = {k: p.with_name(f"{m.group('stem')}.{k}.ckpt") for k in ("localizer", "xunet")}
        return {k: (v if v.is_file() else None) for k, v in sib.items()}, None
    if p.is_file():  # a model bundle: fine-tune from its weights with fresh optimisers
        bundle = torch.load(p, map_location="cpu", weights_only=True)
        if "localizer" in bundle and "xunet" in bundle:
            return {"localizer": None, "xunet": None}, bundle
    raise InputError(f"--resume {resume}: not a training checkpoint (*.localizer.ckpt / *.xunet.ckpt), "
                     f"a folder of them, or a model bundle.")


def train_models(train_paths, val_paths, config: ModelConfig, out: Path, ckpt_dir: Path, opts: dict,
                 metadata: dict, resume=None, name: str | None = None) -> Path:
    """Train both networks; write checkpoints and the bundle ``out``.

    On the CPU the two networks train side by side in two processes (one thread each; the XUNet takes
    ``max_threads`` once the cheaper localizer is done), each for its share of ``minutes``: the localizer
    ``localizer_share`` of it, the XUNet all of it. On CUDA (and with ``sequential``) they train one after
    the other in this process, the localizer first for ``localizer_share`` of ``minutes``, then the XUNet
    for the rest: one GPU runs one network's kernels at a time anyway, so taking turns costs no GPU time,
    gives each network all the loader workers and the whole GPU memory, and the total stays ``minutes``.
    """
    out = Path(out)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = name or out.stem
    ckpts = checkpoint_paths(ckpt_dir, name)
    resume_ckpts, init_bundle = _resume_paths(resume)
    if init_bundle is not None:  # keep the starting model's provenance (its training time counts too)
        prev = json.loads(init_bundle.get("metadata_json", "{}"))
        metadata = dict(metadata, initialised_from={
            "path": str(resume), "config": init_bundle.get("config"),
            "training_minutes": prev.get("training_minutes"), "training_data": prev.get("training_data"),
            "command": prev.get("command"), "initialised_from": prev.get("initialised_from"),
            "networks": {k: {kk: v.get(kk) for kk in ("steps", "training_minutes", "final_validation")}
                         for k, v in (prev.get("networks") or {}).items()}})
    flags = {k: ckpt_dir / f"{name}.{k}.done" for k in ckpts}
    for f in flags.values():
        f.unlink(missing_ok=True)
    one_after_other = bool(opts.get("sequential")) or opts.get("device") == "cuda"
    minutes, share = opts.get("minutes"), float(opts.get("localizer_share", 0.3))
    loc_opts = dict(opts, lr=opts.get("lr_localizer", opts["lr"]), batch=opts.get("batch_localizer", 2),
                    minutes=minutes * share if minutes else None,
                    epochs=opts.get("localizer_epochs") or opts.get("epochs"), threads=1)
    xu_opts = dict(opts, batch=opts.get("batch_xunet", 1), threads=1,
                   minutes=(minutes * (1.0 - share) if one_after_other else minutes) if minutes else None,
                   max_threads=opts.get("max_threads", 2))
    jobs = {
        "localizer": (loc_opts, None),
        "xunet": (xu_opts, str(flags["localizer"])),
    }
    ctx = mp.get_context("spawn")
    procs = {}
    for kind, (o, other_flag) in jobs.items():
        init = init_bundle[kind] if init_bundle is not None else None
        resume_path = resume_ckpts.get(kind)
        # Resuming into a new checkpoint location: start from the given checkpoint.
        if resume_path is None and ckpts[kind].is_file() and resume:
            resume_path = ckpts[kind]
        args = (kind, [str(p) for p in train_paths], [str(p) for p in val_paths], config.to_dict(), o,
                str(ckpts[kind]), str(resume_path) if resume_path else None, init, str(flags[kind]), other_flag)
        if one_after_other:
            train_worker(*args)
        else:
            procs[kind] = ctx.Process(target=train_worker, args=args, name=f"lumbarseg-{kind}")
            procs[kind].start()
    last_bundle = 0.0
    try:
        while any(p.is_alive() for p in procs.values()):
            time.sleep(5)
            newest = max((p.stat().st_mtime for p in ckpts.values() if p.is_file()), default=0.0)
            if newest > last_bundle and time.time() - last_bundle > 60:
                try:
                    if assemble_bundle(out, ckpts, config, metadata):
                        last_bundle = time.time()
                except Exception as exc:  # noqa: BLE001 - a half-written checkpoint: try again later
                    print(f"(bundle not yet written: {exc})", file=sys.stderr)
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        raise
    for kind, p in procs.items():
        p.join()
        if p.exitcode != 0:
            raise LumbarSegError(f"The {kind} training process failed (exit code {p.exitcode}); see the log above. "
                                 f"Resume with --resume {ckpts[kind]}.")
    if assemble_bundle(out, ckpts, config, metadata) is None:
        raise LumbarSegError("Training ended without both checkpoints; nothing was saved.")
    return out


def cross_validate(case_list: list[Case], cache_by_case: dict, config: ModelConfig, out: Path, ckpt_dir: Path,
                   opts: dict, metadata: dict, folds: int, seed: int) -> dict:
    """K-fold cross-validation: train on K-1 folds, run the full pipeline on the held-out fold."""
    from ..inference import pipeline
    from ..measures import agreement
    from ..inference.models import load_model

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(case_list))
    fold_of = {case_list[i].case_id: f % folds for f, i in enumerate(order)}
    per_vert: dict[str, dict[str, list]] = {n: {k: [] for k in agreement.METRIC_KEYS} for n in LABEL_NAMES.values()}
    fold_results = []
    for f in range(folds):
        held = [c for c in case_list if fold_of[c.case_id] == f]
        rest = [cache_by_case[c.case_id] for c in case_list if fold_of[c.case_id] != f]
        tr, va = split_cases(rest, opts.get("val_fraction", 0.1), seed + f)
        fold_out = out.with_name(f"{out.stem}.fold{f + 1}{out.suffix}")
        print(f"=== fold {f + 1}/{folds}: {len(tr)} train, {len(va)} validation, {len(held)} held-out cases", file=sys.stderr)
        train_models(tr, va, config, fold_out, ckpt_dir, opts, dict(metadata, fold=f + 1, folds=folds),
                     name=fold_out.stem)
        model = load_model(fold_out)
        for c in held:
            ct = sitk.ReadImage(str(c.ct))
            seg = sitk.ReadImage(str(c.seg))
            ref_img = sitk.GetImageFromArray(to_internal_labels(sitk.GetArrayFromImage(seg), "verse"))
            ref_img.CopyInformation(seg)
            res = pipeline.segment(ct, model=model, device=opts.get("device", "auto"))
            m = agreement.compare_images(res.labels, ref_img)
            fold_results.append({"fold": f + 1, "case": c.case_id, "metrics": m})
            for name, vals in m.items():
                for k in agreement.METRIC_KEYS:
                    per_vert[name][k].append(vals[k])
    table = {}
    for name, d in per_vert.items():
        table[name] = {}
        for k, vals in d.items():
            v = np.array([x for x in vals if x is not None and math.isfinite(x)], float)
            table[name][k] = {"mean": float(v.mean()) if v.size else float("nan"),
                              "sd": float(v.std()) if v.size else float("nan"), "n": int(v.size)}
    return {"folds": folds, "table": table, "cases": fold_results}


def format_mean_sd_table(table: dict, keys=("DSC", "FND", "FPD", "MSD", "ASD")) -> str:
    head = f"{'Vertebra':8}" + "".join(f"  {k + (' mm' if k in ('MSD', 'ASD', 'HD95') else ''):>17}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, d in table.items():
        cells = []
        for k in keys:
            m, s = d[k]["mean"], d[k]["sd"]
            digits = 3 if k in ("DSC", "FND", "FPD") else 2
            cells.append("-" if not math.isfinite(m) else f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append(f"{name:8}" + "".join(f"  {c:>17}" for c in cells))
    return "\n".join(lines)
