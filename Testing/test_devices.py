"""Device choice and the GPU out-of-memory fallback.

The fallback is exercised with a real failure: a network wrapper whose forward pass raises PyTorch's own
``torch.cuda.OutOfMemoryError`` whenever it runs off the CPU (as CUDA raises it when a GPU is full). This
machine has no GPU, so the first attempt runs on PyTorch's ``meta`` device - a real non-CPU device that
allocates nothing - and the rerun on the CPU uses the real bundled networks.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LumbarSegLib.inference import pipeline
from LumbarSegLib.errors import ModelError
from LumbarSegLib.inference.models import load_model, resolve_device


class OutOfMemoryOffCPU(torch.nn.Module):
    """Wraps a network: on any device but the CPU its forward pass raises CUDA's out-of-memory error."""

    def __init__(self, inner: torch.nn.Module, always: bool = False):
        super().__init__()
        self.inner = inner
        self.always = always
        self.calls: list[str] = []
        self._record = self.calls.append  # shared with copies of this module (a bound builtin is not deep-copied)

    def forward(self, x):
        self._record(x.device.type)
        if self.always or x.device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8.00 GiB "
                                              "total capacity)")
        return self.inner(x)


def test_auto_device_is_cuda_when_present_else_cpu_never_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch.backends, "mps"):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # even on a Mac with MPS
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(torch.device("meta")) == torch.device("meta")  # a torch.device is taken as given


def test_explicit_devices_that_are_absent_are_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ModelError, match="Unknown device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.slow
def test_gpu_out_of_memory_reruns_on_cpu_and_says_so(synthetic_ct):
    ct, _ = synthetic_ct
    reference = pipeline.segment(ct, model=load_model(), device="cpu")

    model = load_model()
    localizer = OutOfMemoryOffCPU(model.localizer)
    model.localizer = localizer
    stages = []
    result = pipeline.segment(ct, model=model, device=torch.device("meta"),
                              progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert localizer.calls == ["meta", "cpu"]  # failed off the CPU, then ran on it
    assert result.device == "cpu"
    assert "ran out of memory" in result.messages[0] and "CPU" in result.messages[0]
    assert "20.00 GiB" in result.messages[0]  # the original error is quoted
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(result.labels),
                                  sitk.GetArrayViewFromImage(reference.labels))
    assert result.found == reference.found
    assert stages.count(("load", 0.0)) == 2 and stages.count(("localize", 0.0)) == 2  # the rerun is reported
    # The caller's model stayed on the CPU with its weights (a copy went to the other device).
    assert next(model.xunet.parameters()).device.type == "cpu"


def test_out_of_memory_on_the_cpu_is_not_retried(synthetic_ct):
    from LumbarSegLib.scene.run import friendly_error

    ct, _ = synthetic_ct
    model = load_model()
    model.localizer = OutOfMemoryOffCPU(model.localizer, always=True)
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        pipeline.segment(ct, model=model, device="cpu")
    assert model.localizer.calls == ["cpu"]
    assert "Out of memory" in friendly_error(info.value, "cpu")


@pytest.mark.slow
def test_result_records_the_device_it_ran_on(synthetic_ct):
    result = pipeline.segment(synthetic_ct[0], model=load_model(), device="cpu")
    assert result.device == "cpu"
