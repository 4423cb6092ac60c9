"""``run_study``, the one public way to run a study: a file, a DICOM folder or an image in memory in, a
result folder with report.json (and its provenance) out; and no front end reaching past it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from LumbarSegLib import __version__
from LumbarSegLib.errors import InputError
from LumbarSegLib.study.runner import StudyOptions, run_study

REPO = Path(__file__).resolve().parents[1]


def small_phantom(seed=3):
    from LumbarSegLib import phantoms

    return phantoms.generate_phantom(seed, shape=(48, 48, 40), spacing=(7.0, 7.0, 7.0), fov="lumbar")


@pytest.mark.slow
def test_an_image_in_memory_and_its_file_give_the_same_result(tmp_path):
    ct, truth = small_phantom()
    in_memory = run_study(StudyOptions(input=ct, output=str(tmp_path / "memory"), reference=truth,
                                       reference_labels="verse", name="case", device="cpu", quiet=True))
    sitk.WriteImage(ct, str(tmp_path / "case.nii.gz"))
    from_file = run_study(StudyOptions(input=str(tmp_path / "case.nii.gz"), output=str(tmp_path / "file"),
                                       device="cpu", quiet=True))
    assert in_memory["found"] == from_file["found"]
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(r["outputs"]["labels"])) for r in (in_memory, from_file)]
    np.testing.assert_array_equal(*labels)
    # The image in memory was written into its result, so the folder holds what was segmented.
    assert sorted(p.name for p in (tmp_path / "memory").iterdir()) == \
        ["case_ct.nii.gz", "case_labels.nii.gz", "case_reference.nii.gz", "report.json"]
    assert in_memory["input"]["path"] == str(tmp_path / "memory" / "case_ct.nii.gz")
    assert in_memory["metrics"] is not None and from_file["metrics"] is None
    assert json.loads((tmp_path / "memory" / "report.json").read_text())["found"] == in_memory["found"]


@pytest.mark.slow
def test_report_carries_provenance(tmp_path):
    ct, _ = small_phantom()
    report = run_study(StudyOptions(input=ct, output=str(tmp_path / "out"), device="cpu", quiet=True,
                                    smoothing=0.25, stl=True))
    provenance = report["provenance"]
    assert provenance["lumbarseg_version"] == __version__ and provenance["device"] == "cpu"
    assert provenance["model"]["name"] == report["model"]["name"]
    assert provenance["model"]["sha256"] == report["model"]["sha256"]
    assert provenance["options"]["smoothing"] == 0.25 and provenance["options"]["stl"] is True
    assert provenance["warnings"] == report["messages"]
    assert "not a medical device" in provenance["notice"]


def test_an_image_in_memory_cannot_make_a_dicom_seg_or_choose_a_series(tmp_path):
    ct, _ = small_phantom()
    with pytest.raises(InputError, match="DICOM SEG references the DICOM series"):
        run_study(StudyOptions(input=ct, output=str(tmp_path / "a"), dicom_seg=True, quiet=True))
    with pytest.raises(InputError, match="--series chooses a series"):
        run_study(StudyOptions(input=ct, output=str(tmp_path / "b"), series="1.2.3", quiet=True))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_in_memory_reference_is_checked_like_a_file(tmp_path):
    ct, _ = small_phantom()
    not_labels = sitk.Cast(ct, sitk.sitkFloat32) + 0.5  # a CT with fractions, given as the reference
    with pytest.raises(InputError, match="non-integer values"):
        run_study(StudyOptions(input=ct, output=str(tmp_path / "out"), reference=not_labels, quiet=True))
    assert not (tmp_path / "out").exists()


def _private_imports_from_study(path: Path) -> list[str]:
    """Names starting with '_' that ``path`` imports from LumbarSegLib.study.*."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and "study" in node.module.split("."):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_front_end_imports_private_names_of_the_runner():
    front_ends = [REPO / "LumbarSegLib" / "cli.py", *sorted((REPO / "LumbarSegLib" / "batch").glob("*.py")),
                  *sorted((REPO / "LumbarSegLib" / "web").glob("*.py")),
                  *sorted((REPO / "LumbarSegLib" / "scene").glob("*.py"))]
    assert {str(p.relative_to(REPO)): _private_imports_from_study(p) for p in front_ends
            if _private_imports_from_study(p)} == {}
    # The Slicer module (loaded, not read) binds nothing of the study layer: it reaches it through the scene.
    from conftest import load_module

    module = load_module()
    assert [name for name, value in vars(module).items()
            if (getattr(value, "__module__", None) or getattr(value, "__name__", "")).startswith("LumbarSegLib.study")] == []
