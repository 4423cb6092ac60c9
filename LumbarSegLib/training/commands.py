"""``lumbarseg train`` and ``evaluate-model`` on the command line: their arguments and registration.

Loads no torch (``lumbarseg --help`` and ``--version`` build every subcommand's parser): the handlers import
:mod:`.cli`, which does the work, only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import os

# Phantom seeds >= this are reserved for held-out evaluation (training draws below it). Here, not in
# :mod:`.data`, so that evaluate-model's default needs no torch; :mod:`.data` re-exports it.
EVAL_SEED_START = 100_000
# The names of ``inference.networks.CONFIGS`` (a test keeps them equal), for --config's help without loading
# torch; run_train checks the name against CONFIGS itself (where tests add a tiny configuration).
CONFIG_NAMES = ("cpu", "paper")

TRAINING_DESCRIPTION = ("Train the localizer and the XUNet on VerSe-layout data, real cases or generated phantoms "
                        "(see LumbarSegLib.training).")
EVALUATION_DESCRIPTION = ("Held-out evaluation of a model bundle (phantoms with seeds training never uses, and real "
                          "cases left out of training) and its model card (JSON + Markdown).")


def run_train(args) -> int:
    from .cli import run_train as run

    return run(args)


def run_evaluate_model(args) -> int:
    from .cli import run_evaluate_model as run

    return run(args)


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
    p.add_argument("--config", default="cpu", metavar="{" + ",".join(CONFIG_NAMES) + "}",  # checked by run_train
                   help="network configuration (default cpu)")
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
    p.add_argument("--naming", action="store_true",
                   help="also measure the naming (centre recall within 10 mm, VerSe identification rate, scans with "
                   "every name right by anchor in view and acquisition, wrong names that carry a warning) on the real "
                   "cases in --real held out from --model (as stored, re-imaged, --partial-views) and --naming-phantoms")
    p.add_argument("--naming-phantoms", type=int, default=10,
                   help="phantoms for --naming (default 10; seeds follow those of --phantoms)")
    p.add_argument("--refine", nargs="+", metavar="STAGE3.pt",
                   help="stage-3 models for --naming (a bundle or a training checkpoint of vertebra_train): the first "
                   "refines the phantoms, each real case the first that never trained on it (a case all trained on is "
                   "left out). Default: the bundled one, as a study runs it")
    p.add_argument("--no-refine", action="store_true", help="--naming without stage 3 (the XUNet's vertebrae)")
    p.add_argument("--finder", nargs="+", metavar="FINDER.pt",
                   help="finders for --naming (a model file or a training checkpoint of finder_train): the finder's "
                   "path, the first for the phantoms, each real case with the first finder and stage 3 that never "
                   "trained on it (then every real case in --real counts, the XUNet only placing the box)")
    p.add_argument("--rows-json", metavar="FILE", help="write --naming's rows (per scan the measurements the size and "
                   "column warnings read and each vertebra's truth) to FILE, for "
                   "python -m LumbarSegLib.training.column_calibration")
    p.add_argument("-o", "--output", help="model card JSON to write")
    p.add_argument("--card", help="model card Markdown to write")



def register_cli(subparsers):
    """Add ``train`` and ``evaluate-model`` to the ``lumbarseg`` command line."""
    p = subparsers.add_parser("train", help="train both networks (VerSe-layout data, real cases or phantoms)",
                              description=TRAINING_DESCRIPTION)
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    p = subparsers.add_parser("evaluate-model", help="held-out evaluation of a model (phantoms, real cases left out "
                              "of training) + model card", description=EVALUATION_DESCRIPTION)
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate_model)
