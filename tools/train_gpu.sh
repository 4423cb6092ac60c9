#!/usr/bin/env bash
# Train both networks on one call of the lent GPU machine, set-up included, within a time budget, and leave
# the model in $OUT (the folder whose files come back; each file must stay under 16 MiB).
#
#   On the GPU machine (repository root, with gpu_carry/ carried; make it with tools/pack_gpu_carry.py):
#       MINUTES=9 bash tools/train_gpu.sh
#   Tiny, on a CPU (checks the whole path in about a minute):
#       DEVICE=cpu CONFIG=cpu MINUTES=1 PHANTOMS=4 bash tools/train_gpu.sh
#
# Phases, all derived from MINUTES (the whole budget of this script):
#   1. SimpleITK from the carried wheel (pip --no-index), only when it is missing (the GPU image has none);
#   2. phantoms (PHANTOMS, default MINUTES x CPUs: about 12 % of the budget at ~145 a minute on 16 cores)
#      and the cache of phantoms + real cases, on all cores (lumbarseg train --prepare-only);
#   3. training of both networks (lumbarseg train): whatever is left of MINUTES after phases 1-2 and
#      RESERVE_S seconds kept for loading the cache, final validation, the bundle and its check;
#   4. the bundle split into $OUT/lumbarseg_$CONFIG.localizer.pt + .xunet.pt (half-precision weights; the
#      loader accepts the split form), a summary JSON, and this log ($OUT/train_gpu.log).
#
# Settings (environment): MINUTES (9), DEVICE (cuda), CONFIG (paper), PHANTOMS, SEED (0), CARRY (gpu_carry),
# REAL_DIRS (the carried real/, tptbox_l3/ and real_boneonly/, trained on as --real: VIEWS re-imaged views each,
# bone-only CTs given a synthesised body), VIEWS (40), LEAVE_OUT (real case ids to hold out, e.g. sub-verse014,
# so that the card can score the model on a case it never saw), OUT (the device tool's $OUT, else
# /tmp/lumbarseg_gpu_out), WORK (scratch, /tmp/lumbarseg_gpu_work), RESERVE_S (60 on CUDA, 15 on the CPU),
# EXTRA_ARGS (more `lumbarseg train` options).
set -euo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1  # the log shows progress as it happens
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-9}
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-paper}
SEED=${SEED:-0}
CARRY=${CARRY:-gpu_carry}
OUT=${OUT:-/tmp/lumbarseg_gpu_out}
WORK=${WORK:-/tmp/lumbarseg_gpu_work}
NCPU=$(python3 -c "import os; print(os.cpu_count() or 1)")
PHANTOMS=${PHANTOMS:-$(python3 -c "print(max(1, round($MINUTES * $NCPU)))")}
RESERVE_S=${RESERVE_S:-$([ "$DEVICE" = cuda ] && echo 60 || echo 15)}
EXTRA_ARGS=${EXTRA_ARGS:-}
VIEWS=${VIEWS:-40}
LEAVE_OUT=${LEAVE_OUT:-}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/train_gpu.log") 2>&1

say() { echo "[train_gpu $(( $(date +%s) - T0 )) s] $*"; }
say "budget ${MINUTES} min, device $DEVICE, config $CONFIG, $PHANTOMS phantoms from seed $SEED, $NCPU CPUs"
command -v nvidia-smi >/dev/null && nvidia-smi -L || true

