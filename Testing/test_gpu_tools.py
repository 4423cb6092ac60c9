"""tools/train_gpu.sh run tiny on the CPU end to end, and tools/pack_gpu_carry.py's data conversion.

The GPU machine itself is not needed: the script's CUDA-only parts (bfloat16 autocast, loader workers,
networks one after the other) are exercised on the CPU in test_training.py; here the whole command runs
with DEVICE=cpu and a one-minute budget (about a minute on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib.inference.models import load_model

REPO = Path(__file__).resolve().parents[1]


def _load_pack_tool():
    spec = importlib.util.spec_from_file_location("pack_gpu_carry", REPO / "tools" / "pack_gpu_carry.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    return pack


@pytest.mark.slow
def test_train_gpu_script_tiny_on_the_cpu(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash is not available")
    out = tmp_path / "out"
    env = dict(os.environ, DEVICE="cpu", CONFIG="cpu", MINUTES="1", PHANTOMS="2", REAL_DIRS="",
               CARRY=str(tmp_path / "no_carry"), OUT=str(out), WORK=str(tmp_path / "work"),
               EXTRA_ARGS="--max-steps 2 --jobs 2")
    proc = subprocess.run(["bash", str(REPO / "tools" / "train_gpu.sh")], cwd=tmp_path, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["lumbarseg_cpu.localizer.pt", "lumbarseg_cpu.summary.json", "lumbarseg_cpu.xunet.pt",
                     "train_gpu.log"]
    log = (out / "train_gpu.log").read_text(encoding="utf-8")
    for phase in ("budget 1 min, device cpu", "data ready", "training both networks for", "done:"):
        assert phase in log, phase
    model = load_model(out / "lumbarseg_cpu.localizer.pt")
    assert model.trained and model.config.name == "cpu" and len(model.files) == 2
    meta = model.metadata
    assert meta["options"]["device"] == "cpu" and meta["training_data"]["phantoms"]["count"] == 2
    # --max-steps 2 caps the steps; the 1-minute budget may stop a loaded machine earlier (no timed assertion).
    assert 1 <= meta["networks"]["xunet"]["steps"] <= 2 and meta["finished"]
    assert any("tools/train_gpu.sh" in n for n in meta["notes"])
    summary = json.loads((out / "lumbarseg_cpu.summary.json").read_text(encoding="utf-8"))
    assert summary["model"]["files"] == ["lumbarseg_cpu.localizer.pt", "lumbarseg_cpu.xunet.pt"]


def test_pack_gpu_carry_converts_real_data_losslessly(tmp_path):
    pack = _load_pack_tool()
    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    ct = sitk.GetImageFromArray(np.array([[[-1000.4, 40.2], [700.6, 1999.0]]] * 3, np.float32))
    ct.SetSpacing((0.8, 0.9, 2.0))
    ct.SetOrigin((1.0, 2.0, 3.0))
    ct.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    seg = sitk.GetImageFromArray(np.array([[[0, 20], [24, 28]]] * 3, np.float64))
    seg.CopyInformation(ct)
    sitk.WriteImage(ct, str(data / "real" / "sub-a_ct.nii.gz"))
    sitk.WriteImage(seg, str(data / "real" / "sub-a_seg-vert_msk.nii.gz"))
    pack.pack_data(data, tmp_path / "carry")
    ct2 = sitk.ReadImage(str(tmp_path / "carry" / "real" / "sub-a_ct.nii.gz"))
    seg2 = sitk.ReadImage(str(tmp_path / "carry" / "real" / "sub-a_seg-vert_msk.nii.gz"))
    assert ct2.GetPixelID() == sitk.sitkInt16 and seg2.GetPixelID() == sitk.sitkUInt8
    for a, b in ((ct, ct2), (seg, seg2)):
        assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
        assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.abs(sitk.GetArrayFromImage(ct2) - sitk.GetArrayFromImage(ct)).max() <= 0.5
    assert np.array_equal(sitk.GetArrayFromImage(seg2), sitk.GetArrayFromImage(seg))


def test_lzma_recompressed_wheel_installs_with_pip_no_index(tmp_path):
    """The carried wheel is re-compressed with LZMA to save space; pip must still install it offline."""
    import base64
    import hashlib
    import sys
    import zipfile

    files = {"probe_pkg/__init__.py": b"VALUE = 42\n" + b"# padding\n" * 2000,
             "probe_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: probe-pkg\nVersion: 1.0\n",
             "probe_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                              b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + "probe_pkg-1.0.dist-info/RECORD,,\n"
    wheel = tmp_path / "probe_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("probe_pkg-1.0.dist-info/RECORD", record)
    _load_pack_tool().recompress_wheel(wheel)
    with zipfile.ZipFile(wheel) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_LZMA}
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--target", str(target), str(wheel)], capture_output=True,
                          encoding="utf-8", errors="replace")
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([sys.executable, "-c", "import probe_pkg; print(probe_pkg.VALUE)"], capture_output=True,
                         encoding="utf-8", errors="replace", env=dict(os.environ, PYTHONPATH=str(target)))
    assert out.stdout.strip() == "42"
