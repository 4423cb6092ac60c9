#!/usr/bin/env bash
# The exact commands that produced Resources/Models/lumbarseg_cpu.pt and its model card
# (lumbarseg_cpu.json / lumbarseg_cpu.md). Run from the repository root.
#
# Training data: 400 synthetic phantoms, seeds 0-399 (LumbarSegLib.phantoms, default shape library from
# ../shared/data/masks), in-plane spacing 1.6-2.4 mm, slice spacing 1.5/2/2.5/3 mm, field-of-view mix
# abdomen 30 % / lumbar 25 % / lower 15 % / upper 15 % / thoracic-only negatives 15 %.
# Evaluation: held-out phantoms with seeds from 100000 up (never used in training).
#
# `python -m LumbarSegLib.training train ...` is the same as `lumbarseg train ...` (and
# `python -m LumbarSegLib.evaluation evaluate-model ...` the same as `lumbarseg evaluate-model ...`).
# Scratch data (phantoms, cache, checkpoints, logs) lives under $WORK, outside the repository.
set -euo pipefail
WORK=${WORK:-/tmp/train}
mkdir -p "$WORK"

# 1. Train both networks (~62 min wall time on a shared 2-core CPU; resumable with
#    --resume "$WORK/ckpt/lumbarseg_cpu.xunet.ckpt").
python -m LumbarSegLib.training train --phantoms 400 --seed 0 --phantom-spacing 1.6 2.4 \
    --cache "$WORK/cache" --checkpoint-dir "$WORK/ckpt" -o "$WORK/lumbarseg_cpu.pt" \
    --config cpu --minutes 62 --localizer-share 0.3 --val-fraction 0.1 --jobs 2 \
    2>&1 | tee "$WORK/train.log"
cp "$WORK/lumbarseg_cpu.pt" Resources/Models/lumbarseg_cpu.pt

# 2. Held-out evaluation + model card (seeds 100000+, all five fields of view, real-CT checks).
python -m LumbarSegLib.evaluation evaluate-model --model Resources/Models/lumbarseg_cpu.pt \
    --phantoms 20 --seed 100000 \
    -o Resources/Models/lumbarseg_cpu.json --card Resources/Models/lumbarseg_cpu.md \
    2>&1 | tee "$WORK/evaluate.log"
