"""The training loop of one network (:func:`train_worker`): batches from the loader, learning-rate
schedule, periodic validation, resumable checkpoints (``weights_only``-loadable).

On the CPU it runs in float32 with the given number of threads; on CUDA the forward pass runs under
bfloat16 autocast (no loss scaling needed), with cuDNN autotuning, and batches come pinned from loader
worker processes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..inference import heap, preprocess
from ..constants import LABEL_NAMES
from ..inference.networks import ModelConfig, build_networks, load_compatible_state
from .losses import _box_iou, dice_ce_loss, dice_per_label, localizer_loss
from .samples import AugmentedSamples, EpochBatches, load_items, make_loader, sampling_weights


def _lr(base: float, progress: float, step: int, warmup: int = 20) -> float:
    warm = min(1.0, (step + 1) / warmup)
    return base * warm * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def _autocast(device: torch.device, precision: str):
    """bfloat16 autocast of the forward pass (no loss scaling needed, unlike float16), or float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def _validate(kind: str, net, items, device: torch.device = torch.device("cpu"), precision: str = "float32") -> dict:
    if not items:
        return {}
    net.eval()
    out: dict = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        with _autocast(device, precision):
            return net(x.to(device)).float().cpu()

    with torch.inference_mode():
        if kind == "localizer":
            losses, ious, pos_peaks, neg_peaks = [], [], [], []
            for it in items:
                x = torch.from_numpy(it["x"].astype(np.float32))[None, None]
                y = torch.from_numpy(it["y"].astype(np.float32))[None, None]
                p = run(x)
                losses.append(float(localizer_loss(p, y)))
                heat = p[0, 0].numpy()
                if it["positive"]:
                    pos_peaks.append(float(heat.max()))
                    a = preprocess.heatmap_box(heat, it["size"])
                    b = preprocess.heatmap_box(it["y"].astype(np.float32), it["size"])
                    ious.append(_box_iou(a, b))
                else:
                    neg_peaks.append(float(heat.max()))
            out = {"val_loss": float(np.mean(losses)), "box_iou": float(np.mean(ious)) if ious else float("nan"),
                   "pos_found": float(np.mean([v >= 0.35 for v in pos_peaks])) if pos_peaks else float("nan"),
                   "neg_fired": float(np.mean([v >= 0.35 for v in neg_peaks])) if neg_peaks else float("nan")}
        else:
            per = {k: [] for k in LABEL_NAMES}
            losses, neg_fp = [], []
            for it in items:
                x = torch.from_numpy(it["x"][0].astype(np.float32))[None, None]
                y = torch.from_numpy(it["y"][0].astype(np.int64))[None]
                logits = run(x)
                losses.append(float(dice_ce_loss(logits, y)))
                pred = logits.argmax(1)[0].numpy()
                if it["positive"]:
                    for k, v in dice_per_label(pred, it["y"][0]).items():
                        per[k].append(v)
                else:
                    neg_fp.append(float(((pred >= 1) & (pred <= 5)).mean()))
            out = {"val_loss": float(np.mean(losses))}
            for k, v in per.items():
                out[f"dice_{LABEL_NAMES[k]}"] = float(np.mean(v)) if v else float("nan")
            vals = [out[f"dice_{n}"] for n in LABEL_NAMES.values() if math.isfinite(out[f"dice_{n}"])]
            out["dice_mean"] = float(np.mean(vals)) if vals else float("nan")
            out["neg_fp_fraction"] = float(np.mean(neg_fp)) if neg_fp else float("nan")
    net.train()
    return out


def _format_val(kind: str, v: dict) -> str:
    if not v:
        return "no validation cases"
    if kind == "localizer":
        return (f"val loss {v['val_loss']:.4f}  box IoU {v['box_iou']:.3f}  lumbar found {v['pos_found']:.2f}  "
                f"negatives fired {v['neg_fired']:.2f}")
    dice = "  ".join(f"{n} {v[f'dice_{n}']:.3f}" for n in LABEL_NAMES.values())
    return f"val loss {v['val_loss']:.4f}  Dice {dice}  mean {v['dice_mean']:.3f}  negatives FP {v['neg_fp_fraction']:.4f}"


