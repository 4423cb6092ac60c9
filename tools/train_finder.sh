#!/usr/bin/env bash
# The finder (issue 23), trained on a CPU across sessions: the exact commands, in order.
#
#   bash tools/train_finder.sh train [MINUTES]   # training phantoms if missing, the committed resume file, the
#                                                # plan's unfinished phases
#   bash tools/train_finder.sh save [PHASE...]   # pack the phases (default: all) into the committed resume file
#   bash tools/train_finder.sh gate              # each fold on its held-out subjects; then end to end with stage 3
#   bash tools/train_finder.sh naming            # evaluate-model's naming run on the folds (and stage 3's folds)
#   bash tools/train_finder.sh ship              # the 'all' phase as Resources/Models/lumbarseg_finder.pt + its card
#
# STATE (default ../finder_state) holds the checkpoints and log.jsonl; PHANTOMS (default ../finder_phantoms)
# the training phantoms (seeds 0-159); STAGE3_STATE (default ../stage3_state) stage 3's folds for the end-to-end
# score; SHARED (default ../shared/data) the real CTs and the label maps.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${STATE:-../finder_state}
PHANTOMS=${PHANTOMS:-../finder_phantoms}
STAGE3_STATE=${STAGE3_STATE:-../stage3_state}
SHARED=${SHARED:-../shared/data}
RESUME=Resources/Training/finder_resume.pt
MODEL=Resources/Models/lumbarseg_finder.pt
REAL="$SHARED/real $SHARED/tptbox_l3 $SHARED/real_boneonly"
PY=${PYTHON:-python3}
case "${1:-}" in
  train)
    $PY -c "from LumbarSegLib.training.data import generate_phantoms; generate_phantoms('$PHANTOMS', 160, 0, workers=2)"
    args=()
    [ -f "$RESUME" ] && args=(--resume-from "$RESUME")  # phases further along in STATE are kept
    $PY -m LumbarSegLib.training.finder_train --state "$STATE" --real "$PHANTOMS" $REAL --masks "$SHARED/masks" \
      --minutes "${2:-150}" --threads "$(nproc)" "${args[@]}" ;;
  save)
    shift
    $PY -m LumbarSegLib.training.finder_train --state "$STATE" --export "$RESUME" ${1:+--only "$@"} ;;
  gate)
    $PY -m LumbarSegLib.training.finder_eval --state "$STATE" --phases fold-A fold-B fold-C --real $REAL \
      --json "$STATE/gate.json"
    $PY -m LumbarSegLib.training.finder_eval --state "$STATE" --phases fold-A fold-B fold-C --real $REAL \
      --end-to-end "$STAGE3_STATE" --json "$STATE/e2e.json" ;;
  naming)
    $PY -m LumbarSegLib.cli evaluate-model --model Resources/Models/lumbarseg_cpu.pt --phantoms 0 --no-real-ct \
      --naming --naming-phantoms 0 --real $REAL --partial-views 4 \
      --refine "$STAGE3_STATE"/fold-{A,B,C}.pt --finder "$STATE"/fold-{A,B,C}.pt -o "$STATE/naming.json" ;;
  ship)
    NAMING_CARD=""; [ -f "$STATE/naming.json" ] && NAMING_CARD="$STATE/naming.json"
    $PY - "$STATE" "$MODEL" "$PHANTOMS" $REAL <<'PYEOF'
import sys, torch
from LumbarSegLib.inference.finder import FINDER_BUNDLE
from LumbarSegLib.results.training_cases import HASHES_KEY, hash_cases
from LumbarSegLib.training.data import find_cases
state = torch.load(f"{sys.argv[1]}/all.pt", map_location="cpu", weights_only=True)
cases = [c for d in sys.argv[4:] for c in find_cases(d)]
meta = {"phase": "all", "steps": state["step"], "minutes": round(state["minutes"], 1),
        "training_data": {"real": {"cases": [c.case_id for c in cases]}, HASHES_KEY: hash_cases(cases),
                          "phantoms": "lumbarseg's training phantoms, seeds 0-159",
                          "label_maps": "the vertebra label maps without CT of ../shared/data/masks"}}
print(FINDER_BUNDLE.save(state, sys.argv[2], meta))
PYEOF
    $PY -m LumbarSegLib.training.finder_card --gate "$STATE/gate.json" --end-to-end "$STATE/e2e.json" \
      ${NAMING_CARD:+--naming "$NAMING_CARD"} --log "$STATE/log.jsonl" --model "$MODEL" ;;
  *) echo "usage: bash tools/train_finder.sh train [MINUTES] | save | gate | naming | ship" >&2; exit 2 ;;
esac