# 1. SimpleITK (the GPU image has PyTorch but not SimpleITK)
if ! python3 -c "import SimpleITK" 2>/dev/null; then
  wheels=("$CARRY"/wheels/*.whl)
  [ -f "${wheels[0]}" ] || { echo "SimpleITK is missing and no wheel is in $CARRY/wheels (run tools/pack_gpu_carry.py)"; exit 2; }
  python3 -c "import lzma" || { echo "this Python cannot read the LZMA-compressed wheel (no lzma module): pack it with tools/pack_gpu_carry.py --keep-wheel-compression"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${wheels[@]}"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  say "installed $(basename "${wheels[0]}")"
fi
python3 -c "import torch, SimpleITK; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'SimpleITK', SimpleITK.Version_VersionString())"

# 2. data: real cases (carried as int16/uint8, else ../shared/data) + phantoms, cached on all cores
if [ -d "$CARRY/data" ]; then DATA="$CARRY/data"; else DATA="../shared/data"; fi
if [ -z "${REAL_DIRS+x}" ]; then
  REAL_DIRS=""
  for d in real tptbox_l3 real_boneonly; do [ -d "$DATA/$d" ] && REAL_DIRS="$REAL_DIRS $DATA/$d"; done
fi
if [ -d "$DATA/masks" ]; then export LUMBARSEG_SHAPE_LIBRARY="$DATA/masks"; fi
say "real data: ${REAL_DIRS:-none} ($VIEWS views each, left out: ${LEAVE_OUT:-none}); shape library: ${LUMBARSEG_SHAPE_LIBRARY:-none (procedural vertebrae)}"
REAL_ARGS=()
# shellcheck disable=SC2206  # REAL_DIRS and LEAVE_OUT are lists of words
[ -n "${REAL_DIRS// /}" ] && REAL_ARGS=(--real $REAL_DIRS --views "$VIEWS")
# shellcheck disable=SC2206
[ -n "$LEAVE_OUT" ] && REAL_ARGS+=(--leave-out $LEAVE_OUT)
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of words
TRAIN_ARGS=("${REAL_ARGS[@]}" --phantoms "$PHANTOMS" --seed "$SEED" --config "$CONFIG" --device "$DEVICE"
            --cache "$WORK/cache" --checkpoint-dir "$WORK/ckpt" -o "$WORK/lumbarseg_$CONFIG.pt"
            --checkpoint-minutes 1 --val-minutes 1 $EXTRA_ARGS)
python3 -m LumbarSegLib.cli train "${TRAIN_ARGS[@]}" --prepare-only
say "data ready"

# 3. training: the rest of the budget
TRAIN_MIN=$(python3 -c "print(round(max(0.2, ($MINUTES * 60 - $(( $(date +%s) - T0 )) - $RESERVE_S) / 60), 2))")
say "training both networks for $TRAIN_MIN min"
python3 -m LumbarSegLib.cli train "${TRAIN_ARGS[@]}" --minutes "$TRAIN_MIN" \
    --note "tools/train_gpu.sh: MINUTES=$MINUTES PHANTOMS=$PHANTOMS DEVICE=$DEVICE"

# 4. the model, split for the trip back, checked by loading it
python3 - "$WORK/lumbarseg_$CONFIG.pt" "$OUT/lumbarseg_$CONFIG" <<'EOF'
import json, sys
from pathlib import Path
from LumbarSegLib.inference.models import load_model, split_bundle

bundle, stem = Path(sys.argv[1]), Path(sys.argv[2])
parts = split_bundle(bundle, stem)
model = load_model(parts[0])
info = model.describe()
meta = model.metadata
summary = {"model": info, "training_minutes": meta.get("training_minutes"), "finished": meta.get("finished"),
           "options": meta.get("options"), "training_data": meta.get("training_data"),
           "networks": {k: {kk: v.get(kk) for kk in ("steps", "epochs_completed", "training_minutes",
                                                     "final_train_loss", "final_validation")}
                        for k, v in meta.get("networks", {}).items()}}
stem.with_name(stem.name + ".summary.json").write_text(json.dumps(summary, indent=1, default=str))
for p in parts:
    size = p.stat().st_size
    print(f"{p}: {size / 2**20:.1f} MiB")
    if size > 16 * 2**20:
        sys.exit(f"{p} is larger than the 16 MiB a returned file may have")
print(json.dumps(summary["networks"], indent=1, default=str))
EOF
say "done: $(ls "$OUT" | tr '\n' ' ')"
