"""``lumbarseg batch`` resuming and its inputs (issue 24, items 5-8): a rerun with relative paths skips the
finished studies, a scan replaced at the same path is run again, a folder written by ``lumbarseg phantom``
is searched, and ``--scheduler`` addresses that reach no scheduler are refused in one line, quickly, with
nothing left behind. Real files, real CLI subprocesses, a real LocalCluster and real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import SimpleITK as sitk

from conftest import make_synthetic_ct
from LumbarSegLib import cli
from LumbarSegLib.batch import command as batch, studies as batch_studies, summary as batch_summary
from LumbarSegLib.io.input_identity import input_identity

pytest.importorskip("distributed")

REPO = Path(cli.__file__).resolve().parents[1]
BATCH_TIMEOUT_S = 900


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _batch_in(cwd: Path, *args) -> subprocess.CompletedProcess:
    """``lumbarseg batch ARGS`` run from ``cwd`` (so relative paths are relative to it)."""
    return subprocess.run([sys.executable, "-m", "LumbarSegLib.cli", "batch", *map(str, args), "--workers", "1",
                           "--device", "cpu"], capture_output=True, text=True, cwd=cwd, env=_env(),
                          timeout=BATCH_TIMEOUT_S)


def _rows(out_root: Path) -> dict[str, dict]:
    return {row["id"]: row for row in batch_summary.read_summary(out_root / "summary.csv")}


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_relative_path_rerun_skips_finished_studies_and_a_replaced_scan_is_run_again(tmp_path):
    cts = tmp_path / "CTs"
    cts.mkdir()
    sitk.WriteImage(make_synthetic_ct(seed=1)[0], str(cts / "case0.nii.gz"))
    sitk.WriteImage(make_synthetic_ct(seed=2)[0], str(cts / "case1.nii.gz"))

    first = _batch_in(tmp_path, "CTs", "-o", "results")
    assert first.returncode == 0, first.stderr + first.stdout
    out = tmp_path / "results"
    assert {r["status"] for r in _rows(out).values()} == {"ok"}
    identity = _report(out / "case0")["input"]["identity"]
    assert identity["real_path"] == str((cts / "case0.nii.gz").resolve())
    assert identity["bytes"] == (cts / "case0.nii.gz").stat().st_size and len(identity["sha256"]) == 64
    written = {name: (out / name / "report.json").stat().st_mtime_ns for name in ("case0", "case1")}

    # The same command again, from the same folder: both are skipped, nothing is run, exit 0.
    again = _batch_in(tmp_path, "CTs", "-o", "results")
    assert again.returncode == 0, again.stderr + again.stdout
    assert "2 studies: 0 ok, 0 failed, 2 skipped" in again.stdout
    rows = _rows(out)
    assert rows["case0"]["status"] == rows["case1"]["status"] == "skipped"
    assert {name: (out / name / "report.json").stat().st_mtime_ns for name in written} == written

    # case0.nii.gz replaced by another scan: it is run again and its result replaced; case1 is still skipped.
    sitk.WriteImage(make_synthetic_ct(shape_xyz=(44, 40, 48), seed=3)[0], str(cts / "case0.nii.gz"))
    third = _batch_in(tmp_path, "CTs", "-o", "results")
    assert third.returncode == 0, third.stderr + third.stdout
    assert "2 studies: 1 ok, 0 failed, 1 skipped" in third.stdout
    assert "case0: its input changed since its result was written" in third.stderr
    rows = _rows(out)
    assert rows["case0"]["status"] == "ok" and rows["case1"]["status"] == "skipped"
    report = _report(out / "case0")
    assert report["input"]["size"][0] == 44, "the result is of the new scan"
    assert report["input"]["identity"]["sha256"] != identity["sha256"]
    assert report["replaced_result"] is not None
    assert (out / "case1" / "report.json").stat().st_mtime_ns == written["case1"]


def test_plan_compares_the_scan_by_size_then_content_and_paths_by_what_they_name(tmp_path, monkeypatch):
    ct = make_synthetic_ct(seed=1)[0]
    (tmp_path / "CTs").mkdir()
    path = tmp_path / "CTs" / "p1.nii.gz"
    sitk.WriteImage(ct, str(path))
    folder = tmp_path / "out" / "p1"
    folder.mkdir(parents=True)

    def write_report(input_desc):
        (folder / "report.json").write_text(json.dumps({"lumbarseg_version": "0", "input": input_desc, "found": []}))

    monkeypatch.chdir(tmp_path)
    study = batch_studies.Study("p1", "CTs/p1.nii.gz")  # relative, as typed
    write_report({"path": "CTs/p1.nii.gz", "identity": input_identity(path)})
    to_run, rows, changed = batch.plan([study], tmp_path / "out", overwrite=False)
    assert to_run == [] and rows["p1"]["status"] == "skipped"

    # A report of an older version (no identity, the path as given, relative): still the same input.
    write_report({"path": "CTs/p1.nii.gz"})
    assert batch.plan([study], tmp_path / "out", overwrite=False)[1]["p1"]["status"] == "skipped"

    # Touched (same bytes, new modification time): the content hash says it is the same scan.
    write_report({"path": "CTs/p1.nii.gz", "identity": input_identity(path)})
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert batch.plan([study], tmp_path / "out", overwrite=False)[1]["p1"]["status"] == "skipped"

    # Same size, other bytes: run again.
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    to_run, rows, changed = batch.plan([study], tmp_path / "out", overwrite=False)
    assert to_run == [study] and "p1" not in rows and "content changed" in changed["p1"]

    # Another size: run again, saying so.
    sitk.WriteImage(make_synthetic_ct(shape_xyz=(44, 40, 48))[0], str(path))
    assert "size changed" in batch.plan([study], tmp_path / "out", overwrite=False)[2]["p1"]

    # Another file's result is still a failed row, never replaced unasked.
    write_report({"path": str(tmp_path / "other.nii.gz"), "identity": {"real_path": str(tmp_path / "other.nii.gz")}})
    to_run, rows, changed = batch.plan([study], tmp_path / "out", overwrite=False)
    assert to_run == [] and rows["p1"]["status"] == "failed" and "another input" in rows["p1"]["error"]


def test_a_dicom_series_identity_changes_when_one_of_its_files_does(tmp_path):
    from test_dicom_seg import write_ct_series

    from LumbarSegLib.io.input_identity import input_changed

    files = write_ct_series(make_synthetic_ct()[0], tmp_path / "dicom", seed=7)
    identity = input_identity(tmp_path / "dicom")
    assert identity["files"] == len(files) and input_changed(identity, tmp_path / "dicom") is None
    data = bytearray(Path(files[3]).read_bytes())
    data[-3] ^= 0xFF
    Path(files[3]).write_bytes(bytes(data))
    assert "content changed" in input_changed(identity, tmp_path / "dicom")


@pytest.mark.slow
def test_a_folder_written_by_lumbarseg_phantom_is_searched_for_its_cts(tmp_path, capsys):
    rc = cli.main(["phantom", "-o", str(tmp_path / "ph"), "--n", "2", "--shape", "40", "40", "40",
                   "--spacing", "4", "4", "4", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "ph" / "report.json").read_text())["command"] == "phantom"
    studies, skipped = batch_studies.find_studies([tmp_path / "ph"])
    assert [s.id for s in studies] == ["sub-000_ct", "sub-001_ct"]
    assert len(skipped) == 2 and all("label map" in s for s in skipped)  # the masks, not CTs

    # A result folder given to batch says why it is not searched.
    result = tmp_path / "result"
    result.mkdir()
    (result / "report.json").write_text(json.dumps({"lumbarseg_version": "0", "found": []}))
    sitk.WriteImage(make_synthetic_ct()[1], str(result / "case_labels.nii.gz"))
    with pytest.raises(batch_studies.InputError, match="holds a LumbarSeg result .* whose label maps are not CTs"):
        batch_studies.find_studies([result])


# ------------------------------------------------------------------------------------------- --scheduler

class _OtherService:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (not a Dask scheduler)."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self):
        self.server.close()
        for conn in self.connections:
            conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_addresses_that_reach_no_scheduler_are_one_line_and_leave_nothing(tmp_path, ct_file, capsys,
                                                                                      monkeypatch):
    from LumbarSegLib.batch import cluster as batch_cluster

    monkeypatch.setattr(batch_cluster, "CONNECT_TIMEOUT_S", 2)  # the other service's wait is bounded by it
    other = _OtherService()
    try:
        cases = [(f"tcp://127.0.0.1:{other.port}", "did not answer as a Dask scheduler"),
                 ("foo", "not an address"),
                 ("tls://127.0.0.1:8786", "needs its certificates"),
                 (f"tcp://127.0.0.1:{_free_port()}", "connection refused"),
                 ("tcp://127.0.0.1:99999", "port 99999 does not exist"),
                 ("", "the address is empty"),
                 ("   ", "the address is empty"),
                 ("udp://127.0.0.1:8786", "not supported")]
        for address, message in cases:
            out = tmp_path / f"out{len(address)}"
            rc = cli.main(["batch", str(ct_file), "-o", str(out), "--scheduler", address, "--device", "cpu"])
            err = capsys.readouterr().err
            assert rc == 2 and message in err, (address, err)
            assert err.count("\n") == 1 and "Traceback" not in err, (address, err)
            assert not out.exists(), f"{address!r} left an output folder"
    finally:
        other.close()


def test_run_batch_against_another_service_leaves_no_output_folder(tmp_path, ct_file, monkeypatch):
    """Through run_batch too (a program calling it, not the command line): bounded, and no folder left."""
    from LumbarSegLib.batch import cluster as batch_cluster
    from LumbarSegLib.study.runner import StudyOptions

    monkeypatch.setattr(batch_cluster, "CONNECT_TIMEOUT_S", 2)
    other = _OtherService()
    try:
        studies, _ = batch_studies.find_studies([ct_file])
        with pytest.raises(batch_studies.InputError, match="did not answer as a Dask scheduler"):
            batch.run_batch(studies, StudyOptions(input="", output="", device="cpu"), tmp_path / "out",
                            scheduler=f"tcp://127.0.0.1:{other.port}", quiet=True)
    finally:
        other.close()
    assert not (tmp_path / "out").exists()
