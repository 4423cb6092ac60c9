"""A broken or crafted model fails fast and clearly: configuration ranges are checked before any network is
built, NaN weights are refused when the model is loaded, and non-finite network outputs are an error, never
"no lumbar spine found"."""

from __future__ import annotations

import json

import pytest
import torch

from LumbarSegLib.inference import models, pipeline
from LumbarSegLib.cli import main
from LumbarSegLib.errors import ModelError
from LumbarSegLib.inference.networks import CONFIGS, ModelConfig, build_networks

from conftest import TINY
from conftest import small_ct


def _crafted_bundle(path, **config_changes):
    """A bundle file whose config is TINY with ``config_changes`` (weights of TINY, never built from it)."""
    torch.manual_seed(0)
    loc, xu = build_networks(TINY)
    models.save_model(path, TINY, loc, xu)
    bundle = torch.load(path, weights_only=True)
    bundle["config"] = {**bundle["config"], **config_changes}
    torch.save(bundle, path)
    return path


@pytest.mark.parametrize("changes, named", [
    ({"localizer_channels": 10 ** 6}, "localizer_channels"),
    ({"xunet_base": 3}, "xunet_base"),
    ({"localizer_levels": 0}, "localizer_levels"),
    ({"localizer_input": [4096, 4096, 4096]}, "localizer_input"),
    ({"xunet_input": [64, 64]}, "xunet_input"),
    ({"window_width": -5.0}, "window_width"),
    ({"context_classes": ["lungs"]}, "context_classes"),
    ({"localizer_channels": 256, "localizer_input": [256, 256, 256]}, "finest feature map"),
    ({"depth": 3}, "unknown keys: depth"),
])
def test_absurd_configs_fail_before_any_network_is_built(tmp_path, monkeypatch, changes, named):
    path = _crafted_bundle(tmp_path / "crafted.pt", **changes)

    def never(config):  # building a network of a crafted size is what took minutes and gigabytes
        raise AssertionError(f"networks were built for {config}")

    monkeypatch.setattr(models, "build_networks", never)
    with pytest.raises(ModelError, match=named) as caught:
        models.load_model(path)
    assert str(path) in str(caught.value)


def test_cli_reports_an_absurd_config_in_one_line(tmp_path, ct_file, capsys):
    path = _crafted_bundle(tmp_path / "crafted.pt", localizer_input=[4096, 4096, 4096])
    assert main(["segment", str(ct_file), "-o", str(tmp_path / "out"), "--model", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "lumbarseg: error:" in err and "localizer_input" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_shipped_configs_are_in_range():
    for config in CONFIGS.values():
        assert config.range_problem() is None
        assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def _nan_model():
    torch.manual_seed(0)
    loc, xu = build_networks(CONFIGS["cpu"])
    with torch.no_grad():
        next(loc.parameters()).fill_(float("nan"))
    return loc, xu


def test_nan_network_output_is_an_error_not_an_empty_result():
    loc, xu = _nan_model()
    model = models.LumbarSegModel(CONFIGS["cpu"], loc.eval(), xu.eval(), trained=True)
    with pytest.raises(ModelError, match="localizer network produced .* not numbers"):
        pipeline.segment(small_ct(), model=model, device="cpu")


def test_nan_weights_are_refused_when_the_model_is_loaded(tmp_path, ct_file, capsys):
    loc, xu = _nan_model()
    path = models.save_model(tmp_path / "nan.pt", CONFIGS["cpu"], loc, xu)
    with pytest.raises(ModelError, match="not numbers"):
        models.load_model(path)
    assert main(["segment", str(ct_file), "-o", str(tmp_path / "out"), "--model", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "not numbers (NaN or infinite)" in err and "No lumbar spine" not in err
