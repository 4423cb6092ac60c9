"""One study in a scene, without Qt: the state and the decisions that the Slicer module's widget and the web
app's page share. Both front ends are bindings over a :class:`StudySession`; tests drive it headless on a
real MRML scene (Testing/test_study_session.py).

A session holds the run in progress and the last result: it starts the command line in a subprocess
(:mod:`.engine_job`), reports progress without blocking, cancels, loads the result into the scene (an
edited segmentation is kept unless the user agreed to replace it), re-runs keeping edits, and exports
through :mod:`.export`. It keeps a log, the last error and the last result's report.json (with its
provenance) for the "copy diagnostics" text.
"""

from __future__ import annotations

import logging
import time

from ..constants import RESEARCH_NOTICE
from ..errors import Cancelled, InputError
from . import engine_job


class StudySession:
    """The study's run and result in ``scene``. ``device``, ``model`` (a model file, or None for the bundled
    one) and ``python`` (the interpreter for the subprocess; None: this one, or Slicer's) apply to each run;
    ``on_log(line)`` is called for every log line (the module's log panel)."""

    def __init__(self, scene, *, device: str = "auto", model=None, python: str | None = None, on_log=None):
        self.scene = scene
        self.device, self.model, self.python = device, model, python
        self.on_log = on_log
        self.job = None  # the run in progress (engine_job.EngineJob)
        self.report: dict | None = None  # report.json of the last run whose result was loaded
        self.last_result = None  # its pipeline.SegmentationResult
        self.last_outcome = None  # its run.ApplyOutcome (segmentation, ROI, messages, metrics table)
        self.last_settings: dict | None = None
        self.last_error: BaseException | None = None
        self.log_lines: list[str] = []

    # --- log and diagnostics

    def log(self, text) -> None:
        line = time.strftime("%H:%M:%S ") + str(text)
        self.log_lines.append(line)
        logging.info("LumbarSeg: %s", text)
        if self.on_log is not None:
            self.on_log(line)

    def record_error(self, exc: BaseException) -> None:
        self.last_error = exc
        self.log(f"ERROR {type(exc).__name__}: {exc}")

    def diagnostics(self, slicer_version: str | None = None) -> str:
        """The "copy diagnostics" text: versions, device, model, the last run's stages, last error, log."""
        from ..results.model_card import model_summary
        from .provenance import diagnostics_text

        return diagnostics_text(model_summary(self.model), last_result=self.last_result, last_error=self.last_error,
                                settings=self.last_settings, slicer_version=slicer_version, log_lines=self.log_lines)

    def provenance(self) -> dict | None:
        """How the loaded result was made: report.json's provenance (version, model, device, options,
        warnings), as the run wrote it; None before a run."""
        return (self.report or {}).get("provenance")

    def provenance_line(self) -> str:
        """The line shown under a result (the one ``lumbarseg segment`` prints)."""
        from ..study.console import provenance_line

        provenance = self.provenance()
        return provenance_line(provenance) if provenance else ""

    # --- running

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.process.running

    @staticmethod
    def must_ask_before_replacing(segmentation_node) -> bool:
        """A run into ``segmentation_node`` must first ask the user: it was edited since LumbarSeg made it, and
        the answer decides between a new segmentation (edits kept) and replacing it."""
        from .segments import is_user_edited

        return segmentation_node is not None and segmentation_node.GetScene() is not None and \
            is_user_edited(segmentation_node)

    def start(self, volume_node, *, segmentation_node=None, roi_mode: str = "auto", replace_edited: bool = False,
              smoothing: float = 0.5, launcher=None):
        """Start ``lumbarseg segment`` on ``volume_node`` in a subprocess (its crop ROI as the box per
        ``roi_mode``). The result goes into ``segmentation_node`` unless the user edited it and did not agree
        to replace it (``replace_edited``): then into a new one. Returns the job; poll with :meth:`poll`."""
        if self.running:
            raise InputError("A segmentation is already running.")
        self.job = engine_job.start_job(self.scene, volume_node, segmentation_node=segmentation_node,
                                        roi_mode=roi_mode or "auto", device=self.device or "auto",
                                        model_path=self.model, overwrite_edited=replace_edited, smoothing=smoothing,
                                        python=self.python, launcher=launcher)
        self.log(f"Segmenting '{volume_node.GetName()}' (device {self.device or 'auto'}, crop box "
                 f"{'yours' if self.job.box_lps else 'from the localizer'}) in process {self.job.process.pid}")
        return self.job

    def poll(self) -> list:
        """The progress events (``engine_process.ProgressEvent``) since the last poll; never blocks."""
        if self.job is None:
            return []
        events = self.job.process.poll()
        for event in events:
            if event.fraction <= 0.0:
                self.log(event.text)
        return events

    def wait(self, progress=None, cancel=None) -> None:
        """Block until the run ends (scripts, tests): ``progress(stage, fraction)`` gets each event;
        ``cancel()`` returning True ends the run."""
        job = self.job
        try:
            while job is not None and job.process.running:
                job.process.wait_for_output(0.1)  # blocks in the OS on the pipe; no sleep
                for event in self.poll():
                    if progress is not None:
                        progress(event.stage, event.fraction)
                if cancel is not None and cancel():
                    self.cancel()
        except BaseException:
            if self.running:
                self.cancel()
            raise

    def cancel(self) -> None:
        """End the run and its processes; the scene was never touched by it."""
        job, self.job = self.job, None
        if job is not None:
            engine_job.cancel_job(job)
            self.log("Segmentation cancelled")

    def finish(self, reference_node=None, table_node=None):
        """After the process ended: its result into the scene (segments, surfaces, ROI, provenance, metrics
        table). Returns the ApplyOutcome; raises :class:`errors.Cancelled` or the command's one-line error
        (:class:`engine_job.EngineRunError`), leaving the scene unchanged."""
        job, self.job = self.job, None
        if job is None:
            raise Cancelled("No segmentation was running.")
        try:
            result, outcome = engine_job.finish_job(self.scene, job, reference_node, table_node)
        except Exception as exc:
            self.record_error(exc)
            raise
        self.report = job.process.result.report
        self.last_result, self.last_outcome, self.last_settings = result, outcome, job.settings
        timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
        self.log(f"Found {', '.join(result.found) or 'none'} on {result.device or '?'} ({timings})")
        for message in outcome.messages:
            self.log(message)
        return outcome

    def run(self, volume_node, progress=None, cancel=None, reference_node=None, table_node=None, **start_options):
        """Start, wait and finish in one call (scripts, tests). Returns the ApplyOutcome."""
        self.start(volume_node, **start_options)
        self.wait(progress, cancel)
        return self.finish(reference_node, table_node)

    # --- what a front end shows after a run

    def result_text(self) -> str:
        """The status text after a run: found what, in how long, where; how the levels were named; the run's
        messages (the count's warnings among them); the notice."""
        result, outcome = self.last_result, self.last_outcome
        if result is None:
            return ""
        seconds = result.timings.get("total", sum(result.timings.values()))  # the command's report has a total
        from ..results.naming_basis import naming_line

        lines = [f"Found: {', '.join(result.found) or 'none'} ({seconds:.1f} s on {result.device or '?'})."]
        if naming_line(self.report):  # how the levels were named (report.json's "naming"), as the console says
            lines.append(naming_line(self.report) + ".")
        lines += list(outcome.messages)
        lines.append(f"{RESEARCH_NOTICE}: review every vertebra.")
        return "\n".join(lines)

    def result_alert(self) -> tuple[str, str] | None:
        """(title, text) of what must be shown in a dialog after a run, or None: no spine found, or a warning
        (implausible sizes, damaged voxels near the vertebrae)."""
        result, outcome = self.last_result, self.last_outcome
        if result is None:
            return None
        if not result.found:
            return "LumbarSeg: no lumbar spine found", "\n".join(outcome.messages)
        warnings = [m for m in outcome.messages if m.startswith("WARNING")]
        return ("LumbarSeg: check this result", "\n".join(warnings)) if warnings else None

    # --- the result: smoothing, metrics, exports

    @staticmethod
    def set_smoothing(segmentation_node, value: float) -> bool:
        """Set the surface smoothing; surfaces are rebuilt only when the value changes. Returns True then."""
        from .segments import set_smoothing

        return set_smoothing(segmentation_node, value)

    def compute_metrics(self, segmentation_node, volume_node, reference_node=None, table_node=None):
        """The metrics table of a (maybe edited) segmentation, measured now; ``table_node`` reused when given.
        The last run's segmentation keeps how its levels were named (report.json's ``naming``)."""
        from .metrics_table import add_naming_rows, compute_metrics, fill_metrics_table

        rows = compute_metrics(segmentation_node, volume_node, reference_node)
        outcome = self.last_outcome
        if outcome is not None and outcome.segmentation_node is segmentation_node:
            add_naming_rows(rows, self.report)  # the run's names stand until the reader renames a segment
        return fill_metrics_table(self.scene, rows, table_node, name=segmentation_node.GetName() + " metrics",
                                  volume_node=volume_node)

    def export_stl(self, segmentation_node, folder, overwrite: bool = False):
        """One STL per vertebra (:func:`.export.export_stl`: an earlier export of a same-named segmentation is
        replaced, as a whole, only with ``overwrite``)."""
        from .export import export_stl

        files = export_stl(segmentation_node, folder, overwrite=overwrite)
        self.log(f"Wrote {len(files)} STL file(s) to {folder}.")
        return files

    def export_labelmap(self, segmentation_node, volume_node, path):
        from .export import export_labelmap

        written = export_labelmap(self.scene, segmentation_node, volume_node, path)
        self.log(f"Wrote {written}.")
        return written
