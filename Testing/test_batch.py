"""``lumbarseg batch``: real CLI subprocesses on a real Dask LocalCluster of 2 workers on 127.0.0.1, real
phantoms (NIfTI and DICOM), a real broken file and a really SIGKILLed worker; plus the fast parts (study
discovery, manifests, summary, refusals) without a cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.batch import command as batch, studies as batch_studies, summary as batch_summary
from LumbarSegLib import cli

pytest.importorskip("distributed")
from LumbarSegLib.batch import cluster as batch_cluster  # noqa: E402  (imports distributed)

REPO = Path(cli.__file__).resolve().parents[1]
PHANTOM = {"shape": (56, 48, 80), "spacing": (3.2, 3.2, 3.0), "fov": "lumbar"}  # the bundled model finds L1-L5
BATCH_TIMEOUT_S = 900  # a shared 2-core machine; a study takes 2-30 s there


def _phantom(seed: int) -> sitk.Image:
    """A lumbar phantom with all of L1-L5 in view. Not every seed gives one on this small grid: seed 13's column
    lies at the back edge of the 154 mm field of view, so only slivers of the fronts of L2-L5 show, and "no
    lumbar spine" is a fair answer there, not the batch's failure."""
    from LumbarSegLib import phantoms

    ct, labels = phantoms.generate_phantom(seed, **PHANTOM)
    assert set(range(20, 25)) <= set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()), f"seed {seed}"
    return ct


def _batch_command(*args) -> list[str]:
    return [sys.executable, "-m", "LumbarSegLib.cli", "batch", *map(str, args), "--workers", "2", "--device", "cpu"]


def _run_batch(*args) -> subprocess.CompletedProcess:
    return subprocess.run(_batch_command(*args), capture_output=True, text=True, cwd=REPO, timeout=BATCH_TIMEOUT_S)


def _rows(out_root: Path) -> dict[str, dict]:
    return {row["id"]: row for row in batch_summary.read_summary(out_root / "summary.csv")}


def _assert_whole(folder: Path, source: Path) -> dict:
    """A complete result of ``source``: report.json last, every output it lists present, nothing staged."""
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["path"] == str(source.resolve())
    assert Path(report["outputs"]["labels"]).is_file() and Path(report["outputs"]["labels"]).parent == folder
    assert not list(folder.parent.glob(f".{folder.name}.*")), "a staging or replaced folder was left behind"
    return report


# ------------------------------------------------------------------------------------- one batch, 2 workers

