"""Trabecular HU on the real labelled CTs of ../shared/data/real (skipped without them).

* Add -80 HU to the true trabecular core of each vertebra (the reference vertebra's interior, 2 mm and more
  from its labelled surface, so the cortex is untouched): the value measured in the ROI placed from the
  reference label, and in the ROI placed from the pipeline's segmentation of the CT, moves by -80 +- 8 HU:
  the automated ROI lies in trabecular bone. Segmenting the changed CT again (end to end) also changes the
  segmentation (the model sees darker marrow), so the ROI moves too; that is printed, not asserted.
* The automated 3D core (from the reference label and from the pipeline's segmentation) against the classic
  single-slice ellipse placed from the reference label: printed per vertebra (run with -s), and checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LumbarSegLib.inference import pipeline
from LumbarSegLib.measures import trabecular
from LumbarSegLib.io import images, label_maps

pytestmark = pytest.mark.slow  # the bundled model on real CTs (skipped without ../shared/data)

CASES = ("sub-verse005", "sub-verse008", "sub-verse014")  # the whole-lumbar real cases (007 lacks L4/L5)
SHIFT_HU = -80.0
TRUE_CORE_DEPTH_MM = 2.0
PIPELINE_CASES = ("sub-verse005", "sub-verse008")  # the model runs on these (keeps the suite short)
END_TO_END_CASE = "sub-verse008"


@pytest.fixture(scope="module")
def real_cases():
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"  # as conftest's shared_data
    if not all((root / f"{c}_ct.nii.gz").is_file() for c in CASES):
        pytest.skip(f"the real VerSe cases are not in {root}")
    from LumbarSegLib.inference.models import choose_model, load_model, resolve_device

    model = load_model(choose_model(None, resolve_device("cpu")))
    out = {}
    for case in CASES:
        ct = images.read_ct(root / f"{case}_ct.nii.gz")
        ref = label_maps.read_labelmap(root / f"{case}_seg-vert_msk.nii.gz")
        ref_arr = sitk.GetArrayFromImage(ref)
        hu = sitk.GetArrayFromImage(ct).astype(np.float32)
        true_core = np.zeros(hu.shape, bool)
        for label in np.unique(ref_arr[ref_arr > 0]):
            depth = ndimage.distance_transform_edt(ref_arr == label, sampling=ct.GetSpacing()[::-1])
            true_core |= depth >= TRUE_CORE_DEPTH_MM
        shifted = hu.copy()
        shifted[true_core] += SHIFT_HU
        shifted_img = sitk.GetImageFromArray(shifted)
        shifted_img.CopyInformation(ct)
        ct_f = sitk.Cast(ct, sitk.sitkFloat32)
        out[case] = {"ct": ct_f, "hu": hu, "shifted": shifted, "ref": ref_arr, "pred": None, "pred_shifted": None}
        if case in PIPELINE_CASES:
            out[case]["pred"] = sitk.GetArrayFromImage(pipeline.segment(ct_f, model=model, device="cpu").labels)
        if case == END_TO_END_CASE:
            out[case]["pred_shifted"] = sitk.GetArrayFromImage(
                pipeline.segment(shifted_img, model=model, device="cpu").labels)
    return out


def _measure(labels, hu, image):
    return trabecular.measure(labels, hu, image)


@pytest.mark.parametrize("source", ["reference", "pipeline"])
def test_adding_80_hu_less_to_the_true_core_moves_the_measurement_by_80(real_cases, source):
    moved, withheld = [], []
    for case, c in real_cases.items():
        if source == "pipeline" and c["pred"] is None:
            continue
        before = _measure(c["ref"] if source == "reference" else c["pred"], c["hu"], c["ct"])
        after = _measure(c["ref"] if source == "reference" else c["pred"], c["shifted"], c["ct"])
        for name in sorted(set(before) & set(after)):
            b, a = before[name].core, after[name].core
            if b.reason or a.reason:
                withheld.append((case, name, b.reason or a.reason))
                continue
            moved.append((case, name, a.median - b.median))
    # Every whole vertebra is measured: none of these CTs holds metal (sub-verse005's four voxels of
    # 2047-2119 HU are dense bone), so only a body cut by the field of view may be without a value.
    assert not [w for w in withheld if "cut by the field of view" not in w[2]], withheld
    print("\n".join(f"{source} {case} {name}: {d:+.1f} HU" for case, name, d in moved))
    assert len(moved) >= (8 if source == "reference" else 5), moved  # cut vertebrae have no value
    for case, name, delta in moved:
        assert abs(delta - SHIFT_HU) <= 8.0, (case, name, delta)


def test_end_to_end_on_the_changed_ct_is_reported(real_cases):
    """Not asserted to +-8 HU: the changed CT is segmented again and the segmentation itself changes."""
    c = real_cases[END_TO_END_CASE]
    before = _measure(c["pred"], c["hu"], c["ct"])
    after = _measure(c["pred_shifted"], c["shifted"], c["ct"])
    deltas = {n: after[n].core.median - before[n].core.median for n in sorted(set(before) & set(after))
              if not (before[n].core.reason or after[n].core.reason)}
    print("\n".join(f"end to end {END_TO_END_CASE} {n}: {d:+.1f} HU" for n, d in deltas.items()))
    assert deltas and all(d < 0 for d in deltas.values())  # darker marrow always reads darker


def test_the_automated_core_agrees_with_the_classic_roi_placed_from_the_reference(real_cases):
    rows = []
    for case, c in real_cases.items():
        classic = _measure(c["ref"], c["hu"], c["ct"])
        from_pred = _measure(c["pred"], c["hu"], c["ct"]) if c["pred"] is not None else {}
        for name, ref_result in classic.items():
            if ref_result.single_slice.reason or ref_result.core.reason:
                continue
            pred_core = from_pred.get(name)
            pred_median = None if pred_core is None or pred_core.core.reason else pred_core.core.median
            rows.append((case, name, ref_result.single_slice.mean, ref_result.core.median, pred_median))
    print("\ncase vertebra classic(ref) core(ref) core(pipeline)")
    for row in rows:
        print(" ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row))
    ref_diffs = np.array([core - classic for _, _, classic, core, _ in rows])
    pred_diffs = np.array([p - classic for _, _, classic, _, p in rows if p is not None])
    assert len(rows) >= 8 and len(pred_diffs) >= 5
    # Measured (see docs/bone_quality.md): within +-15 HU for two thirds of the vertebrae, not all. The single slice and
    # the 3D core sample different bone: in sub-verse014 a dense band lies at mid-height, in sub-verse008
    # L4/L5 dense subchondral bone fills the core's ends (more so in the pipeline's L5, 39 HU above the
    # slice). Every vertebra is held to +-40 HU: an ROI in cortex (+300) or disc (-100) still fails.
    for diffs in (ref_diffs, pred_diffs):
        assert np.mean(np.abs(diffs) <= 15.0) >= 0.6, diffs
        assert np.abs(diffs).max() <= 40.0, diffs
        assert np.median(np.abs(diffs)) <= 12.0, diffs
