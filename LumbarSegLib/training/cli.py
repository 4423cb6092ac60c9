"""``lumbarseg train``: arguments, data preparation (folders, phantoms, cache) and the training run."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..networks import CONFIGS
from . import evaluation
from .data import (EVAL_SEED_START, TRAIN_Z_SPACINGS, Case, cache_path, find_cases, generate_phantoms, phantom_spec,
                   prepare_cache, split_cases)
from .loop import _format_val
from .orchestration import _git_commit, cross_validate, format_mean_sd_table, train_models


def training_device(name: str) -> str:
    """'cpu' or 'cuda' for ``--device`` (an absent CUDA is an error; Apple MPS, untested for training, is not used)."""
    from ..models import resolve_device

    return "cuda" if resolve_device(name).type == "cuda" else "cpu"


def default_loader_workers(device: str) -> int:
    """CPU: none (each training process augments its own batches on its one thread). CUDA: all CPUs but two
    (the training process and the pinning thread), at most 12, which keeps a paper-config GPU step fed."""
    return 0 if device == "cpu" else max(1, min(12, (os.cpu_count() or 2) - 2))


def add_train_arguments(p: argparse.ArgumentParser):
    p.add_argument("data_dir", nargs="*", help="folder(s) in VerSe layout (*_ct.nii.gz + *_seg-vert_msk.nii.gz); "
                   "optional with --phantoms")
    p.add_argument("-o", "--output", required=True, help="model bundle to write (.pt)")
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
    p.add_argument("--max-threads", type=int, default=2, help="threads of the XUNet once the localizer is done (default 2)")
    p.add_argument("--spatial-p", type=float, help="probability of the spatial augmentation per sample "
                   "(default 0.6 localizer / 0.7 XUNet)")
    p.add_argument("--note", action="append", default=[], help="free-text provenance note stored in the bundle (repeatable)")
    p.add_argument("--prepare-only", action="store_true", help="generate the phantoms and fill the cache, then "
                   "stop (a later run with the same data options starts training at once)")
    p.add_argument("--sequential", action="store_true", help="train the networks one after the other in this process")


def run_train(args) -> int:
    if not args.data_dir and not args.phantoms:
        raise InputError("Give a training DATA_DIR or --phantoms N.")
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
    elif args.data_dir:
        cache = Path(args.data_dir[0]) / ".lumbarseg_cache"
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
    if args.phantoms:
        sp = tuple(float(s) for s in args.phantom_spacing)
        fov_mix = tuple(args.phantom_fovs) if args.phantom_fovs else None
        ph_dir = cache / (f"phantoms_seed{args.seed}_sp{sp[0]:g}-{sp[1]:g}" + ("_" + "-".join(fov_mix) if fov_mix else ""))
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
                                 "generator": "LumbarSegLib.phantoms.generate_phantom (default shape library)",
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
            "val_fraction": args.val_fraction, "device": device,
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
        from ..metrics import write_json
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
    from ..models import load_model
    model = load_model(out)
    meta = model.metadata
    print(f"\nwrote {out} ({out.stat().st_size / 1e6:.1f} MB); training {meta.get('training_minutes')} min")
    for k, v in meta.get("networks", {}).items():
        print(f"  {k}: {v['steps']} steps, {v['epochs_completed']} epochs, {v['training_minutes']} min; "
              f"{_format_val(k, v['final_validation'])}")
    return 0


def register_cli(subparsers):
    """Add ``train`` and ``evaluate-model`` to the ``lumbarseg`` command line."""
    package_doc = sys.modules[__package__].__doc__ or ""
    p = subparsers.add_parser("train", help="train both networks (VerSe-layout data or generated phantoms)",
                              description="Train the localizer and the XUNet. " + package_doc.split("\n\n")[0])
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    evaluation.register_cli(subparsers)
