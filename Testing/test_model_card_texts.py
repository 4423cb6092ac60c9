"""Model cards and report.json say what is true of the model and keep no machine's paths (issue 15,
items 14 and 16): a card of a model that trained on real CT never says "synthetic phantoms only"; paths of
the training machine become names; the SHA-256 is kept whole."""

from __future__ import annotations

import json

import torch

from LumbarSegLib import cli
from LumbarSegLib.inference import models
from LumbarSegLib.results.machine_paths import name_only, names_not_paths
from LumbarSegLib.inference.networks import build_networks
from conftest import TINY  # shared test helpers

TRAINER = "/home/trainer/runs"
METADATA = {
    "training_data": {
        "real": {"cases": ["sub-verse005", "sub-verse008"], "dirs": [f"{TRAINER}/data/real"], "views_per_case": 4,
                 "sample_share": 0.5, "left_out": []},
        "data_dirs": {f"{TRAINER}/data/extra": 3},
        "phantoms": {"count": 2, "seeds": [0, 1], "fov_counts": {"abdomen": 2}, "spacing_xy_mm": [1.6, 2.4],
                     "spacing_z_mm": [1.0, 3.0], "folder": f"{TRAINER}/cache/phantoms_seed0"},
        "cache": f"{TRAINER}/cache", "train_cases": 4, "validation_cases": 1,
    },
    "command": f"lumbarseg train --real {TRAINER}/data/real --cache {TRAINER}/cache -o {TRAINER}/m.pt",
    "initialised_from": {"path": f"{TRAINER}/phase1.pt", "command": f"lumbarseg train -o {TRAINER}/phase1.pt"},
}


def _bundle(path):
    torch.manual_seed(0)
    loc, xu = build_networks(TINY)
    return models.save_model(path, TINY, loc, xu, METADATA)


def test_absolute_paths_become_names():
    assert name_only(f"--real {TRAINER}/data/real -o C:\\Users\\bob\\m.pt") == "--real real -o m.pt"
    for kept in ("relative/folder", "L1-L5 at 1/2 mm", "https://example.org/a/b", "file:///x/y"):
        assert name_only(kept) == kept
    assert names_not_paths(METADATA["training_data"]["data_dirs"]) == {"extra": 3}


def test_card_of_a_model_trained_on_real_ct_without_loo(tmp_path, monkeypatch):
    from LumbarSegLib import phantoms
    from LumbarSegLib.training import evaluation

    monkeypatch.setattr(phantoms, "load_shape_library", lambda *a, **k: None)
    path = _bundle(tmp_path / "real_trained.pt")
    card = evaluation.evaluate_model(path, n=1, seed=evaluation.EVAL_SEED_START, fovs=["thoracic"],
                                     spacing=(6.0, 6.0, 6.0), real_ct=False, log=lambda s: None)
    card["command"] = f"lumbarseg evaluate-model --model {path} -o {tmp_path}/card.json"
    evaluation.write_card(card, tmp_path / "card.json", tmp_path / "card.md")
    md = (tmp_path / "card.md").read_text(encoding="utf-8")
    text = md + (tmp_path / "card.json").read_text(encoding="utf-8")
    assert "synthetic phantoms only" not in md.replace("evaluated here on synthetic phantoms only", "")
    assert "Trained on synthetic phantoms and 2 real CTs" in md and "--loo" in md
    assert "No real CT was used for training" not in md
    assert TRAINER not in text and str(tmp_path) not in text  # names, not paths
    assert "`real`" in md and "lumbarseg evaluate-model --model real_trained.pt" in md
    assert f"SHA-256 `{models.files_sha256([path])}`" in md  # whole, 64 hex digits


def test_report_json_keeps_no_training_paths_and_the_whole_sha256(tmp_path, monkeypatch, ct_file):
    path = _bundle(tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["segment", ct_file.name, "-o", "out", "--model", "model.pt", "-q"]) == 0
    text = (tmp_path / "out" / "report.json").read_text(encoding="utf-8")
    report = json.loads(text)
    assert TRAINER not in text
    assert report["model"]["metadata"]["command"] == "lumbarseg train --real real --cache cache -o m.pt"
    assert report["model"]["sha256"] == models.files_sha256([path]) and len(report["model"]["sha256"]) == 64
    assert report["input"]["path"] == ct_file.name and report["model"]["path"] == "model.pt"  # as the user typed


def test_a_shipped_model_is_named_inside_the_installation():
    path = models.default_model_path()
    if not path.is_file():
        import pytest

        pytest.skip("bundled cpu model not present")
    assert models.load_model(path).describe()["path"] == "Resources/Models/lumbarseg_cpu.pt"
