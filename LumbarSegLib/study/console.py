"""What a study run prints on a console: stage lines (or JSON progress events for a front end), the
untrained-model banner and the summary of a finished report. Used by ``lumbarseg segment`` / ``demo`` /
``batch`` and by :mod:`.runner`.

Only light standard-library imports at module level (see :mod:`LumbarSegLib.cli`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROG = "lumbarseg"


def err(msg: str) -> None:
    """One line on stderr, flushed (progress and notes; stdout carries the results)."""
    print(msg, file=sys.stderr, flush=True)


def untrained_banner() -> None:
    bar = "!" * 78
    err(f"{bar}\nWARNING: no trained model was found - LumbarSeg is running with RANDOM weights.\n"
        f"WARNING: the segmentation below is MEANINGLESS. Install the bundled model or pass --model PATH.\n{bar}")


class StageProgress:
    """Stage lines on stderr ('localize ... 1.23 s'): readable in logs, unlike redrawn progress bars.

    ``fmt="json"`` (``--progress-format json``) writes one JSON object per event instead
    (``{"event": "progress", "stage": ..., "fraction": ...}``), for a front-end that runs this command as a
    subprocess (:mod:`LumbarSegLib.study.engine_process`)."""

    def __init__(self, quiet: bool = False, fmt: str = "text"):
        self.quiet, self.fmt = quiet, fmt
        self._t0: dict[str, float] = {}

    def __call__(self, stage: str, fraction: float) -> None:
        if self.fmt == "json":
            import json

            err(json.dumps({"event": "progress", "stage": stage, "fraction": float(fraction)}))
            return
        if self.quiet:
            return
        if fraction <= 0.0:
            self._t0[stage] = time.perf_counter()
            err(f"{PROG}: {stage} ...")
        elif fraction >= 1.0:
            dt = time.perf_counter() - self._t0.get(stage, time.perf_counter())
            err(f"{PROG}: {stage} done ({dt:.2f} s)")

    def step(self, stage: str):
        """Announce one of our own (non-pipeline) stages; call the returned function when it ends."""
        return step(self, stage)


def step(progress, stage: str):
    """Announce one of our own (non-pipeline) stages to any ``progress(stage, fraction)``; call the returned
    function when it ends."""
    progress(stage, 0.0)
    return lambda: progress(stage, 1.0)


def print_summary(report: dict) -> None:
    """A finished study's report as the command line shows it: its messages on stderr, then the vertebrae
    found, the measurements, the agreement with a reference, the provenance line and the files written."""
    from ..measures import agreement, measurements
    from ..results.naming_basis import naming_line

    for msg in report["messages"]:
        err(f"{PROG}: {msg}" if msg.upper().startswith("WARNING") else f"{PROG}: note: {msg}")
    found = report["found"]
    print(f"Found vertebrae: {', '.join(found) if found else 'none - no lumbar spine found in this image'}")
    line = naming_line(report)  # how each level was decided; "unanchored" names were counted from nothing
    if line:
        print(line)
    if (report.get("stage3") or {}).get("ran"):
        print(f"Per-vertebra stage: ran ({report['stage3']['model']})")
    if report["measurements"]:
        from ..measures.bone_screening import format_table

        print(measurements.format_measurements(report["measurements"]))
        print("\n" + format_table(report["measurements"], report.get("bone_density")))
    if report.get("metrics") is not None:
        print("\nAgreement with the reference:")
        print(agreement.format_table(report["metrics"]))
    print()
    if report.get("provenance"):
        print(provenance_line(report["provenance"]))
    for key, value in report["outputs"].items():
        if isinstance(value, dict):
            if value:
                print(f"{key:>8}: {Path(next(iter(value.values()))).parent}/ ({', '.join(value)})")
        else:
            print(f"{key:>8}: {value}")


def provenance_line(provenance: dict) -> str:
    """'Made by LumbarSeg 0.1.0, model cpu (sha256 1a2b3c4d5e6f) + per-vertebra stage lumbarseg_stage3.pt
    (sha256 ...) on cpu' from report.json's provenance; the one line every front end shows under a result."""
    model = provenance.get("model") or {}
    trained = "" if model.get("trained", True) else " (UNTRAINED: random weights, meaningless labels)"
    stage3 = provenance.get("stage3") or {}
    refined = (f" + per-vertebra stage {stage3.get('model') or '?'} (sha256 {(stage3.get('sha256') or '')[:12] or '?'})"
               if stage3.get("ran") else ", no per-vertebra stage")
    finder = provenance.get("finder") or {}
    if finder.get("ran"):
        refined += f", vertebrae found by {finder.get('model') or '?'} (sha256 {(finder.get('sha256') or '')[:12] or '?'})"
    return (f"Made by LumbarSeg {provenance.get('lumbarseg_version', '?')}, model {model.get('name') or '?'} "
            f"(sha256 {(model.get('sha256') or '')[:12] or '?'}){trained}{refined} on {provenance.get('device') or '?'}")
