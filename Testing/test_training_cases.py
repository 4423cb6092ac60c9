"""A CT the model was trained on is recognised by its SHA-256 (issue 15, item 13): the bundle records its
training cases' CT hashes (``lumbarseg train``, or ``tools/add_training_hashes.py`` for an older bundle), and
segmenting or scoring such a CT says that its scores are not a held-out estimate."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import SimpleITK as sitk
import torch

from LumbarSegLib import cli
from LumbarSegLib.inference import models
from LumbarSegLib.inference.networks import ModelConfig, build_networks
from LumbarSegLib.results.training_cases import training_case_of

from conftest import make_synthetic_ct

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig("tiny", localizer_channels=4, localizer_levels=3, localizer_input=(16, 16, 24),
                   xunet_base=4, xunet_input=(16, 16, 32))


def _tool():
    spec = importlib.util.spec_from_file_location("add_training_hashes", ROOT / "tools" / "add_training_hashes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_folder(tmp_path: Path) -> Path:
    """Two real-style cases in the VerSe layout; the model below trained on sub-a and left out sub-b."""
    real = tmp_path / "real"
    real.mkdir()
    for seed, case in enumerate(("sub-a", "sub-b")):
        ct, labels = make_synthetic_ct(seed=seed)
        sitk.WriteImage(ct, str(real / f"{case}_ct.nii.gz"))
        sitk.WriteImage(sitk.Cast(labels, sitk.sitkUInt8) + 19 * (labels > 0), str(real / f"{case}_seg-vert_msk.nii.gz"))
    return real


def _bundle(path: Path) -> Path:
    torch.manual_seed(0)
    loc, xu = build_networks(TINY)
    return models.save_model(path, TINY, loc, xu, {"training_data": {"real": {
        "cases": ["sub-a"], "left_out": ["sub-b"], "dirs": ["/home/trainer/data/real"]}}})


def test_hashes_added_to_an_old_bundle_mark_its_training_ct(tmp_path, capsys):
    real = _real_folder(tmp_path)
    bundle = _bundle(tmp_path / "model.pt")
    assert _tool().main([str(bundle), "--real", str(real)]) == 0
    assert "recorded 1 training CT(s)" in capsys.readouterr().out
    torch.load(bundle, map_location="cpu", weights_only=True)  # still a weights-only file
    model = models.load_model(bundle)
    [record] = model.metadata["training_data"]["case_hashes"]
    assert record["case"] == "sub-a" and record["ct_file"] == "sub-a_ct.nii.gz" and len(record["sha256"]) == 64
    assert set(record) == {"case", "ct_file", "bytes", "sha256"}  # a name, not the training machine's path

    copy = tmp_path / "incoming" / "scan.nii.gz"  # the same file under another name is recognised
    copy.parent.mkdir()
    shutil.copy(real / "sub-a_ct.nii.gz", copy)
    assert training_case_of(model.metadata, copy)["case"] == "sub-a"
    assert training_case_of(model.metadata, real / "sub-b_ct.nii.gz") is None  # left out: a held-out case

    out = tmp_path / "out"
    assert cli.main(["segment", str(copy), "-o", str(out), "--model", str(bundle),
                     "--reference", str(real / "sub-a_seg-vert_msk.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "This CT was in the model's training data (training case sub-a" in err
    assert "scores on it are not a held-out estimate" in err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["input"]["in_model_training_data"]["case"] == "sub-a"
    assert any("not a held-out estimate" in m for m in report["messages"])

    held_out = tmp_path / "out_b"
    assert cli.main(["segment", str(real / "sub-b_ct.nii.gz"), "-o", str(held_out), "--model", str(bundle), "-q"]) == 0
    assert "training data" not in capsys.readouterr().err
    assert json.loads((held_out / "report.json").read_text(encoding="utf-8"))["input"]["in_model_training_data"] is None


def test_hashes_go_into_both_parts_of_a_split_bundle(tmp_path):
    real = _real_folder(tmp_path)
    parts = models.split_bundle(_bundle(tmp_path / "model.pt"), tmp_path / "split" / "m")
    assert _tool().main([str(parts[0]), "--real", str(real)]) == 0
    for part in parts:
        metadata = json.loads(torch.load(part, map_location="cpu", weights_only=True)["metadata_json"])
        assert [r["case"] for r in metadata["training_data"]["case_hashes"]] == ["sub-a"]
    assert models.load_model(parts[1]).metadata["training_data"]["case_hashes"][0]["case"] == "sub-a"


def test_a_training_case_missing_from_the_folders_is_an_error(tmp_path, capsys):
    bundle = _bundle(tmp_path / "model.pt")
    empty = tmp_path / "other"
    empty.mkdir()
    before = bundle.read_bytes()
    assert _tool().main([str(bundle), "--real", str(empty)]) == 2
    assert "the training case(s) sub-a" in capsys.readouterr().err
    assert bundle.read_bytes() == before  # nothing half-written


def test_warm_start_chain_counts(tmp_path):
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(make_synthetic_ct()[0], str(ct))
    from LumbarSegLib.results.training_cases import hash_cases

    metadata = {"training_data": {}, "initialised_from": {"training_data": {"case_hashes": hash_cases([("x", ct)])}}}
    assert training_case_of(metadata, ct)["case"] == "x"
