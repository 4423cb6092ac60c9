"""The model card of the finder, written from its gate (``finder_eval``), its end-to-end rows
(``finder_eval --end-to-end``), its naming (``lumbarseg evaluate-model --naming ... --finder FOLDS -o J``: the
card's split by the anchor in view and by acquisition) and the training log.

    python -m LumbarSegLib.training.finder_card --gate gate.json [--end-to-end e2e.json] [--naming J] \\
        --log STATE/log.jsonl --model Resources/Models/lumbarseg_finder.pt

writes ``<model>.md`` and ``<model>.json`` beside the model. Every number names the command that measured it.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from .naming_eval import naming_markdown
from .vertebra_card import training_lines


def _share(kn) -> str:
    k, n = kn
    return "-" if not n else f"{100 * k / n:.0f} % ({k}/{n})"


def gate_lines(summary: dict) -> list[str]:
    counted = summary.get("counted") or {}
    return ["| measure | the finder's own classes | named by counting |", "|---|---|---|",
            f"| centre recall within 10 mm | {_share(summary['centre_recall_10mm'])} | "
            f"{_share(counted['centre_recall_10mm']) if counted else '-'} |",
            f"| identification within 20 mm (VerSe) | {_share(summary['identification_20mm'])} | "
            f"{_share(counted['identification_20mm']) if counted else '-'} |",
            f"| scans with every lumbar name right | {_share(summary['scans_all_right'])} | "
            f"{_share(counted['scans_all_right']) if counted else '-'} |"]


def end_to_end_lines(summary: dict) -> list[str]:
    """The end-to-end summary (:func:`.finder_eval.summarize_end_to_end`) as a table: a row per path and acquisition,
    then the complete L1-L5 views' rows."""
    from .finder_eval import COMPLETE_KEY

    lines = ["| path | acquisition | scans | mean DSC | every name right | wrong names warned |", "|---|---|---|---|---|---|"]
    for path, parts in summary.items():
        rows = [(name, s) for name, s in parts.items() if name != COMPLETE_KEY]
        rows += [(f"{COMPLETE_KEY}, {name}", s) for name, s in parts.get(COMPLETE_KEY, {}).items()]
        for name, s in rows:
            dsc = "-" if s["mean_dsc"] is None else f"{s['mean_dsc']:.3f}"
            lines.append(f"| {path} | {name} | {s['scans']} | {dsc} | {_share(s['all_right'])} | {_share(s['wrong_warned'])} |")
    return lines


def case_lines(rows: list[dict], path: str = "finder") -> list[str]:
    """The end-to-end rows (:func:`.finder_eval.end_to_end`) of ``path`` as a table of mean DSC: a row per held-out
    case, a column per acquisition (the README's per-case row comes from here)."""
    acquisitions = list(dict.fromkeys(r["acquisition"] for r in rows if path in r))
    cases = list(dict.fromkeys(r["case"] for r in rows if path in r))
    dsc = {(r["case"], r["acquisition"]): r[path]["mean_dsc"] for r in rows if path in r}
    lines = ["| case | " + " | ".join(acquisitions) + " |", "|---|" + "---|" * len(acquisitions)]
    for case in cases:
        cells = ["-" if dsc.get((case, a)) is None else f"{dsc[(case, a)]:.3f}" for a in acquisitions]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def card_markdown(gate: dict, e2e: dict | None, log_path, model_name: str, naming_card: dict | None = None) -> str:
    out = [f"# Model card: {model_name} (the finder: find every vertebra, then count)", "",
           "Research use only; not a medical device.", "",
           "The XUNet topology (Inception blocks, base width 8) on a fixed 2 mm grid, in windows of 192 x 128 x 128 mm "
           "slid along the column; input: the CT alone in a bone window (no position channel); outputs: background, "
           "L1-L5, thoracic, caudal, and a Gaussian at every vertebral centre. Its centre peaks are the instances "
           "that counting from the ribs and the sacrum names (inference/peak_naming.name_peaks); stage 3 then "
           "segments each. "
           "Trained on a 2-core CPU (float32) on training phantoms, real label maps drawn as synthetic CTs and the "
           "real CTs, in windows at any height along the spine, thick slices simulated on every window and half of "
           "them cut to a narrower scan's field of view (training/finder_samples.py).", "",
           "## Held out: each fold's finder on the subjects it never trained on, as stored and re-imaged", "",
           "Along the true column. `python -m LumbarSegLib.training.finder_eval --state STATE --phases fold-A fold-B "
           "fold-C --real <real CT folders>`.", ""]
    out += gate_lines(gate["summary"]) + [""]
    if e2e:
        out += ["## End to end on the held-out subjects", "",
                "The whole pipeline on the finder's path (the bundled localizer's box, the fold's finder, counting, "
                "the same fold's stage 3), and the bundled XUNet's path where the XUNet also held the case out. The "
                "localizer trained on every real case: it only places the strip. Mean DSC over the case's true L1-L5. "
                "`python -m LumbarSegLib.training.finder_eval --state STATE --phases fold-A fold-B fold-C --real ... "
                "--end-to-end STAGE3_STATE`.", ""]
        out += end_to_end_lines(e2e["summary"]) + [""]
        if e2e.get("rows"):
            out += ["Per held-out case on the finder's path (mean DSC over the case's true L1-L5):", ""]
            out += case_lines(e2e["rows"]) + [""]
    if naming_card:
        # "this model" is each fold's finder and stage 3 there: a real case counts only where both held it out
        # the command's paths are stripped to file names, so which fold file is which is said here
        out += naming_markdown(naming_card["naming"]) + [
            f"Measured by `bash tools/train_finder.sh naming`, which runs `{naming_card['command']}` with each fold's "
            "finder (`--finder`, from STATE) and the same fold's stage 3 (`--refine`, from STAGE3_STATE).", ""]
    out += ["## Training", "", f"Machine: {platform.machine()}, 2 cores (load below). The shipped file is the `all` "
            "phase, trained from the pretrain on every real case (listed in the card's JSON) for longer than each "
            "fold; the held-out numbers above are the folds', its estimate.", ""]
    out += training_lines(log_path) + [""]
    out += ["## Limits", "",
            "- Six real CTs and six label maps, three folds of two subjects: a small validation.",
            "- The thoracic class stands for a rib-bearing vertebra: a T12 without ribs, or an L1 with them, is named "
            "by what it looks like; when the two counts disagree the result says so.",
            "- Re-imaged views are scored on their own thick grids.", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m LumbarSegLib.training.finder_card", description=__doc__.split("\n\n")[0])
    p.add_argument("--gate", required=True)
    p.add_argument("--end-to-end")
    p.add_argument("--naming", help="evaluate-model's card (-o) of a --naming run with the folds' finders")
    p.add_argument("--log", required=True)
    p.add_argument("--model", required=True)
    args = p.parse_args(argv)
    gate = json.loads(Path(args.gate).read_text())
    e2e = json.loads(Path(args.end_to_end).read_text()) if args.end_to_end else None
    model = Path(args.model)
    naming = json.loads(Path(args.naming).read_text()) if args.naming else None
    model.with_suffix(".md").write_text(card_markdown(gate, e2e, args.log, model.name, naming))
    model.with_suffix(".json").write_text(json.dumps({"gate": gate["summary"], "end_to_end": e2e and e2e["summary"],
                                                      "naming": naming and naming["naming"]["summary"]}, indent=1))
    print(model.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
