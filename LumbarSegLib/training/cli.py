"""``lumbarseg train``: arguments, data preparation (folders, phantoms, cache) and the training run."""

from __future__ import annotations

import argparse
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


def add_train_arguments(p: argparse.ArgumentParser):
    p.add_argument("data_dir", nargs="*", help="folder(s) in VerSe layout (*_ct.nii.gz + *_seg-vert_msk.nii.gz); "
                   "optional with --phantoms")
    p.add_argument("-o", "--output", required=True, help="model bundle to write (.pt)")
    p.add_argument("--real", nargs="+", default=[], metavar="DIR",
                   help="folder(s) of real labelled CTs (VerSe layout) to train on as --views views each: the case "
                   "itself plus re-imagings with other tilts, grids and fields of view; bone-only CTs get a body")
    p.add_argument("--views", type=int, default=40, help="views per real case (default 40)")
    p.add_argument("--real-weight", type=float, default=0.5,
                   help="share of the training samples drawn from real-case views (default 0.5)")
    p.add_argument("--leave-out", nargs="+", default=[], metavar="CASE",
                   help="real case(s) to leave out of training (cross-validation): a case id such as sub-verse005")
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="network configuration (default cpu)")
    p.add_argument("--epochs", type=int, help="epochs (passes over the training cases) per network")
    p.add_argument("--minutes", type=float, help="wall-time budget of the training; each network stops at --epochs "
                   "or its share of --minutes, whichever comes first")
    p.add_argument("--localizer-share", type=float, default=0.3,
                   help="fraction of --minutes for the localizer (default 0.3). CPU: the networks train side by side, "
                   "the XUNet for all of --minutes, taking all threads once the localizer is done; GPU: one after "
                   "the other, the XUNet for the rest")
    p.add_argument("--max-steps", type=int, help="stop each network after this many optimiser steps (testing)")
    p.add_argument("--resume", help="checkpoint (*.localizer.ckpt / *.xunet.ckpt, or their folder) to resume, "
                   "or a model bundle to fine-tune")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out validation fraction (default 0.1)")
    p.add_argument("--folds", type=int, default=0, help="k-fold cross-validation with the full pipeline (e.g. 5)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the networks train (and cross-validation runs); auto: CUDA when PyTorch sees a GPU, "
                   "else the CPU. CUDA trains in bfloat16 autocast with loader worker processes")
    p.add_argument("--phantoms", type=int, default=0, help="generate N training phantoms (seeds S..S+N-1 < 100000)")
    p.add_argument("--seed", type=int, default=0, help="first phantom seed and random seed (default 0)")
    p.add_argument("--phantom-spacing", type=float, nargs=2, default=(1.6, 2.4), metavar=("MIN", "MAX"),
                   help="in-plane spacing range of training phantoms in mm (default 1.6 2.4; z from 1.5-3 mm)")
    p.add_argument("--phantom-fovs", nargs="+", metavar="FOV",
                   help="restrict the generated phantoms to these fields of view, drawn uniformly "
                   "(default: the training mix); e.g. slab tight thoracic for extra hard cases")
    p.add_argument("--cache", help="cache folder for phantoms and precomputed inputs "
                   "(default DATA_DIR/.lumbarseg_cache, or $TMPDIR/lumbarseg_cache with --phantoms only)")
    p.add_argument("--checkpoint-dir", help="folder for resumable checkpoints (default: next to --output)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="checkpoint interval (default 5)")
    p.add_argument("--val-minutes", type=float, default=10.0, help="validate every this many minutes, and at the end (default 10)")
    p.add_argument("--crops", type=int, default=3, help="XUNet crops per case (1 exact + jittered; default 3)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the XUNet (default 1e-3)")
    p.add_argument("--lr-localizer", type=float, default=2e-3, help="Adam learning rate of the localizer (default 2e-3)")
    p.add_argument("--batch", type=int, help="XUNet batch size (default 1 on the CPU, 8 on CUDA)")
    p.add_argument("--batch-localizer", type=int, help="localizer batch size (default 2 on the CPU, 4 on CUDA)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help=f"processes for phantom generation / precomputation (default: all {os.cpu_count()} CPUs)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="arithmetic of the forward pass: auto = bfloat16 autocast on CUDA, float32 on the CPU")
    p.add_argument("--loader-workers", type=int, help="processes that augment training batches ahead of each step "
                   "(default 0 on the CPU: the training processes augment themselves; on CUDA all CPUs but 2, "
                   "at most 12)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks for training (about 1.5x "
                   "faster steps on a CPU after a one-off compile of 1-2 minutes; needs a C++ compiler)")
    p.add_argument("--max-threads", type=int, default=2, help="threads of the XUNet once the localizer is done (default 2)")
    p.add_argument("--spatial-p", type=float, help="probability of the spatial augmentation per sample "
                   "(default 0.6 localizer / 0.7 XUNet)")
    p.add_argument("--note", action="append", default=[], help="free-text provenance note stored in the bundle (repeatable)")
    p.add_argument("--prepare-only", action="store_true", help="generate the phantoms and fill the cache, then "
                   "stop (a later run with the same data options starts training at once)")
    p.add_argument("--sequential", action="store_true", help="train the networks one after the other in this process")


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


def run_evaluate_model(args) -> int:
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
    if args.fit:
        card["real_fit"] = real_evaluation.training_fit(args.model, args.real, device=args.device,
                                                        log=lambda s: print(s, flush=True))
    argv = sys.argv[sys.argv.index("evaluate-model"):] if "evaluate-model" in sys.argv else sys.argv[1:]
    card["command"] = "lumbarseg " + " ".join(shlex.quote(a) for a in argv)
    evaluation.write_card(card, args.output, args.card)
    print(evaluation.card_markdown(card))
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser):
    p.add_argument("--model", help="a shipped model (cpu, paper) or a model file (default: as for segment)")
    p.add_argument("--phantoms", type=int, default=20, help="number of held-out phantoms (default 20)")
    p.add_argument("--seed", type=int, default=EVAL_SEED_START,
                   help=f"first phantom seed, >= {EVAL_SEED_START} (default {EVAL_SEED_START})")
    p.add_argument("--fov", nargs="+", help="fields of view to cycle through (default: every one the phantom generator has)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"),
                   help="fixed phantom spacing in mm (default: the generator's random clinical spacings)")
    p.add_argument("--device", default="cpu", help="inference device (default cpu)")
    p.add_argument("--no-real-ct", action="store_true", help="skip the real-CT sanity checks")
    p.add_argument("--loo", nargs="+", metavar="FOLD.pt",
                   help="fold models trained with --leave-out: each scores the real case(s) it left out (whole case "
                   "and --partial-views spine-targeted views of it); the card gets a leave-one-case-out table")
    p.add_argument("--real", nargs="+", default=[], metavar="DIR", help="folder(s) of the real cases (for --loo)")
    p.add_argument("--partial-views", type=int, default=4, help="partial views scored per held-out case (default 4)")
    p.add_argument("--fit", action="store_true",
                   help="also score --model on the real cases in --real that it trained on: how well it fits what it "
                        "has seen (never an accuracy estimate; the card keeps these apart from the held-out scores)")
    p.add_argument("-o", "--output", help="model card JSON to write")
    p.add_argument("--card", help="model card Markdown to write")


def register_cli(subparsers):
    """Add ``train`` and ``evaluate-model`` to the ``lumbarseg`` command line."""
    package_doc = sys.modules[__package__].__doc__ or ""
    p = subparsers.add_parser("train", help="train both networks (VerSe-layout data, real cases or phantoms)",
                              description="Train the localizer and the XUNet. " + package_doc.split("\n\n")[0])
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    p = subparsers.add_parser("evaluate-model", help="held-out evaluation of a model (phantoms, real cases left out "
                              "of training) + model card", description=(evaluation.__doc__ or "").split("\n\n")[0])
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate_model)
