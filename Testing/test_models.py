"""Model files: single and split bundles, the shipped-model registry and the default choice by device."""

from __future__ import annotations

import json

import pytest
import torch

from LumbarSegLib import cli
from LumbarSegLib.inference import models
from LumbarSegLib.errors import ModelError
from LumbarSegLib.inference.networks import build_networks
from conftest import TINY  # noqa: E402  shared test helpers

def _bundle(path, seed=0, note="a"):
    torch.manual_seed(seed)
    loc, xu = build_networks(TINY)
    return models.save_model(path, TINY, loc, xu, {"note": note}), loc, xu


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_split_bundle_loads_from_either_part_or_its_stem(tmp_path):
    single, _, _ = _bundle(tmp_path / "m.pt")
    whole = models.load_model(single)
    parts = models.split_bundle(single, tmp_path / "split" / "m")
    assert [p.name for p in parts] == ["m.localizer.pt", "m.xunet.pt"]
    assert all(p.stat().st_size < single.stat().st_size for p in parts)
    for path in (parts[0], parts[1], tmp_path / "split" / "m.pt"):
        model = models.load_model(path)
        assert model.trained and model.config == TINY and model.metadata == {"note": "a"}
        assert model.files == parts
        assert _same_weights(model.localizer, whole.localizer) and _same_weights(model.xunet, whole.xunet)
    described = models.load_model(parts[1]).describe()
    assert described["files"] == ["m.localizer.pt", "m.xunet.pt"] and described["name"] is None
    assert described["bytes"] == sum(p.stat().st_size for p in parts)
    assert described["sha256"] == models.files_sha256(parts)
    assert whole.describe()["sha256"] == models.files_sha256([single])


def test_split_parts_of_different_models_or_a_missing_part_are_refused(tmp_path):
    a, _, _ = _bundle(tmp_path / "a.pt", seed=0)
    b, _, _ = _bundle(tmp_path / "b.pt", seed=1)
    pa = models.split_bundle(a, tmp_path / "mix" / "m")
    pb = models.split_bundle(b, tmp_path / "other" / "m")
    pa[1].write_bytes(pb[1].read_bytes())  # the XUNet part of another model
    with pytest.raises(ModelError, match="two different models"):
        models.load_model(pa[0])
    pb[0].unlink()
    with pytest.raises(ModelError, match="m.localizer.pt is missing"):
        models.load_model(pb[1])


def test_shipped_models_by_name_and_default_by_device(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "RESOURCES_DIR", tmp_path)
    cpu, _, _ = _bundle(tmp_path / "lumbarseg_cpu.pt", seed=0, note="cpu")
    assert models.choose_model("cpu", torch.device("cpu")) == cpu
    assert models.choose_model(None, torch.device("cpu")) is None  # load_model's default: the cpu model
    assert models.choose_model(None, torch.device("cuda")) is None  # no paper model shipped: cpu on CUDA too
    with pytest.raises(ModelError, match="'paper' model is not installed.*installed: cpu"):
        models.choose_model("paper", torch.device("cpu"))
    assert models.choose_model(str(tmp_path / "mine.pt"), torch.device("cpu")) == tmp_path / "mine.pt"

    paper, _, _ = _bundle(tmp_path / "full.pt", seed=1, note="paper")
    models.split_bundle(paper, tmp_path / "lumbarseg_paper")
    chosen = models.choose_model(None, torch.device("cuda"))
    assert chosen == tmp_path / "lumbarseg_paper.localizer.pt"
    model = models.load_model(chosen)
    assert model.name == "paper" and model.metadata["note"] == "paper"
    assert models.choose_model(None, torch.device("cpu")) is None
    assert models.load_model(cpu).name == "cpu"
    assert models.load_model(models.choose_model("paper", torch.device("cpu"))).describe()["name"] == "paper"


@pytest.mark.slow
def test_report_names_the_model_that_ran(capsys, ct_file, tmp_path):
    path = models.default_model_path()
    if not path.is_file():
        pytest.skip("bundled cpu model not present")
    rc = cli.main(["segment", str(ct_file), "-o", str(tmp_path / "out"), "--device", "cpu", "--model", "cpu"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    m = report["model"]
    assert m["name"] == "cpu" and m["files"] == [path.name] and m["config"]["name"] == "cpu"
    assert m["sha256"] == models.files_sha256([path]) and m["trained"]


def test_unknown_or_missing_shipped_model_is_a_clean_error(capsys, ct_file, tmp_path):
    if models.shipped_model_path("paper") is not None:
        pytest.skip("the paper model is installed here")
    rc = cli.main(["segment", str(ct_file), "-o", str(tmp_path / "out"), "--device", "cpu", "--model", "paper"])
    err = capsys.readouterr().err
    assert rc == 2 and "'paper' model is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
