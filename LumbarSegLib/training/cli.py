"""``lumbarseg train`` and ``evaluate-model``: data preparation (folders, phantoms, cache), the training run and
the held-out evaluation. Their arguments are in :mod:`.commands`, which loads no torch."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..inference.networks import CONFIGS
from ..results.training_cases import HASHES_KEY, hash_cases
from . import evaluation, real_evaluation
from .data import (EVAL_SEED_START, TRAIN_Z_SPACINGS, Case, cache_path, find_cases, generate_phantoms,
                   phantom_spec, prepare_cache, real_case_views, split_cases)
from .loop import _format_val
from .orchestration import _git_commit, cross_validate, format_mean_sd_table, train_models


def training_device(name: str) -> str:
    """'cpu' or 'cuda' for ``--device`` (an absent CUDA is an error; Apple MPS, untested for training, is not used)."""
    from ..inference.models import resolve_device

    return "cuda" if resolve_device(name).type == "cuda" else "cpu"


def default_loader_workers(device: str) -> int:
    """CPU: none (each training process augments its own batches on its one thread). CUDA: all CPUs but two
    (the training process and the pinning thread), at most 12, which keeps a paper-config GPU step fed."""
    return 0 if device == "cpu" else max(1, min(12, (os.cpu_count() or 2) - 2))


def _shape_library_description() -> dict:
    """Which real masks the phantoms drew vertebra shapes from (a held-out case's own mask must not be one)."""
    from ..phantoms import load_shape_library

    lib = load_shape_library()
    if lib is None:
        return {"root": None, "sources": []}
    return {"root": str(lib.root), "sources": sorted({s.source for c in lib.shapes for s in lib.shapes[c]})}


def run_train(args) -> int:
    if not args.data_dir and not args.phantoms and not args.real:
        raise InputError("Give a training DATA_DIR, --real DIR or --phantoms N.")
    if not 0.0 < args.real_weight < 1.0:
        raise InputError(f"--real-weight must lie strictly between 0 and 1, got {args.real_weight}.")
    if not args.epochs and not args.minutes and not args.max_steps and not args.prepare_only:
        raise InputError("Give --epochs or --minutes (or both).")
    for name in ("batch", "batch_localizer", "jobs", "loader_workers"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "loader_workers" else 1):
            raise InputError(f"--{name.replace('_', '-')} must be at least {0 if name == 'loader_workers' else 1}, "
                             f"got {value}.")
    device = training_device(args.device)
    if args.config not in CONFIGS:
        raise InputError(f"--config {args.config}: choose one of {', '.join(sorted(CONFIGS))}.")
    config = CONFIGS[args.config]
    out = Path(args.output)
    if args.cache:
        cache = Path(args.cache)
    elif args.data_dir or args.real:
        cache = Path((args.data_dir or args.real)[0]) / ".lumbarseg_cache"
    else:
        import tempfile
        cache = Path(tempfile.gettempdir()) / "lumbarseg_cache"
    t0 = time.time()
    cases: list[Case] = []
    data_desc: dict = {}
    for data_dir in args.data_dir or []:
        found = find_cases(data_dir)
        if not found:
            raise InputError(f"No CT + vertebra mask pairs (*_ct.nii.gz + *_seg-vert_msk.nii.gz) in {data_dir}.")
        cases += found
        data_desc.setdefault("data_dirs", {})[str(Path(data_dir).resolve())] = len(found)
        data_desc["data_dir_cases"] = data_desc.get("data_dir_cases", 0) + len(found)
        data_desc.setdefault(HASHES_KEY, []).extend(hash_cases(found))  # to recognise these CTs when scored
    if args.real:
        real_cases = [c for d in args.real for c in find_cases(d)]
        for d in args.real:
            if not find_cases(d):
                raise InputError(f"No CT + vertebra mask pairs (*_ct.nii.gz + *_seg-vert_msk.nii.gz) in {d}.")
        unknown = sorted(set(args.leave_out) - {c.case_id for c in real_cases})
        if unknown:
            raise InputError(f"--leave-out {', '.join(unknown)}: no such real case; the real cases are "
                             f"{', '.join(c.case_id for c in real_cases)}.")
        kept = [c for c in real_cases if c.case_id not in args.leave_out]
        cases += real_case_views(kept, args.views)
        data_desc["real"] = {"dirs": [str(Path(d).resolve()) for d in args.real],
                             "cases": [c.case_id for c in kept], "left_out": sorted(args.leave_out),
                             "views_per_case": args.views, "sample_share": args.real_weight}
        data_desc.setdefault(HASHES_KEY, []).extend(hash_cases(kept))
    elif args.leave_out:
        raise InputError("--leave-out needs --real: it leaves real cases out of training.")
    if args.phantoms:
        sp = tuple(float(s) for s in args.phantom_spacing)
        fov_mix = tuple(args.phantom_fovs) if args.phantom_fovs else None
        library = _shape_library_description()
        # The folder names the shape library too: phantoms drawn from other masks are other phantoms.
        lib_tag = hashlib.sha1(json.dumps(library["sources"]).encode()).hexdigest()[:8]
        ph_dir = cache / (f"phantoms_seed{args.seed}_sp{sp[0]:g}-{sp[1]:g}" + ("_" + "-".join(fov_mix) if fov_mix else "")
                          + f"_lib{lib_tag}")
        generate_phantoms(ph_dir, args.phantoms, args.seed, workers=args.jobs, spacing_xy=sp, fovs=fov_mix)
        wanted = {f"sub-ph{s:06d}" for s in range(args.seed, args.seed + args.phantoms)}
        ph_cases = [c for c in find_cases(ph_dir) if c.case_id in wanted]
        cases += ph_cases
        fovs: dict[str, int] = {}
        for s in range(args.seed, args.seed + args.phantoms):
            fov = phantom_spec(s, sp, fov_mix)[0]
            fovs[fov] = fovs.get(fov, 0) + 1
        data_desc["phantoms"] = {"count": len(ph_cases), "seeds": [args.seed, args.seed + args.phantoms - 1],
                                 "fov_counts": fovs, "spacing_xy_mm": list(sp), "spacing_z_mm": list(TRAIN_Z_SPACINGS),
                                 "generator": "LumbarSegLib.phantoms.generate_phantom",
                                 "shape_library": library,
                                 "folder": str(ph_dir)}
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"Case names occur twice across the training folders: {', '.join(dup[:5])}.")
    t_data = time.time()
    paths = prepare_cache(cases, cache / "precomputed", config, n_crops=args.crops, workers=args.jobs)
    cache_by_case = {c.case_id: cache_path(cache / "precomputed", c, config, args.crops) for c in cases}
    print(f"data ready: {len(paths)} cases in {(time.time() - t0) / 60:.1f} min "
          f"(precompute {(time.time() - t_data) / 60:.1f} min)", file=sys.stderr, flush=True)
    if args.prepare_only:
        print(f"prepared {len(paths)} cases in {cache} (--prepare-only: no training)")
        return 0
    n_pos = 0
    for p in paths:
        with np.load(p) as z:
            n_pos += bool(z["positive"])
    data_desc.update(cases=len(paths), with_lumbar=n_pos, without_lumbar=len(paths) - n_pos,
                     crops_per_case=args.crops, cache=str(cache))
    cuda = device == "cuda"
    opts = {"lr": args.lr, "lr_localizer": args.lr_localizer, "batch_xunet": args.batch or (8 if cuda else 1),
            "batch_localizer": args.batch_localizer or (4 if cuda else 2), "minutes": args.minutes,
            "epochs": args.epochs, "max_steps": args.max_steps, "localizer_share": args.localizer_share,
            "ckpt_minutes": args.checkpoint_minutes, "val_minutes": args.val_minutes, "spatial_p": args.spatial_p,
            "seed": args.seed, "max_threads": args.max_threads, "sequential": args.sequential,
            "val_fraction": args.val_fraction, "device": device, "compile": args.compile,
            "real_weight": args.real_weight if args.real else None,
            "precision": args.precision if args.precision != "auto" else ("bfloat16" if cuda else "float32"),
            "loader_workers": args.loader_workers if args.loader_workers is not None else default_loader_workers(device)}
    metadata = {
        "config": args.config, "training_data": data_desc, "command": "lumbarseg " + " ".join(
            shlex.quote(a) for a in (sys.argv[sys.argv.index("train"):] if "train" in sys.argv else sys.argv[1:])),
        "options": opts, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
        "python": platform.python_version(), "git_commit": _git_commit(),
        "eval_seed_start": EVAL_SEED_START, "notes": list(args.note or []), "data_preparation_minutes": round((time.time() - t0) / 60, 2),
    }
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else out.parent
    if args.folds and args.folds > 1:
        cv = cross_validate(cases, cache_by_case, config, out, ckpt_dir, opts, metadata, args.folds, args.seed)
        from ..io.text_files import write_json
        cv_path = out.with_name(out.stem + ".cv.json")
        write_json(cv, cv_path)
        print(f"\n{args.folds}-fold cross-validation (full pipeline on held-out folds), mean ± sd:")
        print(format_mean_sd_table(cv["table"]))
        print(f"\nwrote {cv_path}")
        return 0
    train, val = split_cases(paths, args.val_fraction, args.seed)
    print(f"training on {len(train)} cases, validating on {len(val)}", file=sys.stderr, flush=True)
    metadata["training_data"]["train_cases"] = len(train)
    metadata["training_data"]["validation_cases"] = len(val)
    train_models(train, val, config, out, ckpt_dir, opts, metadata, resume=args.resume)
    from ..inference.models import load_model
    model = load_model(out)
    meta = model.metadata
    print(f"\nwrote {out} ({out.stat().st_size / 1e6:.1f} MB); training {meta.get('training_minutes')} min")
    for k, v in meta.get("networks", {}).items():
        print(f"  {k}: {v['steps']} steps, {v['epochs_completed']} epochs, {v['training_minutes']} min; "
              f"{_format_val(k, v['final_validation'])}")
    return 0


