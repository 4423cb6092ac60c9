"""``lumbarseg batch INPUT... -o OUT_ROOT``: many studies, in parallel on a Dask cluster, resumable.

Each study (:mod:`batch_studies`) is run by the one runner (:func:`runner.run_study`) on a Dask worker
(:mod:`batch_cluster`) into ``OUT_ROOT/<id>/``, a result folder that is whole or absent like ``segment``'s;
``OUT_ROOT/summary.csv`` (:mod:`batch_summary`) is rewritten atomically as each result arrives.

* **Resumable.** A study whose folder already holds a complete result of the same input is skipped
  (``--overwrite`` runs it again and replaces the result as a whole); a failed study left no folder and an
  unfinished one only a hidden staging folder, so a rerun runs both again.
* **Fault-tolerant.** A study's error is its row (``failed`` + the error line), never the batch's end. A
  study whose worker died (killed, out of memory) is submitted again, to a live worker, and recorded as
  failed when that second attempt dies too (:data:`ATTEMPTS`).
* **Exit code** 0 when every study is ``ok`` or ``skipped``, 1 when any failed, 2 for a bad command line
  (an input that does not exist, a bad manifest, an unusable OUT_ROOT) - then nothing was run.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import uuid
from pathlib import Path

from ..errors import InputError
from ..study.console import PROG, err
from ..study.runner import StudyOptions

ATTEMPTS = 2  # a study whose worker dies is run once more, then recorded as failed
BATCH_LOCK_NAME = ".lumbarseg-batch.lock"
WORKER_DIED = ("its worker died twice while running it (killed, or out of memory: try fewer --workers or "
               "crop the CT)")


# --------------------------------------------------------------------------------------------------
# Planning: which studies already hold a result
# --------------------------------------------------------------------------------------------------

def _same_path(report: dict, study) -> bool:
    """Whether ``report`` is a result of ``study``'s input: the same file or series, however the path was
    written (a relative path is compared by what it names; a report of an older version recorded the path
    as given, which is resolved from this folder)."""
    from ..io.input_identity import IDENTITY_KEY, real_path

    source = report.get("input") or {}
    recorded = (source.get(IDENTITY_KEY) or {}).get("real_path")
    if recorded is None and source.get("path"):
        recorded = real_path(source["path"])
    if recorded != real_path(study.input):
        return False
    uid = (source.get("dicom_series") or {}).get("uid")
    return study.series_uid is None or uid == study.series_uid


def plan(studies, out_root: Path, overwrite: bool):
    """(studies to run, rows of those that are not run, {id: why its input changed}): complete results of
    the same, unchanged input are skipped; a result of the same path whose scan has changed since (another
    size or content) is run again and replaced; a folder holding another input's result is a failed row
    (never mixed, never replaced unasked)."""
    from .summary import summary_row
    from ..io.input_identity import IDENTITY_KEY, input_changed
    from ..results.outputs import read_result_report

    to_run, done, changed = [], {}, {}
    for study in studies:
        folder = out_root / study.id
        report = read_result_report(folder)
        if report is None or overwrite:
            to_run.append(study)
        elif _same_path(report, study):
            why = input_changed((report.get("input") or {}).get(IDENTITY_KEY), study.input, study.series_uid)
            if why is None:
                done[study.id] = summary_row(study, "skipped", output=folder, report=report)
            else:
                to_run.append(study)
                changed[study.id] = why
        else:
            other = (report.get("input") or {}).get("path")
            done[study.id] = summary_row(
                study, "failed", output=folder,
                error=f"{folder} already holds the result of another input ({other}); give this study another id "
                      f"or OUT_ROOT, or add --overwrite to replace it.")
    return to_run, done, changed


def _clear_stale(folder: Path) -> None:
    """Remove the staging folder a killed worker left beside ``folder`` (under its lock, as a rerun would)."""
    from ..results.outputs import OutputFolder

    OutputFolder(folder).clear_stale()


class _BatchLock:
    """One batch at a time per OUT_ROOT (two would run the same studies and overwrite each other's summary)."""

    def __init__(self, out_root: Path):
        self.path = out_root / BATCH_LOCK_NAME
        self.fd = None

    def __enter__(self):
        from ..results.outputs import _lock_file

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_file(self.fd):
            os.close(self.fd)
            raise InputError(f"Another lumbarseg batch is writing to {self.path.parent}; wait for it to finish or "
                             f"choose another output folder.")
        return self

    def remove_with_folder(self) -> None:
        """Remove the lock file and its (otherwise empty) folder, which this batch created."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # not empty after all
            pass

    def __exit__(self, *exc):
        os.close(self.fd)


def check_out_root(out_root: Path) -> Path:
    """OUT_ROOT, checked before anything is read or run (it is created only when the batch starts)."""
    from ..results.outputs import check_writable_location, is_read_only, read_result_report

    out_root = Path(os.path.realpath(out_root))
    if out_root.exists() and not out_root.is_dir():
        raise InputError(f"Output folder {out_root} is an existing file, not a folder; give a folder name.")
    if read_result_report(out_root) is not None:
        raise InputError(f"Output folder {out_root} holds one study's result (report.json); a batch writes one "
                         f"folder per study under OUT_ROOT. Choose another folder.")
    check_writable_location(out_root / "summary.csv", "Output folder")
    if out_root.is_dir() and is_read_only(out_root):
        raise InputError(f"Output folder {out_root} is read-only; choose a writable folder.")
    return out_root


# --------------------------------------------------------------------------------------------------
# Console progress
# --------------------------------------------------------------------------------------------------

def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class BatchProgress:
    """A bar on a terminal (done / failed / ETA, redrawn); one line per finished study in a log."""

    WIDTH = 30

    def __init__(self, total: int, skipped: int, quiet: bool = False, stream=None):
        self.total, self.skipped, self.quiet = total, skipped, quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.ok = self.failed = 0
        self.t0 = time.perf_counter()
        self.draw()

    @property
    def finished(self) -> int:
        return self.ok + self.failed

    def eta(self) -> str:
        if not self.finished:
            return "?"
        elapsed = time.perf_counter() - self.t0
        return _clock(elapsed / self.finished * (self.total - self.finished))

    def line(self) -> str:
        filled = int(self.WIDTH * self.finished / self.total) if self.total else self.WIDTH
        return (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.finished}/{self.total} done, "
                f"{self.failed} failed, {self.skipped} skipped, ETA {self.eta()}")

    def draw(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write(f"\r{PROG}: {self.line()}\x1b[K")
            self.stream.flush()

    def note(self, text: str, always: bool = True) -> None:
        """A message that stays (a failure, a retry), printed above the bar; ``always=False``: not when quiet."""
        if self.quiet and not always:
            return
        if self.tty and not self.quiet:
            self.stream.write("\r\x1b[K")
        print(f"{PROG}: {text}", file=self.stream, flush=True)
        self.draw()

    def result(self, row: dict) -> None:
        if row["status"] == "failed":
            self.failed += 1
            self.note(f"{row['id']} failed: {row['error']}")
            return
        self.ok += 1
        if not self.tty and not self.quiet:
            print(f"{PROG}: {row['id']} ok ({row.get('wall_s', '?')} s); {self.line()}", file=self.stream, flush=True)
        self.draw()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------

def _study_options(template: StudyOptions, study, out_root: Path, replace: bool = False) -> dict:
    """The runner's options for ``study``; paths absolute (a worker's working folder is not the client's).
    ``replace``: its input changed since its result was written, which is replaced."""
    return dataclasses.asdict(dataclasses.replace(
        template, input=os.path.abspath(study.input), output=str(out_root / study.id), series=study.series_uid,
        reference=os.path.abspath(study.reference) if study.reference else None, quiet=True,
        overwrite=template.overwrite or replace))


def run_batch(studies, template: StudyOptions, out_root, *, scheduler: str | None = None,
              workers: int | None = None, quiet: bool = False, dashboard: bool = True) -> list[dict]:
    """Run ``studies`` (:class:`batch_studies.Study`) with ``template``'s options into ``out_root``; return
    the summary rows (in the order of ``studies``), which are also in ``out_root/summary.csv``."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    from . import cluster as batch_cluster
    from .summary import SUMMARY_NAME, summary_row, write_summary

    out_root = check_out_root(Path(out_root))
    created = not out_root.exists()
    out_root.mkdir(parents=True, exist_ok=True)
    summary = out_root / SUMMARY_NAME
    with _BatchLock(out_root) as lock:
        to_run, rows, changed = plan(studies, out_root, template.overwrite)

        def save():
            write_summary(summary, [rows[s.id] for s in studies if s.id in rows])

        if to_run:
            try:
                client, cluster, n_workers = batch_cluster.start_client(scheduler, workers, template.device,
                                                                        len(to_run), dashboard)
            except BaseException:  # e.g. no scheduler at --scheduler: nothing ran, so leave no new OUT_ROOT
                if created:
                    lock.remove_with_folder()
                raise
        save()
        progress = BatchProgress(len(to_run), len(studies) - len(to_run), quiet)
        if not to_run:
            progress.close()
            return [rows[s.id] for s in studies]
        try:
            link = batch_cluster.dashboard_link(client, local=cluster is not None)
            progress.note(f"{_count(len(to_run), 'study', 'studies')} to run on {_count(n_workers, 'Dask worker')}"
                          + (f"; dashboard: {link}" if link else "")
                          + (f"; {len(studies) - len(to_run)} already done" if len(to_run) < len(studies) else ""),
                          always=False)
            for study_id, why in changed.items():
                progress.note(f"{study_id}: its input changed since its result was written ({why}); running it "
                              f"again", always=False)
            pending = {}
            queue = as_completed()

            def submit(study, attempt):
                future = client.submit(batch_cluster.run_study_task, study.to_dict(),
                                       _study_options(template, study, out_root, study.id in changed),
                                       key=f"lumbarseg-{study.id}-{uuid.uuid4().hex[:8]}", pure=False)
                pending[future.key] = (study, attempt)
                queue.add(future)

            for study in to_run:
                submit(study, 1)
            for future in queue:
                study, attempt = pending.pop(future.key)
                folder = out_root / study.id
                try:
                    task = future.result()
                except KilledWorker:
                    if attempt < ATTEMPTS:
                        progress.note(f"{study.id}: its worker died (killed, or out of memory); running it again")
                        submit(study, attempt + 1)
                        continue
                    _clear_stale(folder)
                    row = summary_row(study, "failed", output=folder, error=WORKER_DIED, attempts=attempt)
                except Exception as exc:  # the task could not run at all (e.g. LumbarSeg missing on a worker)
                    row = summary_row(study, "failed", output=folder, attempts=attempt,
                                      error=f"the task could not run: {type(exc).__name__}: {exc}")
                else:
                    status = "ok" if task["report"] is not None else "failed"
                    row = summary_row(study, status, output=folder, report=task["report"], error=task["error"],
                                      attempts=attempt, task=task)
                rows[study.id] = row
                save()
                progress.result(row)
        finally:
            progress.close()
            client.close()
            if cluster is not None:
                cluster.close()
    return [rows[s.id] for s in studies if s.id in rows]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def study_template(args) -> StudyOptions:
    """Every study's options from ``batch``'s command line (its input and output filled in per study), a stage
    asked for (``--refine``, ``--finder``) checked once here against the installed models (the defaults need no
    check: each study takes what is installed)."""
    if args.refine or args.finder:
        from ..inference.finder import choose as choose_finder
        from ..inference.vertebra_stage import choose as choose_stage3

        choose_finder(args.finder, choose_stage3(args.refine))
    return StudyOptions(input="", output="", reference_labels=args.reference_labels, model=args.model,
                        device=args.device, stl=args.stl, dicom_seg=args.dicom_seg, preview=args.preview,
                        format=args.format, smoothing=args.smoothing, overwrite=args.overwrite, quiet=True,
                        csv=args.csv, refine=args.refine, finder=args.finder)


def cmd_batch(args) -> int:
    from .studies import find_studies
    from .summary import SUMMARY_NAME
    from ..study.runner import check_smoothing, load_model

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: give at least 1 worker.")
    if args.workers is not None and args.scheduler is not None:
        raise InputError("--workers sizes the local cluster; with --scheduler the cluster has its own workers.")
    template = study_template(args)  # a stage asked for but not installed is one error, before anything runs
    if args.scheduler is not None:  # reached (or refused in one line) before anything is read or created
        from .cluster import check_scheduler

        check_scheduler(args.scheduler)
    check_smoothing(args.smoothing)
    out_root = check_out_root(Path(args.output))
    studies, skipped = find_studies(args.inputs, exclude=out_root)
    if skipped and not args.quiet:
        err(f"{PROG}: note: left out {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of the searched "
             f"folders: {'; '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}")
    # The model is checked here, once (a wrong --model is one error, not a failed row per study); on an
    # existing cluster the workers may have another device than this machine, so it is read for the CPU.
    load_model(args.model, "cpu" if args.scheduler is not None else args.device)
    t0 = time.perf_counter()
    rows = run_batch(studies, template, out_root, scheduler=args.scheduler, workers=args.workers,
                     quiet=args.quiet)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("ok", "failed", "skipped")}
    elapsed = time.perf_counter() - t0
    rate = f", {counts['ok'] / elapsed * 3600:.0f} studies/hour" if counts["ok"] else ""
    print(f"{_count(len(rows), 'study', 'studies')}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
          f"in {_clock(elapsed)}{rate}.")
    for row in rows:
        if row["status"] == "failed":
            print(f"  failed: {row['id']}: {row['error']}")
    print(f"Summary: {out_root / SUMMARY_NAME}")
    return 1 if counts["failed"] else 0


def register_cli(subparsers, common, overwrite, study_outputs) -> None:
    """Add ``batch`` to the ``lumbarseg`` command line; ``common``, ``overwrite`` and ``study_outputs`` add
    the options it shares with ``segment`` (see ``cli.build_parser``)."""
    p = subparsers.add_parser(
        "batch", help="segment many studies in parallel on a Dask cluster (resumable)",
        description="Segment many CTs: each study into OUT_ROOT/<id>/ (like segment), one row each in "
                    "OUT_ROOT/summary.csv. A rerun skips complete results and retries the rest. Exit code 0 "
                    "when every study succeeded, 1 when any failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="CT files, folders (searched for CTs and DICOM series: one study per series), or CSV "
                        "manifests with rows id,path[,reference]")
    p.add_argument("-o", "--output", required=True, metavar="OUT_ROOT")
    study_outputs(p)
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes of the local cluster (default: one per GPU on CUDA, else about one "
                        "per 2 cores as memory allows)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="use an existing Dask cluster (e.g. tcp://10.0.0.5:8786) instead of a local one")
    overwrite(p)
    common(p)
    p.set_defaults(func=cmd_batch)
