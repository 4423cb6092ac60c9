"""Training throughput (optimiser steps per second of each network) of ``lumbarseg train`` (not a test).

Runs the real command line on a small, fixed setting and reads the step counts and training minutes that
the written model bundle records, so two checkouts (before/after a change) can be compared on the same
machine with the same data: give several ``--repo`` folders and they run in turn, ``--rounds`` times.

    python benchmarks/bench_training.py [--repo . --repo /tmp/old_checkout] [--rounds 2] [--minutes 2]
        [--phantoms 8] [--config cpu] [--device cpu] [--workdir /tmp/bench_training]
        [--variant "float32=" --variant "bf16+compile=--precision bfloat16 --compile"]

``--stage3`` instead times stage 3 (the per-vertebra U-Net, ``training/vertebra_train.py``) for ``--minutes``
on the label-map vertebrae of ``--masks`` (default ``../shared/data/masks``; without them three box-shaped
vertebrae drawn here), and prints its steps per hour and the load average before and after. ``--finder`` times
the finder (``training/finder_train.py``: the XUNet on a fixed 2 mm grid) the same way, on windows of the same
label maps.

``--widths 16 32 64 128 256`` times a candidate stage-3 network instead (the same loop and data);
``--no-kept-heap`` times either loop with glibc's own malloc settings, not ``inference.heap``'s; ``--compile``
times it through torch.compile (``--compile`` of ``vertebra_train`` / ``finder_train``). Each prints steps per hour
over the whole run (a compile included) and ``steady_steps_per_hour`` after the first step (the compile's).

``--variant NAME=OPTIONS`` runs each checkout once per variant with those extra ``train`` options (e.g. the
CPU's bfloat16 autocast and torch.compile against plain float32); the compile time counts in the first
steps' time, so give enough --minutes for it to pay off.

Phantoms and the precomputed cache are made once (in --workdir) and shared by all runs. The XUNet's
figure mixes its one-thread phase (while the localizer trains) and its two-thread phase, as in real use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_once(repo: Path, args, workdir: Path, tag: str, extra: list[str]) -> dict:
    out = workdir / f"{tag}.pt"
    cmd = [sys.executable, "-m", "LumbarSegLib.cli", "train", "--phantoms", str(args.phantoms), "--seed", "0",
           "--config", args.config, "--minutes", str(args.minutes), "--cache", str(workdir / "cache"),
           "--checkpoint-dir", str(workdir / f"ckpt_{tag}"), "-o", str(out), "--val-fraction", "0",
           "--jobs", "2", "--checkpoint-minutes", "100", "--val-minutes", "100"]
    if args.device:
        cmd += ["--device", args.device]
    cmd += extra
    t0 = time.time()
    log = workdir / f"{tag}.log"
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=repo, stdout=fh, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(repo))).returncode
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"{repo}: training failed (exit {rc}); see {log}")
    sys.path.insert(0, str(repo))
    import torch

    bundle = torch.load(out, map_location="cpu", weights_only=True)
    meta = json.loads(bundle["metadata_json"])
    nets = meta["networks"]
    res = {"repo": str(repo), "wall_s": round(wall, 1)}
    for k, v in nets.items():
        res[f"{k}_steps"] = v["steps"]
        res[f"{k}_minutes"] = v["training_minutes"]
        res[f"{k}_steps_per_s"] = v["steps"] / max(v["training_minutes"] * 60.0, 1e-9)
    return res


def phase_steps_per_hour(minutes: float, masks: str | None, workdir: Path, finder: bool = False, widths=None,
                         kept_heap: bool = True, compile_net: bool = False) -> dict:
    """Steps per hour of stage 3's (or with ``finder`` the finder's) real training loop (float32,
    channels-last, every thread), with freed memory kept for reuse as ``train_phase`` keeps it, or not
    (``kept_heap`` False: glibc as it is); ``widths``: stage 3's channels per level instead of its default (a
    candidate network's speed); ``compile_net``: through torch.compile."""
    import contextlib
    import dataclasses
    import shutil

    import numpy as np
    import SimpleITK as sitk
    import torch

    from LumbarSegLib.inference import heap
    from LumbarSegLib.training import finder_train, vertebra_train

    root = Path(masks) if masks else Path(__file__).resolve().parents[2] / "shared" / "data" / "masks"
    if not root.is_dir():  # three box vertebrae with arches, so the benchmark runs on a bare checkout too
        root = workdir / "masks"
        (root / "boxes").mkdir(parents=True, exist_ok=True)
        arr = np.zeros((120, 90, 90), np.uint8)
        for k, code in enumerate((20, 21, 22)):
            z0 = 10 + 35 * (2 - k)
            arr[z0:z0 + 25, 25:55, 30:60] = code
            arr[z0 + 5:z0 + 20, 55:70, 41:49] = code
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(root / "boxes" / "sub-verse999_seg-vert_msk.nii.gz"))
    trainee = finder_train.FINDER if finder else vertebra_train.STAGE3
    state = workdir / f"{trainee.name}_state"
    shutil.rmtree(state, ignore_errors=True)
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = [round(v, 2) for v in os.getloadavg()]
    phase = vertebra_train.Phase("bench", minutes, weights={"labelmap": 1.0})
    config = trainee.new_config()
    if widths:
        config = dataclasses.replace(config, widths=tuple(widths))
    if not kept_heap:
        heap.kept_heap = contextlib.nullcontext
    vertebra_train.train_phase(phase, state, [], root, config, minutes + 1, log=lambda m: None, trainee=trainee,
                               compile_net=compile_net)
    rec = json.loads((state / "log.jsonl").read_text().splitlines()[-1])
    steady_s = 60 * rec["minutes"] - rec["first_step_s"]
    return {"network": trainee.name, "widths": list(getattr(config, "widths", ())) or None,
            "kept_heap": kept_heap, "compiled": compile_net, "steps_per_hour": rec["steps_per_hour"],
            "steady_steps_per_hour": round(3600 * (rec["step"] - 1) / steady_s) if steady_s > 0 else None,
            "first_step_s": rec["first_step_s"], "batch": vertebra_train.BATCH,
            "steps": rec["step"], "minutes": rec["minutes"], "threads": rec["threads"],
            "load_avg_before": load_before, "load_avg_after": rec["load_avg"], "masks": str(root)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", action="append", help="checkout to run (repeatable; default: this one)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--phantoms", type=int, default=8)
    p.add_argument("--config", default="cpu")
    p.add_argument("--device", default=None, help="passed to train --device when given")
    p.add_argument("--workdir", default="/tmp/bench_training")
    p.add_argument("--variant", action="append", metavar="NAME=OPTIONS",
                   help="extra train options to compare (repeatable; default: none)")
    p.add_argument("--stage3", action="store_true", help="time stage 3's training loop instead")
    p.add_argument("--finder", action="store_true", help="time the finder's training loop instead")
    p.add_argument("--masks", default=None, help="label maps for --stage3 / --finder (default ../shared/data/masks)")
    p.add_argument("--widths", type=int, nargs="+", help="--stage3: channels per level of a candidate network "
                                                          "(default: stage 3's, 16 32 64 128)")
    p.add_argument("--kept-heap", action=argparse.BooleanOptionalAction, default=True,
                   help="--stage3 / --finder: keep freed memory for reuse, as a training run does (inference.heap)")
    p.add_argument("--compile", action="store_true", help="--stage3 / --finder: the steps through torch.compile")
    args = p.parse_args(argv)
    if args.stage3 or args.finder:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        print(json.dumps(phase_steps_per_hour(args.minutes, args.masks, Path(args.workdir), finder=args.finder,
                                              widths=args.widths, kept_heap=args.kept_heap,
                                              compile_net=args.compile)))
        return 0
    variants = [v.split("=", 1) for v in (args.variant or ["default="])]
    if any(len(v) != 2 for v in variants):
        p.error("--variant takes NAME=OPTIONS, e.g. 'bf16=--precision bfloat16'")
    repos = [Path(r).resolve() for r in (args.repo or [Path(__file__).resolve().parents[1]])]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for i, repo in enumerate(repos):
            for j, (name, options) in enumerate(variants):
                r = run_once(repo, args, workdir, f"r{rnd}_{i}_{j}", options.split())
                results.setdefault(f"{repo} [{name}]" if len(variants) > 1 else str(repo), []).append(r)
                print(json.dumps(dict(r, variant=name)), flush=True)
    print(f"\n{args.config} config, {args.phantoms} phantoms, --minutes {args.minutes}, {os.cpu_count()} CPUs "
          f"(median over {args.rounds} round(s))")
    for repo, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("localizer_steps_per_s", "xunet_steps_per_s", "wall_s")}
        print(f"{repo}: localizer {med['localizer_steps_per_s']:.2f} steps/s, XUNet {med['xunet_steps_per_s']:.2f} "
              f"steps/s, command wall time {med['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
