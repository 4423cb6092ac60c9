"""The model card of stage 3, written from the gate's measurements (``vertebra_eval``) and the training log.

    python -m LumbarSegLib.training.vertebra_card --gate gate.json [--fit fit.json] [--end-to-end e2e.json]
        --log STATE/log.jsonl --model Resources/Models/lumbarseg_stage3.pt

writes ``<model>.md`` and ``<model>.json`` beside the model. Every number names the command that measured
it; held-out scores, fits and end-to-end comparisons stay in separate tables.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from .vertebra_eval import TARGETS
from .vertebra_train import last_log_records

ACQUISITIONS = ("as stored", "axial 5 mm wide", "sagittal 3 mm", "coronal 3 mm")


def _fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def gate_table(summary: dict, fit: bool = False) -> list[str]:
    lines = ["| acquisition | vertebrae | DSC | ASD mm | HD95 mm | target |", "|---|---|---|---|---|---|"]
    for name in ACQUISITIONS:
        s = summary.get(name)
        if not s:
            continue
        target = TARGETS["fit"] if fit else TARGETS["as stored"] if name == "as stored" else TARGETS["re-imaged"]
        met = "met" if s["DSC"] >= target else "not met"
        lines.append(f"| {name} | {s['vertebrae']} | {_fmt(s['DSC'])} | {_fmt(s['ASD'], 2)} | {_fmt(s['HD95'], 1)} | "
                     f">= {target:.2f}: {met} |")
    return lines


def per_case_table(rows: list[dict]) -> list[str]:
    lines = ["| fold | held-out case | " + " | ".join(ACQUISITIONS) + " |", "|---|---|" + "---|" * len(ACQUISITIONS)]
    keys = sorted({(r["phase"], r["case"]) for r in rows})
    for phase, case in keys:
        cells = []
        for name in ACQUISITIONS:
            hit = [r for r in rows if r["phase"] == phase and r["case"] == case and r["acquisition"] == name]
            cells.append(_fmt(hit[0]["mean_dsc"]) if hit else "-")
        lines.append(f"| {phase} | {case} | " + " | ".join(cells) + " |")
    return lines


def training_lines(log_path) -> list[str]:
    last = last_log_records(log_path)
    lines = ["| phase | steps | minutes | steps/hour (last stretch) | load average (1/5/15 min) |", "|---|---|---|---|---|"]
    # in the plan's order (pretrain, the folds, all), whatever order an unpacked resume file logged them in
    for name, r in sorted(last.items(), key=lambda kv: (kv[0] != "pretrain", kv[0] == "all", kv[0])):
        lines.append(f"| {name} | {r['step']} | {r['minutes']:.0f} | {r['steps_per_hour']} | "
                     f"{' / '.join(str(v) for v in r['load_avg'])} |")
    return lines


def card_markdown(gate: dict, fit: dict | None, e2e: list | None, log_path, model_name: str) -> str:
    out = [f"# Model card: {model_name} (stage 3, one binary U-Net for every vertebra)", "",
           "Research use only; not a medical device.", "",
           "A plain 3D U-Net (16-32-64-128 channels, GroupNorm, channels-last) on a 1.25 mm crop of 80 x 120 x 120 mm "
           "around one vertebra; inputs: the CT in a bone window and a Gaussian at the vertebra's centre; output: that "
           "vertebra against everything else. Trained on a 2-core CPU (float32), first on real vertebra label maps "
           "without CT drawn as synthetic CTs, then fine-tuned with the real CTs, thick slices simulated on every crop.",
           "", "## Held out, with true centres (the gate)", "",
           "Each fold's network scored on the two real subjects it never trained on (its CT and its own masks left "
           "out). `python -m LumbarSegLib.training.vertebra_eval --state STATE --phases fold-A fold-B fold-C --real "
           "<real CT folders>`.", ""]
    out += gate_table(gate["summary"]) + [""] + per_case_table(gate["rows"]) + [""]
    if fit:
        out += ["## Fit on the cases it trained on (not an accuracy estimate)", "",
                "`... vertebra_eval --fit --no-reimage --phases all ...`", ""]
        out += gate_table(fit["summary"], fit=True) + [""]
    if e2e:
        out += ["## End to end on the XUNet's path (`--no-finder`), with and without stage 3", "",
                "The whole pipeline (localizer, XUNet, then stage 3 on the XUNet's vertebrae) on the cases held out "
                "from both the bundled XUNet and the fold's stage-3 network; mean DSC over the case's true L1-L5, names "
                "by counting (inference/naming.py). The default path (the finder's count, then stage 3) is scored end "
                "to end on every held-out case in the finder's card (lumbarseg_finder.md). "
                "`... vertebra_eval --end-to-end --phases fold-B ...`", "",
                "| case | acquisition | XUNet alone | XUNet + stage 3 | names (stage 3) |", "|---|---|---|---|---|"]
        for r in e2e:
            out.append(f"| {r['case']} | {r['acquisition']} | {_fmt(r['xunet']['mean_dsc'])} | "
                       f"{_fmt(r['stage3']['mean_dsc'])} | {', '.join(r['stage3']['found']) or '-'} |")
        out.append("")
    out += ["## Training", "", f"Machine: {platform.machine()}, 2 cores (each phase's last stretch: its "
            "speed and load on the machine that last trained it).", ""]
    out += training_lines(log_path) + [""]
    out += ["## Limits", "",
            "- Six real CTs (about 35 vertebrae) and six label maps: a small validation; three folds of two cases.",
            "- Stage 3 segments the centres it is given, under the names it is given (by default the finder's count, "
            "with `--no-finder` the XUNet's pieces): a wrong centre or name is not fixed here.",
            "- Re-imaged scores are measured on the thick grid itself (a 5 mm axial view is scored on 5 mm voxels).", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m LumbarSegLib.training.vertebra_card", description=__doc__.split("\n\n")[0])
    p.add_argument("--gate", required=True)
    p.add_argument("--fit")
    p.add_argument("--end-to-end")
    p.add_argument("--log", required=True)
    p.add_argument("--model", required=True)
    args = p.parse_args(argv)
    gate = json.loads(Path(args.gate).read_text())
    fit = json.loads(Path(args.fit).read_text()) if args.fit else None
    e2e = json.loads(Path(args.end_to_end).read_text()) if args.end_to_end else None
    model = Path(args.model)
    md = card_markdown(gate, fit, e2e, args.log, model.name)
    model.with_suffix(".md").write_text(md)
    model.with_suffix(".json").write_text(json.dumps({"gate": gate["summary"], "fit": fit and fit["summary"],
                                                      "end_to_end": e2e}, indent=1))
    print(model.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
