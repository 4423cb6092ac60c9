"""``OUT_ROOT/summary.csv`` of ``lumbarseg batch``: one row per study, rewritten whole as results arrive.

Columns: the study (id, input, series_uid, reference), its status (``ok``, ``failed``, ``skipped`` = a
complete result was already there), the error line of a failed study, attempts (2 = its worker died
once), the vertebrae found, per vertebra volume (mL), height (mm) and mean HU - measurements of the
segmentation, kept apart from agreement with a reference, which stays in each ``report.json`` - and the
trabecular HU (3D core and single-slice ROI, mean) when the reports hold it, whether the result is
plausible and its warnings, the timings (s), the model and device, the worker, its torch threads, how often
it has read a model (once per worker process), its peak memory so far (MB) and the result folder.
"""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path

from ..constants import LABEL_NAMES
from ..io.text_files import write_text_atomic

SUMMARY_NAME = "summary.csv"
STATUSES = ("ok", "failed", "skipped")
VERTEBRAE = tuple(LABEL_NAMES.values())
PER_VERTEBRA = (("volume_ml", "volume_ml", 2), ("height_mm", "height_mm", 1), ("mean_hu", "mean_hu", 1))
# (column suffix, measurement key) of trabecular HU entries (LumbarSegLib.measures.trabecular): their "mean".
TRABECULAR = (("trabecular_hu_mean", "trabecular_hu"),
              ("trabecular_hu_single_slice_mean", "trabecular_hu_single_slice"))
TIMINGS = ("read", "localize", "segment", "postprocess", "write", "stl", "preview", "total")
HEAD = ("id", "input", "series_uid", "reference", "status", "error", "attempts", "found", "n_found")
TAIL = ("plausible", "warnings", *(f"time_{t}_s" for t in TIMINGS), "wall_s", "model", "model_sha256",
        "device", "worker", "worker_threads", "worker_model_loads", "worker_peak_mb", "output", "created")


def _round(value, digits):
    return "" if value is None else round(float(value), digits)


def _one_line(text) -> str:
    return " ".join(str(text).split()) if text else ""


def _trabecular_mean(entry):
    if isinstance(entry, dict):
        return entry.get("mean")
    return entry if isinstance(entry, (int, float)) else None


def summary_row(study, status: str, *, output: Path, report: dict | None = None, error: str | None = None,
                attempts: int = 0, task: dict | None = None) -> dict:
    """One row for ``study`` (:class:`batch_studies.Study`); ``report``: its result's report.json, ``task``:
    what the worker returned (wall time, worker, peak memory)."""
    assert status in STATUSES
    row = {"id": study.id, "input": study.input, "series_uid": study.series_uid or "",
           "reference": study.reference or "", "status": status, "error": _one_line(error), "attempts": attempts,
           "output": str(output) if report else ""}
    if task:
        row.update(wall_s=_round(task.get("wall_s"), 2), worker=task.get("worker") or "",
                   worker_threads=task.get("torch_threads", ""), worker_model_loads=task.get("model_loads", ""),
                   worker_peak_mb=_round(task.get("peak_mb"), 0))
    if not report:
        return row
    found = report.get("found") or []
    row.update(found=" ".join(found), n_found=len(found), created=report.get("created", ""),
               device=report.get("device", ""))
    model = report.get("model") or {}
    row["model"] = model.get("name") or (Path(model["path"]).name if model.get("path") else "untrained")
    row["model_sha256"] = model.get("sha256") or ""
    plausibility = report.get("plausibility") or {}
    row["plausible"] = plausibility.get("plausible", "")
    row["warnings"] = _one_line(" | ".join(m for m in report.get("messages", []) if m.upper().startswith("WARNING")))
    for stage, seconds in (report.get("timings_s") or {}).items():
        if stage in TIMINGS:
            row[f"time_{stage}_s"] = _round(seconds, 2)
    for name, m in (report.get("measurements") or {}).items():
        for column, key, digits in PER_VERTEBRA:
            row[f"{name}_{column}"] = _round(m.get(key), digits)
        for column, key in TRABECULAR:
            if key in m:
                row[f"{name}_{column}"] = _round(_trabecular_mean(m[key]), 1)
    return row


def columns(rows) -> list[str]:
    """The header: trabecular columns only when some row has them (reports made with trabecular HU)."""
    keys = set().union(*(row.keys() for row in rows)) if rows else set()
    per = [f"{v}_{c}" for v in VERTEBRAE for c, _, _ in PER_VERTEBRA]
    trab = [f"{v}_{c}" for v in VERTEBRAE for c, _ in TRABECULAR if f"{v}_{c}" in keys]
    return [*HEAD, *per, *trab, *TAIL]


def write_summary(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as the CSV ``path`` atomically (a reader sees the old or the new file, never half)."""
    text = _io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


def read_summary(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