def naming_stage3(args) -> list:
    """The stage-3 models ``evaluate-model --naming`` refines with (:func:`naming_eval.load_stage3`): --refine's,
    none with --no-refine, else the bundled one when it is there (as a study runs)."""
    from ..inference.vertebra_stage import default_stage3_path
    from . import naming_eval

    if args.no_refine and args.refine:
        raise InputError("Give --refine or --no-refine, not both.")
    if args.no_refine:
        return []
    paths = args.refine or ([default_stage3_path()] if default_stage3_path().exists() else [])
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"--refine {path}: no such file.")
    return [naming_eval.load_stage3(p) for p in paths]


def naming_finders(args) -> list:
    """The finders ``evaluate-model --naming`` runs (:func:`naming_eval.load_finder`): --finder's; none without."""
    from . import naming_eval

    for path in args.finder or []:
        if not Path(path).is_file():
            raise InputError(f"--finder {path}: no such file.")
    if args.finder and args.no_refine:
        raise InputError("--finder's path ends in the per-vertebra stage: give it without --no-refine.")
    return [naming_eval.load_finder(p) for p in args.finder or []]


def run_evaluate_model(args) -> int:
    if (args.refine or args.no_refine or args.rows_json or args.finder) and not args.naming:
        raise InputError("--refine, --no-refine, --finder and --rows-json belong to --naming.")
    if (args.loo or args.fit) and not args.real:
        raise InputError("--loo and --fit need --real DIR: the folder(s) holding the real cases.")
    card = evaluation.evaluate_model(args.model, n=args.phantoms, seed=args.seed, fovs=args.fov,
                                     spacing=tuple(args.spacing) if args.spacing else None, device=args.device,
                                     real_ct=not args.no_real_ct, log=lambda s: print(s, flush=True))
    if args.loo:
        loo = real_evaluation.leave_one_out(args.loo, args.real, device=args.device, partial_views=args.partial_views,
                                            log=lambda s: print(s, flush=True))
        card["real_leave_one_out"] = loo
        card["targets"] = evaluation.targets_status(card["evaluation"], loo, card["real_ct"])
    if args.naming:
        from ..inference.models import choose_model, load_model, resolve_device
        from . import naming_eval

        model = load_model(choose_model(args.model, resolve_device(args.device)), allow_untrained=False)
        stage3, finders = naming_stage3(args), naming_finders(args)
        if finders and not stage3:
            raise InputError("--finder's path ends in the per-vertebra stage, and no stage-3 model is installed: "
                             "give --refine STAGE3.pt as well.")
        card["naming"] = naming_eval.measure(model, args.real, n_phantoms=args.naming_phantoms,
                                             seed=args.seed + args.phantoms, device=args.device,
                                             partial_views=args.partial_views, log=lambda s: print(s, flush=True),
                                             stage3=stage3, finders=finders)
        if args.rows_json:
            from ..io.text_files import write_json
            write_json({"command": "lumbarseg " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                        "rows": card["naming"]["rows"]}, args.rows_json)
    if args.fit:
        card["real_fit"] = real_evaluation.training_fit(args.model, args.real, device=args.device,
                                                        log=lambda s: print(s, flush=True))
    argv = sys.argv[sys.argv.index("evaluate-model"):] if "evaluate-model" in sys.argv else sys.argv[1:]
    card["command"] = "lumbarseg " + " ".join(shlex.quote(a) for a in argv)
    evaluation.write_card(card, args.output, args.card)
    print(evaluation.card_markdown(card))
    return 0
