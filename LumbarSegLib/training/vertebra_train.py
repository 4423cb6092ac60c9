"""Training stage 3 on a CPU, in phases that outlive a session.

A *plan* is an ordered list of phases (:data:`PLAN`):

1. ``pretrain`` - label-map CTs only (no real CT), so it can seed every fold;
2. ``fold-A`` .. ``fold-C`` - fine-tuned from ``pretrain`` with two real subjects held out each, for the gate;
3. ``all`` - fine-tuned from ``pretrain`` on every real case: the model that ships.

Each phase has a budget in minutes; the learning rate follows a cosine over that budget, so a phase cut by
the end of a session resumes where it stood. State lives in a folder (``--state``): one checkpoint per
phase, written every ``CHECKPOINT_MINUTES``, and ``log.jsonl`` with steps per hour and the load average at
every checkpoint. ``export_resume`` packs the folder into one small file (fp16 weights, no optimiser) to
commit; ``import_resume`` unpacks it in the next session.

One network trains at a time, on every thread it is given, in float32 and channels-last. What a plan trains
is a :class:`Trainee`: stage 3 (:data:`STAGE3`, this module's plan) or the finder (:mod:`.finder_train`); the
phases, checkpoints, log and resume file work the same for both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import heap
from ..inference.vertebra_net import VertebraNetConfig, build, network_input
from .loop import FiniteSteps, compiled
from .vertebra_samples import VertebraSampler, load_labelmap_sources, load_real_sources

CHECKPOINT_MINUTES = 10.0
BATCH = 2


@dataclass(frozen=True)
class Phase:
    name: str
    minutes: float
    leave_out: tuple[str, ...] = ()
    weights: dict = field(default_factory=lambda: {"real": 0.65, "labelmap": 0.35})
    init: str | None = None  # the phase whose final weights this one starts from
    lr: float = 1e-3


# Three folds over the six real CTs, two subjects held out in each.
FOLDS = {"fold-A": ("verse005", "s0328"), "fold-B": ("verse007", "verse014"), "fold-C": ("verse008", "label-22")}
PLAN = [Phase("pretrain", 25.0, weights={"labelmap": 1.0})]
# Sessions extend the folds and "all" by raising their minutes (a finished phase resumes with the cosine's tail
# re-opened): four runs reached folds 82 / all 120 min; the fifth (session 10, 2026-12-06) 102 / 140; the sixth
# (session 13, 2026-12-06) 127 / 160; the seventh (session 14, 2026-12-06) 150 / 183; the eighth (session 15,
# 2026-12-06, with left-right mirrored draws) 170 / 203. The ninth (session 16, 2026-12-07) reached 190 / 223 and was
# not kept: held out no better (docs/accuracy_history.md, "Stage 3, run by run"), so the plan stays at the eighth's.
PLAN += [Phase(name, 170.0, leave_out=held, init="pretrain", lr=5e-4) for name, held in FOLDS.items()]
PLAN += [Phase("all", 203.0, init="pretrain", lr=5e-4)]


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice of the vertebra (nnU-Net's pairing)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    dims = tuple(range(1, p.ndim))
    dice = (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return bce + (1 - dice).mean()


def stage3_batch_loss(net, batch: list, config: VertebraNetConfig) -> torch.Tensor:
    """The loss of one batch of :meth:`VertebraSampler.draw` samples."""
    ct = torch.from_numpy(np.stack([b[0] for b in batch]))
    centre = torch.from_numpy(np.stack([b[1] for b in batch]))
    target = torch.from_numpy(np.stack([b[2] for b in batch])[:, None].astype(np.float32))
    target = target.contiguous(memory_format=torch.channels_last_3d)
    return loss_fn(net(network_input(ct, centre, config)), target)


@dataclass(frozen=True)
class Trainee:
    """What a plan trains: ``name`` (the resume file's format), ``new_config`` (the configuration; it has
    ``to_dict``), ``build`` (config -> channels-last network), ``sampler``
    ((sources, config, weights, seed) -> an object with ``draw()`` and ``counts()``) and ``batch_loss``
    ((net, samples, config) -> loss)."""
    name: str
    new_config: Callable
    build: Callable
    sampler: Callable
    batch_loss: Callable
    sources: Callable = None  # (kinds, real_dirs, masks_root, leave_out) -> sources; None: real and label maps


STAGE3 = Trainee("stage3", VertebraNetConfig, build, VertebraSampler, stage3_batch_loss)


def default_sources(kinds, real_dirs, masks_root, leave_out) -> list:
    sources = []
    if "real" in kinds:
        sources += load_real_sources(real_dirs, leave_out)
    if "labelmap" in kinds:
        sources += load_labelmap_sources(masks_root, leave_out)
    return sources


def learning_rate(phase: Phase, minutes_done: float) -> float:
    warm = min(1.0, minutes_done / 1.0 + 0.05)
    frac = min(1.0, minutes_done / phase.minutes)
    return phase.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _load_avg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_phase_weights(state_dir: Path, name: str) -> dict | None:
    p = Path(state_dir) / f"{name}.pt"
    if not p.exists():
        return None
    return torch.load(p, map_location="cpu", weights_only=True)


def train_phase(phase: Phase, state_dir: Path, real_dirs, masks_root, config, minutes_left: float, log=print,
                seed: int = 0, trainee: Trainee = STAGE3, compile_net: bool = False) -> bool:
    """Train ``phase`` of ``trainee`` for at most ``minutes_left`` minutes; True when its budget is used up.
    ``compile_net``: run the steps through ``torch.compile`` (as ``lumbarseg train --compile``); its one-off
    compile counts in the phase's minutes and in the first step's time (``first_step_s`` in the log)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ckpt = load_phase_weights(state_dir, phase.name)
    if ckpt and ckpt["minutes"] >= phase.minutes:  # a later session that raises the budget trains on
        return True
    torch.manual_seed(seed)
    net = trainee.build(config)
    opt = torch.optim.AdamW(net.parameters(), lr=phase.lr, weight_decay=1e-4)
    step, minutes_done = 0, 0.0
    if ckpt:
        net.load_state_dict({k: v.float() for k, v in ckpt["weights"].items()})
        if ckpt.get("optimizer"):
            opt.load_state_dict(ckpt["optimizer"])
        step, minutes_done = ckpt["step"], ckpt["minutes"]
        log(f"{phase.name}: resuming at step {step}, {minutes_done:.1f} of {phase.minutes:.0f} min")
    elif phase.init:
        init = load_phase_weights(state_dir, phase.init)
        if not init or not init["done"]:
            raise RuntimeError(f"phase {phase.name} starts from {phase.init}, which has not finished")
        net.load_state_dict({k: v.float() for k, v in init["weights"].items()})
        log(f"{phase.name}: starting from {phase.init} (step {init['step']})")
    net = net.to(memory_format=torch.channels_last_3d).train()
    forward = compiled(net, log) if compile_net else net
    kinds = [k for k, w in phase.weights.items() if w > 0]
    sources = (trainee.sources or default_sources)(kinds, real_dirs, masks_root, phase.leave_out)
    sampler = trainee.sampler(sources, config, phase.weights, seed=seed + 1000 * step + 1)
    log(f"{phase.name}: {sampler.counts()} samples' sources, held out {list(phase.leave_out) or 'none'}, "
        f"{torch.get_num_threads()} threads")

    def checkpoint(done: bool, steps_this_run: int, run_s: float) -> None:
        state = {"phase": phase.name, "step": step, "minutes": minutes_done, "done": done,
                 "config": config.to_dict(), "leave_out": list(phase.leave_out),
                 "weights": {k: v.detach().clone() for k, v in net.state_dict().items()},
                 "optimizer": None if done else opt.state_dict()}
        _save(state_dir / f"{phase.name}.pt", state)
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "phase": phase.name, "step": step,
               "minutes": round(minutes_done, 2), "loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
               "steps_per_hour": round(3600 * steps_this_run / max(run_s, 1e-6)), "load_avg": _load_avg(),
               "threads": torch.get_num_threads(), "compiled": forward is not net,
               "first_step_s": None if first_step_s is None else round(first_step_s, 1), "skipped_steps": steps.skipped,
               "done": done}
        with open(state_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        log(json.dumps(rec))

    losses: list[float] = []
    t_run = time.time()
    t_last = time.time()
    t_ckpt = time.time()
    steps_run = 0
    steps = FiniteSteps(opt, phase.name, log)
    first_step_s = None
    deadline = time.time() + 60 * minutes_left
    with heap.kept_heap():  # each step's activations reuse the last step's memory: 20-35 % more steps an hour
        while minutes_done < phase.minutes and time.time() < deadline:
            batch = [sampler.draw() for _ in range(BATCH)]
            for g in opt.param_groups:
                g["lr"] = learning_rate(phase, minutes_done)
            loss = trainee.batch_loss(forward, batch, config)
            if steps.step(loss, step + 1):
                losses.append(float(loss.detach()))
            step += 1
            steps_run += 1
            now = time.time()
            if first_step_s is None:
                first_step_s = now - t_run
            minutes_done += (now - t_last) / 60
            t_last = now
            if now - t_ckpt >= 60 * CHECKPOINT_MINUTES:
                checkpoint(False, steps_run, now - t_run)
                t_ckpt = now
    done = minutes_done >= phase.minutes
    checkpoint(done, steps_run, time.time() - t_run)
    return done


def run_plan(state_dir, real_dirs, masks_root, minutes: float, plan=None, only=None, log=print,
             trainee: Trainee = STAGE3, compile_net: bool = False) -> None:
    """Run the plan's unfinished phases in order for at most ``minutes`` in all (``compile_net``: as
    :func:`train_phase`'s)."""
    config = trainee.new_config()
    end = time.time() + 60 * minutes
    for phase in plan or PLAN:
        if only and phase.name not in only:
            continue
        left = (end - time.time()) / 60
        if left <= 0.2:
            break
        if not train_phase(phase, Path(state_dir), real_dirs, masks_root, config, left, log=log, trainee=trainee,
                           compile_net=compile_net):
            break


# ------------------------------------------------------------------------------------------------------
# The resume file committed between sessions
# ------------------------------------------------------------------------------------------------------

def last_log_records(log_path) -> dict[str, dict]:
    """Each phase's last record in a training log (``log.jsonl``: its steps, speed and load), in the order the
    phases first appear: the cards' training tables and the resume file read it."""
    last = {}
    for line in Path(log_path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            last[rec["phase"]] = rec
    return last


def export_resume(state_dir, out_path, only=None, trainee: Trainee = STAGE3) -> Path:
    """The phases' weights (fp16), step and minutes in one file (``only``: these phases), with each phase's last
    log record (a new machine's card still shows how fast and on what load it trained); no optimiser state
    (Adam restarts)."""
    log = Path(state_dir) / "log.jsonl"
    logged = last_log_records(log) if log.exists() else {}  # a state unpacked from an older file has none
    phases = {}
    for p in sorted(Path(state_dir).glob("*.pt")):
        ck = torch.load(p, map_location="cpu", weights_only=True)
        if only and ck["phase"] not in only:
            continue
        phases[ck["phase"]] = {k: ck[k] for k in ("step", "minutes", "done", "config", "leave_out")}
        phases[ck["phase"]]["weights"] = {k: v.half() if v.is_floating_point() else v
                                          for k, v in ck["weights"].items()}
        if ck["phase"] in logged:
            phases[ck["phase"]]["log"] = json.dumps(logged[ck["phase"]])  # a string: weights_only loads it
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save(out, {"format": f"lumbarseg-{trainee.name}-resume-1", "phases": phases})
    return out


def import_resume(resume_path, state_dir) -> list[str]:
    """Unpack a resume file into ``state_dir`` (phases already there and further along are kept); each phase
    written gets its last log record back in ``log.jsonl``, marked with the file it came from."""
    data = torch.load(resume_path, map_location="cpu", weights_only=True)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ph in data["phases"].items():
        have = load_phase_weights(state_dir, name)
        if have and have["step"] >= ph["step"]:
            continue
        log = ph.pop("log", None)
        state = dict(ph, phase=name, optimizer=None,
                     weights={k: v.float() if v.is_floating_point() else v for k, v in ph["weights"].items()})
        _save(state_dir / f"{name}.pt", state)
        if log:
            with open(state_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(dict(json.loads(log), unpacked_from=Path(resume_path).name)) + "\n")
        written.append(name)
    return written


def main(argv=None, trainee: Trainee = STAGE3, plan=None, what: str = "stage 3 (per-vertebra U-Net)") -> int:
    module = "vertebra_train" if trainee is STAGE3 else f"{trainee.name}_train"
    p = argparse.ArgumentParser(prog=f"python -m LumbarSegLib.training.{module}",
                                description=f"Train {what} by the plan, resumably.")
    p.add_argument("--state", default=f"{trainee.name}_state", help="folder of the phases' checkpoints and log")
    p.add_argument("--real", nargs="*", default=[], help="folders of labelled real CTs")
    p.add_argument("--masks", default=None, help="folder of vertebra label maps without CT")
    p.add_argument("--minutes", type=float, default=60.0, help="stop after this many minutes in all")
    p.add_argument("--only", nargs="*", help="run only these phases (with --export: pack only these)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--resume-from", help="a committed resume file to unpack into --state first")
    p.add_argument("--export", help="write the resume file here and exit")
    p.add_argument("--compile", action="store_true", help="torch.compile the network for the steps (faster steps on "
                   "a CPU after a one-off compile of about a minute; needs a C++ compiler)")
    args = p.parse_args(argv)
    if args.export:
        print(export_resume(args.state, args.export, args.only, trainee=trainee))
        return 0
    if args.resume_from:
        print("unpacked:", import_resume(args.resume_from, args.state))
    torch.set_num_threads(args.threads)
    run_plan(args.state, args.real, args.masks, args.minutes, plan=plan, only=args.only,
             log=lambda m: print(m, flush=True), trainee=trainee, compile_net=args.compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
