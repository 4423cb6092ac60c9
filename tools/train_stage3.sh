#!/usr/bin/env bash
# Stage 3 (the per-vertebra U-Net), trained on a CPU across sessions: the exact commands, in order.
#
#   bash tools/train_stage3.sh train [MINUTES]   # unpack the committed resume file, run the plan's unfinished phases
#   bash tools/train_stage3.sh save [PHASE...]   # pack the phases (default: all) into the committed resume file (fp16)
#   bash tools/train_stage3.sh gate              # the gate: folds held out with true centres, fit, end to end
#                                                # (a fold already scored after its last checkpoint is not re-scored)
#   bash tools/train_stage3.sh ship              # the 'all' phase as Resources/Models/lumbarseg_stage3.pt + its card
#
# STATE (default ../stage3_state) holds the checkpoints (every 10 min) and log.jsonl (steps per hour and load
# average at every checkpoint). SHARED (default ../shared/data) holds the real CTs and the label maps.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${STATE:-../stage3_state}
SHARED=${SHARED:-../shared/data}
RESUME=Resources/Training/stage3_resume.pt
MODEL=Resources/Models/lumbarseg_stage3.pt
REAL="$SHARED/real $SHARED/tptbox_l3 $SHARED/real_boneonly"
PY=${PYTHON:-python3}
case "${1:-}" in
  train)
    args=()
    [ -f "$RESUME" ] && args=(--resume-from "$RESUME")
    # torch.compile's faster steps need a C++ compiler, and inductor reads its templates in the locale's encoding
    command -v g++ >/dev/null && args+=(--compile) && export PYTHONUTF8=1
    $PY -m LumbarSegLib.training.vertebra_train --state "$STATE" --real $REAL --masks "$SHARED/masks" \
      --minutes "${2:-150}" --threads "$(nproc)" "${args[@]}" ;;
  save)
    shift
    $PY -m LumbarSegLib.training.vertebra_train --state "$STATE" --export "$RESUME" ${1:+--only "$@"} ;;
  gate)
    # Each fold is scored into gate_<fold>.json once its checkpoint is final (a fold scored while the next one
    # trained is not scored again unless its checkpoint is newer), then the folds are summarised together.
    for fold in fold-A fold-B fold-C; do
      if [ ! "$STATE/gate_$fold.json" -nt "$STATE/$fold.pt" ]; then
        $PY -m LumbarSegLib.training.vertebra_eval --state "$STATE" --phases $fold --real $REAL \
          --json "$STATE/gate_$fold.json"
      fi
    done
    $PY -m LumbarSegLib.training.vertebra_eval --combine "$STATE"/gate_fold-{A,B,C}.json --json "$STATE/gate.json"
    $PY -m LumbarSegLib.training.vertebra_eval --state "$STATE" --phases all --real $REAL --fit --no-reimage \
      --json "$STATE/fit.json"
    $PY -m LumbarSegLib.training.vertebra_eval --state "$STATE" --phases fold-B --real $REAL --end-to-end \
      --json "$STATE/e2e.json" ;;
  ship)
    $PY - "$STATE" "$MODEL" $REAL <<'PYEOF'
import sys, torch
from LumbarSegLib.inference.vertebra_stage import save_bundle
from LumbarSegLib.results.training_cases import HASHES_KEY, hash_cases
from LumbarSegLib.training.data import find_cases
state = torch.load(f"{sys.argv[1]}/all.pt", map_location="cpu", weights_only=True)
cases = [c for d in sys.argv[3:] for c in find_cases(d)]
meta = {"phase": "all", "steps": state["step"], "minutes": round(state["minutes"], 1),
        "training_data": {"real": {"cases": [c.case_id for c in cases]}, HASHES_KEY: hash_cases(cases),
                          "label_maps": "the vertebra label maps without CT of ../shared/data/masks"}}
print(save_bundle(state, sys.argv[2], meta))
PYEOF
    $PY -m LumbarSegLib.training.vertebra_card --gate "$STATE/gate.json" --fit "$STATE/fit.json" \
      --end-to-end "$STATE/e2e.json" --log "$STATE/log.jsonl" --model "$MODEL" ;;
  *) echo "usage: bash tools/train_stage3.sh train [MINUTES] | save | gate | ship" >&2; exit 2 ;;
esac