@pytest.fixture(scope="module")
def first_batch(tmp_path_factory):
    """4 phantoms (2 NIfTI files, 2 DICOM series in one folder) and 1 broken file, batched once."""
    from conftest import write_ct_series

    root = tmp_path_factory.mktemp("batch")
    data = root / "in"
    data.mkdir()
    for seed in (11, 12):
        sitk.WriteImage(_phantom(seed), str(data / f"ph{seed}.nii.gz"))
    series = {}
    for seed in (14, 16):
        files = write_ct_series(_phantom(seed), data / "dicom", seed=1000 * seed)
        series[seed] = sitk.ImageFileReader()
        series[seed].SetFileName(str(files[0]))
        series[seed].ReadImageInformation()
    (data / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    out = root / "out"
    done = _run_batch(data, "-o", out)
    uids = {seed: reader.GetMetaData("0020|000e").strip() for seed, reader in series.items()}
    return {"data": data, "out": out, "proc": done, "series_uids": uids}


@pytest.mark.slow
def test_four_phantoms_and_a_broken_file_give_four_ok_and_one_failed_row(first_batch):
    proc, out = first_batch["proc"], first_batch["out"]
    assert proc.returncode == 1, proc.stderr  # not every study succeeded
    assert "5 studies: 4 ok, 1 failed, 0 skipped" in proc.stdout
    assert "Traceback" not in proc.stderr
    rows = _rows(out)
    assert sorted(r["status"] for r in rows.values()) == ["failed", "ok", "ok", "ok", "ok"]
    broken = rows["broken"]
    assert broken["status"] == "failed" and "broken.nii.gz" in broken["error"] and "could not be read" in broken["error"]
    assert "\n" not in broken["error"] and not (out / "broken").exists()
    for study_id, row in rows.items():
        if row["status"] != "ok":
            continue
        report = _assert_whole(out / study_id, Path(row["input"]))
        assert row["found"].split() == report["found"] and report["found"], "the phantoms have lumbar vertebrae"
        first = report["found"][0]
        assert float(row[f"{first}_volume_ml"]) == pytest.approx(report["measurements"][first]["volume_ml"], abs=0.01)
        assert float(row[f"{first}_mean_hu"]) == pytest.approx(report["measurements"][first]["mean_hu"], abs=0.1)
        assert row["model"] == "cpu" and row["device"] == "cpu" and row["attempts"] == "1"
        assert row["worker"].startswith("tcp://127.0.0.1:") and float(row["worker_peak_mb"]) > 0
    assert len({r["worker"] for r in rows.values()}) == 2, "both workers ran studies"
    assert {r["worker_model_loads"] for r in rows.values()} == {"1"}, "each worker read the model once, not per study"
    assert {r["worker_threads"] for r in rows.values()} == {str(max(1, batch_cluster.usable_cpus() // 2))}
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]


@pytest.mark.slow
def test_a_dicom_folder_holding_two_series_gives_two_studies(first_batch):
    rows = _rows(first_batch["out"])
    dicom = {r["series_uid"]: r for r in rows.values() if r["input"].endswith("dicom")}
    assert set(dicom) == set(first_batch["series_uids"].values())
    for uid, row in dicom.items():
        assert row["status"] == "ok" and row["id"].startswith("dicom_")
        report = json.loads((first_batch["out"] / row["id"] / "report.json").read_text(encoding="utf-8"))
        assert report["input"]["dicom_series"]["uid"] == uid  # each study is its own series, not the larger one


@pytest.mark.slow
def test_a_rerun_skips_the_complete_results_and_retries_the_failed_one(first_batch):
    """Runs last in this file: it repairs the broken input, and the rerun must run it (and only it)."""
    out, data = first_batch["out"], first_batch["data"]
    before = {p.name: (p / "report.json").stat().st_mtime_ns for p in out.iterdir() if (p / "report.json").is_file()}
    assert len(before) == 4
    sitk.WriteImage(_phantom(15), str(data / "broken.nii.gz"))
    proc = _run_batch(data, "-o", out)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "5 studies: 1 ok, 0 failed, 4 skipped" in proc.stdout
    rows = _rows(out)
    assert rows["broken"]["status"] == "ok" and rows["broken"]["attempts"] == "1"
    _assert_whole(out / "broken", data / "broken.nii.gz")
    for name, mtime in before.items():
        assert rows[name]["status"] == "skipped" and rows[name]["found"]  # the row is filled from report.json
        assert (out / name / "report.json").stat().st_mtime_ns == mtime, f"{name} was run again"


# ------------------------------------------------------------------------------------- a killed worker

def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


def _kill_worker_mid_study(proc: subprocess.Popen, out: Path, study_id: str, not_pid: int | None = None) -> int:
    """SIGKILL the worker process that holds ``study_id``'s output lock while its staging folder exists."""
    lock = out / f".{study_id}.lumbarseg.lock"
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the batch ended before its worker could be killed"
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != not_pid and list(out.glob(f".{study_id}.*.partial")):
            assert _descends_from(pid, proc.pid), "the lock's holder is not one of this batch's workers"
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.02)
    raise AssertionError("no worker started the study")


def _batch_with_kills(data: Path, out: Path, study_id: str, kills: int) -> tuple[int, str, str]:
    proc = subprocess.Popen(_batch_command(data, "-o", out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, start_new_session=True)
    try:
        pid = None
        for _ in range(kills):
            pid = _kill_worker_mid_study(proc, out, study_id, not_pid=pid)
        stdout, stderr = proc.communicate(timeout=BATCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the batch and the workers it started
            proc.wait()
    return proc.returncode, stdout, stderr


@pytest.mark.slow
def test_a_killed_worker_leaves_no_partial_folder_and_the_study_completes_on_a_retry(tmp_path):
    data = tmp_path / "in"
    data.mkdir()
    sitk.WriteImage(_phantom(21), str(data / "victim.nii.gz"))
    out = tmp_path / "out"

    # Killed twice: recorded as failed after the second death, nothing half-written left.
    rc, stdout, stderr = _batch_with_kills(data, out, "victim", kills=2)
    assert rc == 1, stderr
    row = _rows(out)["victim"]
    assert row["status"] == "failed" and row["attempts"] == "2" and "worker died twice" in row["error"]
    assert "its worker died (killed, or out of memory); running it again" in stderr
    assert not (out / "victim").exists() and not list(out.glob(".victim.*")), "a partial folder was left"

    # Killed once: run again on a live worker within the same batch, and complete.
    rc, stdout, stderr = _batch_with_kills(data, out, "victim", kills=1)
    assert rc == 0, stderr
    row = _rows(out)["victim"]
    assert row["status"] == "ok" and row["attempts"] == "2", row
    _assert_whole(out / "victim", data / "victim.nii.gz")


# ------------------------------------------------------------------------------------- an existing cluster

@pytest.mark.slow
def test_scheduler_runs_the_batch_on_an_existing_cluster(tmp_path, ct_file, capsys):
    """--scheduler: the batch uses a cluster it did not start (here a 1-worker LocalCluster on 127.0.0.1),
    and its worker gets this host's cores for torch."""
    from distributed import LocalCluster

    from LumbarSegLib.batch.cluster import usable_cpus

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        rc = cli.main(["batch", str(ct_file), "-o", str(tmp_path / "out"), "--scheduler", cluster.scheduler_address,
                       "--device", "cpu", "-q"])
        worker = next(iter(cluster.scheduler.workers))
    assert rc == 0, capsys.readouterr().err
    row = _rows(tmp_path / "out")["case01"]
    assert row["status"] == "ok" and row["worker"] == worker and row["worker_threads"] == str(usable_cpus())
    _assert_whole(tmp_path / "out" / "case01", ct_file)


# ------------------------------------------------------------------------------------- no cluster needed

def test_folder_search_finds_cts_and_series_and_leaves_out_label_maps_and_results(tmp_path, synthetic_ct):
    ct, labels = synthetic_ct
    (tmp_path / "a" / "sub").mkdir(parents=True)
    sitk.WriteImage(ct, str(tmp_path / "a" / "case1.nii.gz"))
    sitk.WriteImage(ct, str(tmp_path / "a" / "sub" / "case1.mha"))
    sitk.WriteImage(labels, str(tmp_path / "a" / "sub" / "sub-001_seg-vert_msk.nii.gz"))
    result = tmp_path / "a" / "old_result"
    result.mkdir()
    (result / "report.json").write_text(json.dumps({"lumbarseg_version": "0"}))
    sitk.WriteImage(labels, str(result / "case1_labels.nii.gz"))
    (tmp_path / "a" / "notes.txt").write_text("not a CT")
    studies, skipped = batch_studies.find_studies([tmp_path / "a", tmp_path / "a" / "case1.nii.gz"])
    assert [s.id for s in studies] == ["case1", "sub_case1", "case1-2"]
    assert len(skipped) == 2 and any("label map" in s for s in skipped) and any("LumbarSeg result" in s for s in skipped)
    studies, skipped = batch_studies.find_studies([tmp_path / "a"], exclude=tmp_path / "a" / "sub")  # OUT_ROOT inside
    assert [s.id for s in studies] == ["case1"] and any("output folder" in s for s in skipped)


def test_manifest_rows_paths_relative_to_it_and_refusals(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,reference\np1,cts/p1.nii.gz,refs/p1.nii.gz\n\np2,/abs/p2.nrrd,\n")
    studies = batch_studies.read_manifest(manifest)
    assert [(s.id, s.input, s.reference) for s in studies] == [
        ("p1", str(tmp_path / "cts/p1.nii.gz"), str(tmp_path / "refs/p1.nii.gz")), ("p2", "/abs/p2.nrrd", None)]
    manifest.write_text("p1,a.nii.gz\np1,b.nii.gz\n")  # no header
    with pytest.raises(batch_studies.InputError, match="line 2: the id 'p1' was already used on line 1"):
        batch_studies.read_manifest(manifest)
    manifest.write_text("../up,a.nii.gz\n")
    with pytest.raises(batch_studies.InputError, match="cannot name a folder"):
        batch_studies.read_manifest(manifest)


def test_bad_command_lines_are_one_error_line_and_run_nothing(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    single = tmp_path / "single"
    single.mkdir()
    (single / "report.json").write_text(json.dumps({"lumbarseg_version": "0"}))
    cases = [([tmp_path / "missing.nii.gz", "-o", tmp_path / "o1"], "no such file or folder"),
             ([tmp_path, "-o", tmp_path / "file"], "is an existing file"),
             ([tmp_path, "-o", single], "holds one study's result"),
             ([tmp_path / "file", "-o", tmp_path / "o2", "--workers", "0"], "--workers 0"),
             ([tmp_path / "empty.csv", "-o", tmp_path / "o3"], "no such file"),
             ([tmp_path / "file", "-o", tmp_path / "o4", "--finder", "--no-refine"], "per-vertebra stage")]
    for args, message in cases:
        rc = cli.main(["batch", *map(str, args)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3", "o4"))


def test_every_study_of_a_batch_gets_the_stages_asked_for():
    """--no-finder / --no-refine reach each study's options (they were dropped: every study ran the default)."""
    from LumbarSegLib.batch.command import study_template

    for flags, want in (([], (None, None)), (["--no-finder"], (None, False)), (["--no-refine", "--no-finder"],
                                                                               (False, False))):
        args = cli.build_parser().parse_args(["batch", "x.nii.gz", "-o", "out", *flags])
        template = study_template(args)
        assert (template.refine, template.finder) == want, flags


def test_a_folder_holding_another_inputs_result_is_a_failed_row_not_replaced(tmp_path):
    study = batch_studies.Study("p1", str(tmp_path / "p1.nii.gz"))
    (tmp_path / "out" / "p1").mkdir(parents=True)
    report = {"lumbarseg_version": "0", "input": {"path": str(tmp_path / "other.nii.gz")}, "found": []}
    (tmp_path / "out" / "p1" / "report.json").write_text(json.dumps(report))
    to_run, rows, _ = batch.plan([study], tmp_path / "out", overwrite=False)
    assert to_run == [] and rows["p1"]["status"] == "failed" and "another input" in rows["p1"]["error"]
    report["input"]["path"] = str(tmp_path / "p1.nii.gz")
    (tmp_path / "out" / "p1" / "report.json").write_text(json.dumps(report))
    assert batch.plan([study], tmp_path / "out", overwrite=False)[1]["p1"]["status"] == "skipped"
    assert batch.plan([study], tmp_path / "out", overwrite=True)[0] == [study]


def test_progress_lines_say_done_failed_and_eta():
    import io

    stream = io.StringIO()  # not a terminal: one line per finished study, failures always
    progress = batch.BatchProgress(total=3, skipped=1, stream=stream)
    progress.result({"id": "a", "status": "ok", "wall_s": 1.0})
    progress.result({"id": "b", "status": "failed", "error": "bad file"})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("lumbarseg: a ok (1.0 s); [") and "1/3 done, 0 failed, 1 skipped, ETA 0:00:0" in lines[0]
    assert lines[1] == "lumbarseg: b failed: bad file"
    quiet = io.StringIO()
    progress = batch.BatchProgress(total=1, skipped=0, quiet=True, stream=quiet)
    progress.result({"id": "a", "status": "ok", "wall_s": 1.0})
    progress.note("started", always=False)
    assert quiet.getvalue() == ""


def test_summary_columns_take_trabecular_hu_when_the_reports_hold_it(tmp_path):
    study = batch_studies.Study("p1", "p1.nii.gz")
    m = {"volume_ml": 40.123, "height_mm": 30.06, "mean_hu": 250.04}
    plain = {"lumbarseg_version": "0", "found": ["L1"], "measurements": {"L1": dict(m)}, "model": {"name": "cpu"}}
    trab = {**plain, "measurements": {"L1": {**m, "trabecular_hu": {"mean": 151.26, "median": 150.0},
                                             "trabecular_hu_single_slice": {"mean": 140.0}}}}
    rows = [batch_summary.summary_row(study, "ok", output=tmp_path, report=plain)]
    assert "L1_trabecular_hu_mean" not in batch_summary.columns(rows)
    rows.append(batch_summary.summary_row(study, "ok", output=tmp_path, report=trab))
    path = batch_summary.write_summary(tmp_path / "summary.csv", rows)
    back = batch_summary.read_summary(path)
    assert back[0]["L1_volume_ml"] == "40.12" and back[0]["L1_trabecular_hu_mean"] == ""
    assert back[1]["L1_trabecular_hu_mean"] == "151.3" and back[1]["L1_trabecular_hu_single_slice_mean"] == "140.0"
