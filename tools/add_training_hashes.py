"""Record the training cases' CT hashes in a model bundle trained before ``lumbarseg train`` recorded them.

    python3 tools/add_training_hashes.py Resources/Models/lumbarseg_cpu.pt --real ../shared/data/real \\
        ../shared/data/tptbox_l3 ../shared/data/real_boneonly

The real cases the bundle lists as trained on (``training_data.real.cases``) are looked up in the ``--real``
folders (VerSe layout, as given to ``lumbarseg train``); cases of ``--data-dir`` folders (``lumbarseg train
DATA_DIR``) are all taken. Each CT's name, size and SHA-256 go into ``training_data.case_hashes`` (see
``LumbarSegLib/results/training_cases.py``), so ``lumbarseg segment`` says when the CT it is given was one of them.
Weights are untouched and the bundle still loads with ``torch.load(weights_only=True)``; its SHA-256 changes,
so write its model card again afterwards (``lumbarseg evaluate-model ... --card``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def add_training_hashes(bundle, real_dirs=(), data_dirs=()) -> list[dict]:
    """Add the hashes to ``bundle``'s metadata; returns the records written."""
    from LumbarSegLib.errors import InputError
    from LumbarSegLib.inference.models import bundle_metadata, set_bundle_metadata
    from LumbarSegLib.training.data import find_cases
    from LumbarSegLib.results.training_cases import HASHES_KEY, hash_cases

    metadata = bundle_metadata(bundle)
    training_data = metadata.setdefault("training_data", {})
    wanted = list((training_data.get("real") or {}).get("cases") or [])
    if wanted and not real_dirs:
        raise InputError(f"{bundle} was trained on real cases ({', '.join(wanted)}): give their folders with --real.")
    found = {c.case_id: c for d in real_dirs for c in find_cases(d)}
    missing = [case for case in wanted if case not in found]
    if missing:
        raise InputError(f"Not found in {', '.join(map(str, real_dirs))}: the training case(s) {', '.join(missing)}.")
    cases = [found[case] for case in wanted] + [c for d in data_dirs for c in find_cases(d)]
    if not cases:
        raise InputError(f"{bundle} lists no real training case, and no --data-dir was given: nothing to hash.")
    records = hash_cases(cases)
    training_data[HASHES_KEY] = records
    set_bundle_metadata(bundle, metadata)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="model bundle (.pt, or either part of a split one)")
    parser.add_argument("--real", nargs="+", default=[], metavar="DIR", help="the --real folders it trained on")
    parser.add_argument("--data-dir", nargs="+", default=[], metavar="DIR", help="the DATA_DIR folders it trained on")
    args = parser.parse_args(argv)
    from LumbarSegLib.errors import LumbarSegError

    try:
        records = add_training_hashes(args.bundle, args.real, args.data_dir)
    except LumbarSegError as exc:
        print(f"add_training_hashes: error: {exc}", file=sys.stderr)
        return 2
    for r in records:
        print(f"{r['case']}: {r['ct_file']} {r['bytes']} bytes SHA-256 {r['sha256']}")
    print(f"recorded {len(records)} training CT(s) in {args.bundle}; write its model card again.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