def checkpoint_paths(ckpt_dir, name: str) -> dict[str, Path]:
    ckpt_dir = Path(ckpt_dir)
    return {k: ckpt_dir / f"{name}.{k}.ckpt" for k in ("localizer", "xunet")}


def _to_cpu(obj):
    """Tensors anywhere in a (nested) state dict moved to the CPU, so checkpoints load on any machine."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _save_ckpt(path: Path, state: dict):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """A training checkpoint (plain tensors/numbers/strings: loads with ``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def compiled(net, log=print):
    """``torch.compile(net)`` for the training steps (it fuses each conv's norm and activation: a stage-3 step 16 %
    faster on a CPU, the XUNet's about 1.5x, after a one-off compile), or ``net`` itself where inductor cannot load:
    it reads its kernel templates in the locale's encoding, so where that is ASCII (it was in the whole test suite on
    a clean clone) importing it fails; ``PYTHONUTF8=1`` avoids that."""
    try:
        return torch.compile(net)
    except UnicodeDecodeError as e:
        log(f"torch.compile is unavailable here ({e.reason} while inductor read its templates in the locale's "
            f"encoding, {e.encoding}): training without it. Run with PYTHONUTF8=1 to compile.")
        return net


# Steps in a row whose loss or gradients are not finite before a run stops: one such step is skipped (a batch lost),
# a run of them means the network itself has gone wrong.
MAX_NONFINITE_IN_A_ROW = 10


def optimiser_step(optim, loss: torch.Tensor) -> bool:
    """Back-propagate ``loss`` and take one step of ``optim``, unless the loss or a gradient is not finite: then
    the weights and the optimiser's state stay as they were and False comes back.

    Why: one step of NaN gradients spreads through Adam to every weight, and from there into every later checkpoint
    of a run that may have lasted hours. It happened once in CI, at the third step of a tiny XUNet trained in
    bfloat16 autocast on the CPU, and did not recur in isolation."""
    optim.zero_grad(set_to_none=True)
    if not torch.isfinite(loss.detach()):
        return False
    loss.backward()
    grads = [p.grad for group in optim.param_groups for p in group["params"] if p.grad is not None]
    if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
        optim.zero_grad(set_to_none=True)
        return False
    optim.step()
    return True


class FiniteSteps:
    """The optimiser steps of one run through :func:`optimiser_step`: a skipped step is counted (``skipped``, from
    those counted before a resume) and said (``log``, prefixed by ``name``); :data:`MAX_NONFINITE_IN_A_ROW` in a
    row stop the run with an error, its last checkpoint keeping the weights from before. Both training loops (this
    module's and :func:`.vertebra_train.train_phase`) step through it."""

    def __init__(self, optim, name: str, log=print, skipped: int = 0):
        self.optim, self.name, self.log = optim, name, log
        self.skipped, self.in_a_row = skipped, 0

    def step(self, loss: torch.Tensor, step_number: int) -> bool:
        """:func:`optimiser_step` on ``loss`` (the run's ``step_number``-th step); whether it was taken."""
        if optimiser_step(self.optim, loss):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        self.log(f"{self.name}: step {step_number}: loss or gradients not finite; step skipped, weights kept")
        if self.in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise RuntimeError(f"{self.name}: {self.in_a_row} training steps in a row gave a loss or gradients that "
                               f"are not numbers (NaN or infinite), up to step {step_number}; the run stops here, and "
                               f"its last checkpoint keeps the weights from before. Resume with float32 or a lower "
                               f"learning rate.")
        return False


def train_worker(*args, **kwargs):
    """:func:`_train_worker`, with freed memory kept for the next step's activations (:mod:`..inference.heap`)."""
    with heap.kept_heap():
        return _train_worker(*args, **kwargs)


def _train_worker(kind: str, train_paths, val_paths, config_dict: dict, opts: dict, ckpt_path: str,
                  resume_path: str | None, init_state: dict | None = None, done_flag: str | None = None,
                  other_done_flag: str | None = None):
    """Train one network (in its own process on the CPU, in the parent's on CUDA).

    ``opts``: lr, batch, minutes, epochs, max_steps, ckpt_minutes, val_minutes, spatial_p, seed, device
    ('cpu' or 'cuda'), precision ('float32' or 'bfloat16'), threads, max_threads, loader_workers.
    """
    from tqdm import tqdm

    device = torch.device(opts.get("device") or "cpu")
    precision = opts.get("precision") or "float32"
    if device.type == "cpu":
        torch.set_num_threads(int(opts.get("threads", 1)))
    else:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    seed = int(opts.get("seed", 0))
    torch.manual_seed(seed + (0 if kind == "localizer" else 1))
    config = ModelConfig.from_dict(config_dict)
    loc, xu = build_networks(config)
    net = loc if kind == "localizer" else xu
    state = {"step": 0, "epoch": 0, "elapsed": 0.0, "history": []}
    ck = load_checkpoint(resume_path) if resume_path and Path(resume_path).is_file() else None
    if ck is not None:
        net.load_state_dict(ck["state"])
        state = {"step": int(ck["step"]), "epoch": int(ck["epoch"]), "elapsed": float(ck["elapsed"]),
                 "history": json.loads(ck.get("history_json", "[]"))}
        print(f"[{kind}] resumed from {resume_path}: step {state['step']}, epoch {state['epoch']}, "
              f"{state['elapsed'] / 60:.1f} min done", file=sys.stderr, flush=True)
    elif init_state is not None:
        load_compatible_state(net, init_state)
    net = net.to(device, memory_format=torch.channels_last_3d)
    optim = torch.optim.Adam(net.parameters(), lr=opts["lr"])
    forward = net
    if opts.get("compile"):
        forward = compiled(net, lambda m: print(f"[{kind}] {m}", file=sys.stderr, flush=True))
    if ck is not None:
        optim.load_state_dict(ck["optim"])  # moves the optimiser state onto the parameters' device

    train_items = load_items(train_paths, kind)
    val_items = load_items(val_paths, kind)
    budget_s = float(opts["minutes"]) * 60.0 if opts.get("minutes") else None
    max_epochs = opts.get("epochs")
    max_steps = opts.get("max_steps")
    batch = int(opts.get("batch", 1))
    batches = EpochBatches(len(train_items), batch, seed, kind, first_epoch=state["epoch"],
                           weights=sampling_weights(train_items, opts.get("real_weight")))
    steps_per_epoch = batches.steps_per_epoch()
    total_steps = (max_epochs * steps_per_epoch) if max_epochs else None
    if max_steps:
        total_steps = min(total_steps, max_steps) if total_steps else max_steps
    loader = make_loader(AugmentedSamples(train_items, kind, seed, opts.get("spatial_p")), batches,
                         workers=int(opts.get("loader_workers", 0)), pin_memory=device.type == "cuda")

    def progress() -> float:
        fr = []
        if budget_s:
            fr.append(state["elapsed"] / budget_s)
        if total_steps:
            fr.append(state["step"] / total_steps)
        return max(fr) if fr else 0.0

    def finished() -> bool:
        return progress() >= 1.0

    def save(done: bool, last_val: dict | None = None, train_loss: float | None = None):
        _save_ckpt(Path(ckpt_path), {
            "kind": kind, "config": config.to_dict(), "state": _to_cpu(net.state_dict()),
            "optim": _to_cpu(optim.state_dict()),
            "step": state["step"], "epoch": state["epoch"], "elapsed": state["elapsed"], "done": done,
            "skipped": steps.skipped,
            "history_json": json.dumps(state["history"]), "opts_json": json.dumps(opts),
            "last_val_json": json.dumps(last_val or {}), "train_loss": float(train_loss or float("nan")),
        })

    t_last = time.time()
    last_ckpt = last_val_time = time.time()
    ema = None
    last_val: dict = state["history"][-1]["val"] if state["history"] else {}
    threads_now = torch.get_num_threads()
    bar = tqdm(total=total_steps, initial=state["step"], desc=kind, mininterval=float(opts.get("tqdm_interval", 10)),
               file=sys.stderr, dynamic_ncols=False, ncols=110)

    def validate(label: str):
        nonlocal last_val, t_last, last_ckpt, last_val_time
        t0 = time.time()
        last_val = _validate(kind, net, val_items, device, precision)
        state["elapsed"] += time.time() - t0  # validation counts towards the wall-time budget
        t_last = last_ckpt = last_val_time = time.time()
        state["history"].append({"epoch": state["epoch"], "step": state["step"],
                                 "minutes": round(state["elapsed"] / 60, 2), "train_loss": ema, "val": last_val})
        bar.write(f"[{kind}] {label} epoch {state['epoch']} step {state['step']} {state['elapsed'] / 60:.1f} min  "
                  f"train loss {ema if ema is not None else float('nan'):.4f}  {_format_val(kind, last_val)}")
        save(False, last_val, ema)

    net.train()
    val_every = float(opts.get("val_minutes", 10)) * 60
    batch_in_epoch = 0
    batches_iter = iter(loader) if not finished() else None
    steps = FiniteSteps(optim, kind, bar.write, int(ck.get("skipped", 0)) if ck is not None else 0)
    while not finished():
        x, y = next(batches_iter)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
        y = y.to(device, non_blocking=True)
        for g in optim.param_groups:
            g["lr"] = _lr(opts["lr"], progress(), state["step"])
        with _autocast(device, precision):
            out = forward(x)
        out = out.float()
        loss = localizer_loss(out, y) if kind == "localizer" else dice_ce_loss(out, y)
        if steps.step(loss, state["step"] + 1):
            lv = loss.item()
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        state["step"] += 1
        batch_in_epoch += 1
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        bar.update(1)
        shown = ema if ema is not None else float("nan")  # no step finite yet
        bar.set_postfix_str(f"ep {state['epoch']} loss {shown:.4f} lr {optim.param_groups[0]['lr']:.1e} "
                            f"{state['elapsed'] / 60:.0f}min", refresh=False)
        if batch_in_epoch == steps_per_epoch:
            batch_in_epoch = 0
            state["epoch"] += 1
        # Validation by the clock, not per epoch: a GPU runs an epoch of a few hundred cases in seconds.
        if val_items and now - last_val_time > val_every and not finished():
            validate("periodic")
        elif now - last_ckpt > float(opts.get("ckpt_minutes", 5)) * 60:
            save(False, last_val, ema)
            last_ckpt = now
        if other_done_flag and threads_now < int(opts.get("max_threads", 1)) and Path(other_done_flag).exists():
            threads_now = int(opts.get("max_threads", 1))
            torch.set_num_threads(threads_now)
            bar.write(f"[{kind}] the other network finished: now using {threads_now} threads")
    del batches_iter, loader  # stops the loader's worker processes
    bar.close()
    # Final validation (the budget usually ends mid-epoch).
    last_val = _validate(kind, net, val_items, device, precision)
    state["history"].append({"epoch": state["epoch"], "step": state["step"], "minutes": round(state["elapsed"] / 60, 2),
                             "train_loss": ema, "val": last_val, "final": True, "skipped_steps": steps.skipped})
    skipped = f"  ({steps.skipped} non-finite steps skipped)" if steps.skipped else ""
    print(f"[{kind}] done: step {state['step']} epoch {state['epoch']} {state['elapsed'] / 60:.1f} min  "
          f"{_format_val(kind, last_val)}{skipped}", file=sys.stderr, flush=True)
    save(True, last_val, ema)
    if done_flag:
        Path(done_flag).write_text("done\n")
