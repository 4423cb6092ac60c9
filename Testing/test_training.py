"""Training data, targets, augmentation, the train/resume loop, evaluation bookkeeping, the bundled model.

Fast (a few seconds each): tiny stand-in phantoms (stacked boxes with VerSe codes) and a tiny network
configuration; the real phantom generator and the 'cpu' networks are exercised by the bundled model's
own training (tools/train_bundled.sh).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from LumbarSegLib import cli, training
from LumbarSegLib.inference import preprocess
from LumbarSegLib.io import label_maps
from LumbarSegLib.errors import InputError
from LumbarSegLib.training import evaluation
from LumbarSegLib.training.losses import dice_ce_loss
from LumbarSegLib.inference.models import default_model_path, load_model
from LumbarSegLib.inference.networks import CONFIGS
from conftest import TINY  # shared test helpers



def standin_phantom(codes=(18, 19, 20, 21, 22, 23, 24, 26), orientation="LPS", spacing=(4.0, 4.0, 4.0)):
    """A CT with a 'spine' of bone boxes, one per VerSe code, superior (larger z in LPS) first."""
    nz = 4 + 6 * len(codes)
    ct = np.full((nz, 24, 24), -1000, np.int16)
    ct[:, 4:20, 4:20] = 40  # body
    lab = np.zeros_like(ct, dtype=np.uint8)
    z = 2
    for code in reversed(codes):  # inferior first
        lab[z:z + 5, 12:17, 9:15] = code
        ct[z:z + 5, 12:17, 9:15] = 700
        z += 6
    images = []
    for arr in (ct, lab):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetOrigin((-40.0, -30.0, 100.0))
        images.append(sitk.DICOMOrient(img, orientation))
    return images[0], images[1]


def write_case(folder, stem, codes=(18, 19, 20, 21, 22, 23, 24, 26), seg_stem=None, seg_folder=None,
               orientation="RAS"):
    ct, lab = standin_phantom(codes, orientation)
    folder.mkdir(parents=True, exist_ok=True)
    (seg_folder or folder).mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(folder / f"{stem}_ct.nii.gz"))
    sitk.WriteImage(lab, str((seg_folder or folder) / f"{seg_stem or stem + '_seg-vert'}_msk.nii.gz"))


def test_finds_flat_nested_and_entity_layouts(tmp_path):
    write_case(tmp_path, "sub-a")
    write_case(tmp_path / "rawdata" / "sub-b", "sub-b", seg_folder=tmp_path / "derivatives" / "sub-b")
    write_case(tmp_path / "x", "sub-c_label-22", seg_stem="sub-c_seg-vert_label-22")
    (tmp_path / "sub-d_ct.nii.gz").write_bytes(b"")  # no mask: ignored
    cases = training.find_cases(tmp_path)
    by_key = {c.ct.name: c.seg for c in cases}
    assert len(cases) == 3
    assert by_key["sub-a_ct.nii.gz"].name == "sub-a_seg-vert_msk.nii.gz"
    assert by_key["sub-b_ct.nii.gz"] == tmp_path / "derivatives" / "sub-b" / "sub-b_seg-vert_msk.nii.gz"
    assert by_key["sub-c_label-22_ct.nii.gz"].name == "sub-c_seg-vert_label-22_msk.nii.gz"
    assert len({c.case_id for c in cases}) == 3


def test_verse_label_mapping():
    codes = np.array([0, 17, 19, 20, 21, 22, 23, 24, 25, 26, 28, 300, -5], np.int16)
    assert label_maps.to_internal_labels(codes, "verse").tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0]


def test_heatmap_target_peaks_on_lumbar_spine_and_is_zero_without_it():
    config = CONFIGS["cpu"]
    ct, lab = standin_phantom()
    data = training.precompute_case(ct, lab, config, n_crops=2, seed=1)
    heat = data["loc_y"].astype(np.float32)
    assert heat.shape == config.localizer_input[::-1]
    assert heat.max() == pytest.approx(1.0, abs=1e-3)
    # The bright region lies on the lumbar boxes (z between L5 and L1), not on T11/T12 or the sacrum.
    lab_c = label_maps.to_internal_labels(sitk.GetArrayFromImage(preprocess.to_canonical(lab)), "verse")
    zs = np.flatnonzero(lab_c.any(axis=(1, 2)))
    nz = lab_c.shape[0]
    zpeak = np.flatnonzero((heat >= 0.99).any(axis=(1, 2)))
    scale = heat.shape[0] / nz
    assert zpeak.min() >= (zs[0] - 1) * scale and zpeak.max() <= (zs[-1] + 2) * scale
    assert bool(data["positive"]) and data["present"].tolist() == [1, 2, 3, 4, 5]
    # Crop 0 is the inference crop rule on the target: it contains all five vertebrae, L1 above L5, with the
    # thoracic vertebrae (context class 6) above and the sacrum (7) below.
    y0 = data["crop_y"][0]
    assert set(np.unique(y0).tolist()) == {0, 1, 2, 3, 4, 5, 6, 7}
    zc = {k: np.argwhere(y0 == k)[:, 0].mean() for k in range(1, 8)}
    assert zc[6] > zc[1] > zc[2] > zc[3] > zc[4] > zc[5] > zc[7]

    ct_t, lab_t = standin_phantom(codes=(14, 15, 16, 17, 18, 19))
    neg = training.precompute_case(ct_t, lab_t, config, n_crops=2, seed=1)
    assert not neg["loc_y"].any() and not bool(neg["positive"])
    assert set(np.unique(neg["crop_y"]).tolist()) <= {0, 6}  # thoracic vertebrae only: no L1-L5 target
    # The negative crop sits on the lowest visible vertebrae (where a localizer would fire).
    lo, hi = neg["boxes"][0]
    assert lo[2] == 0 and np.all(hi > lo)


def test_training_labels_context_classes_and_ignored_unlabelled_neighbours():
    # A VerSe crop labelling only L2-L4: bone of the unlabelled L1 above and L5 below is ignored, the
    # rest of the image (soft tissue, and bone beside the column such as a rib) stays background.
    z = np.zeros((40, 60, 60), np.int16)
    hu = np.full(z.shape, 40.0)
    for i, code in enumerate((24, 23, 22, 21, 20)):  # L5 (inferior, small z) .. L1
        hu[2 + 8 * i:8 + 8 * i, 26:34, 26:34] = 600
        if code in (21, 22, 23):
            z[2 + 8 * i:8 + 8 * i, 26:34, 26:34] = code
    hu[34:38, 0:2, 0:2] = 600  # a rib far off the column, at L1 height
    lab = training.data.training_labels(z, hu, (1.0, 1.0, 1.0), ("thoracic", "caudal"))
    assert lab[20, 30, 30] == 3 and lab[12, 30, 30] == 4
    assert lab[35, 30, 30] == training.data.IGNORE and lab[4, 30, 30] == training.data.IGNORE
    assert lab[35, 0, 0] == 0 and lab[20, 30, 2] == 0
    # Fully labelled neighbours become the context classes; a configuration without them keeps background.
    z2 = z.copy()
    z2[34:38, 26:34, 26:34], z2[2:8, 26:34, 26:34] = 19, 26  # T12 above, sacrum below
    lab2 = training.data.training_labels(z2, hu, (1.0, 1.0, 1.0), ("thoracic", "caudal"))
    assert lab2[35, 30, 30] == 6 and lab2[4, 30, 30] == 7
    assert training.data.training_labels(z2, hu, (1.0, 1.0, 1.0), ())[35, 30, 30] == 0


def test_losses_leave_ignored_voxels_out():
    from LumbarSegLib.training.losses import dice_per_label

    logits = torch.randn(1, 8, 4, 6, 6)
    labels = torch.randint(0, 8, (1, 4, 6, 6))
    ignored = labels.clone()
    ignored[:, :2] = training.data.IGNORE
    other = logits.clone()
    other[:, :, :2] = torch.randn_like(other[:, :, :2]) * 10  # predictions there must not matter
    assert torch.isclose(dice_ce_loss(logits, ignored), dice_ce_loss(other, ignored))
    assert not torch.isclose(dice_ce_loss(logits, labels), dice_ce_loss(other, labels))
    ref = np.array([1, 1, training.data.IGNORE, 2])
    assert dice_per_label(np.array([1, 1, 1, 2]), ref) == {1: 1.0, 2: 1.0}


@pytest.mark.slow
def test_real_case_views_re_image_the_case_and_leave_out_works(tmp_path, monkeypatch):
    from LumbarSegLib.training import real_views

    data = tmp_path / "real"
    write_case(data, "sub-r1", orientation="PIR")
    write_case(data, "sub-r2")
    cases = training.find_cases(data)
    views = training.data.real_case_views(cases, 3)
    assert [v.case_id for v in views[:3]] == ["sub-r1~view000", "sub-r1~view001", "sub-r1~view002"]
    assert {v.source for v in views} == {"sub-r1", "sub-r2"}
    ct0, seg0 = real_views.view_of(str(views[0].ct), str(views[0].seg), 0)
    ct1, seg1 = real_views.view_of(str(views[1].ct), str(views[1].seg), 1)
    again, _ = real_views.view_of(str(views[1].ct), str(views[1].seg), 1)
    assert ct0.GetSize() != ct1.GetSize() or ct0.GetSpacing() != ct1.GetSpacing()
    assert np.array_equal(sitk.GetArrayViewFromImage(ct1), sitk.GetArrayViewFromImage(again))  # deterministic
    # The view keeps labels on its own anatomy: lumbar voxels are bone in the re-imaged CT.
    a, s = sitk.GetArrayViewFromImage(ct1), sitk.GetArrayViewFromImage(seg1)
    assert (s == 22).any() and np.median(a[s == 22]) > 300
    with pytest.raises(InputError, match="no such real case"):
        cli_main_raise(["train", "--real", str(data), "--leave-out", "sub-zz", "-o", str(tmp_path / "m.pt"),
                        "--minutes", "1"])
    with pytest.raises(InputError, match="needs --real"):
        cli_main_raise(["train", "--phantoms", "1", "--leave-out", "sub-r1", "-o", str(tmp_path / "m.pt"),
                        "--minutes", "1"])


def cli_main_raise(argv):
    """Run a subcommand's handler directly so that its InputError reaches the test."""
    args = cli.build_parser().parse_args(argv)
    return args.func(args)


def test_augmentation_keeps_labels_aligned_and_z_order():
    rng = np.random.default_rng(0)
    img = torch.zeros(1, 1, 32, 24, 24)
    lab = torch.zeros(1, 1, 32, 24, 24, dtype=torch.long)
    img[..., 18:26, 8:16, 8:16] = 1.0
    lab[..., 18:26, 8:16, 8:16] = 1  # superior cube = L1
    img[..., 6:14, 8:16, 8:16] = 1.0
    lab[..., 6:14, 8:16, 8:16] = 2  # inferior cube = L2
    for _ in range(8):
        grid = training.random_grid(img.shape[2:], rng, elastic=0.015)
        im2 = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        lb2 = F.grid_sample(lab.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).long()
        fg_img, fg_lab = (im2 > 0.5)[0, 0], (lb2 > 0)[0, 0]
        dice = 2 * (fg_img & fg_lab).sum() / (fg_img.sum() + fg_lab.sum())
        assert dice > 0.85
        z1 = torch.nonzero(lb2[0, 0] == 1)[:, 0].float().mean()
        z2 = torch.nonzero(lb2[0, 0] == 2)[:, 0].float().mean()
        assert z1 > z2  # no flip along z: L1 stays above L2
    # augment_pair returns a label tensor of the same shape and only known labels; intensities in [0, 1]
    x, y = training.augment_pair(img, lab, rng, labels=True, p_spatial=1.0)
    assert y.shape == lab.shape and set(torch.unique(y).tolist()) <= {0, 1, 2}
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_losses_behave():
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6, 2:6] = 3
    perfect = F.one_hot(labels, 6).permute(0, 4, 1, 2, 3).float() * 20
    assert training.dice_ce_loss(perfect, labels) < 0.05
    assert training.dice_ce_loss(torch.zeros(1, 6, 8, 8, 8), labels) > 1.0
    t = torch.zeros(1, 1, 4, 4, 4)
    assert training.localizer_loss(t, t) == 0


def _tiny_cli(monkeypatch):
    monkeypatch.setitem(CONFIGS, "tiny", TINY)


@pytest.mark.slow
def test_two_step_training_writes_loadable_bundle_and_resumes(tmp_path, monkeypatch):
    _tiny_cli(monkeypatch)
    data = tmp_path / "data"
    write_case(data, "sub-001")
    write_case(data, "sub-002", codes=(14, 15, 16, 17, 18, 19), orientation="LPS")  # thoracic-only negative
    write_case(data, "sub-003", orientation="LAS")
    out = tmp_path / "out" / "model.pt"
    common = [str(data), "-o", str(out), "--config", "tiny", "--cache", str(tmp_path / "cache"),
              "--checkpoint-dir", str(tmp_path / "ckpt"), "--sequential", "--jobs", "1", "--val-fraction", "0.34",
              "--crops", "2"]
    assert cli.main(["train", *common, "--max-steps", "2", "--epochs", "5"]) == 0
    model = load_model(out)
    assert model.trained and model.config == TINY
    meta = model.metadata
    assert meta["training_data"]["cases"] == 3 and meta["training_data"]["without_lumbar"] == 1
    assert meta["networks"]["xunet"]["steps"] == 2 and meta["finished"]
    ckpt = tmp_path / "ckpt" / "model.xunet.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain data only
    assert state["step"] == 2 and state["done"]
    assert list((tmp_path / "cache" / "precomputed").glob("*.npz"))

    # Resume with more data (a second folder) and a larger step budget: the step count continues.
    write_case(tmp_path / "more", "sub-101", orientation="LPI")
    assert cli.main(["train", str(tmp_path / "more"), *common, "--max-steps", "4", "--epochs", "5",
                          "--resume", str(ckpt), "--spatial-p", "0.3", "--note", "continued"]) == 0
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["step"] == 4
    meta = load_model(out).metadata
    assert meta["networks"]["localizer"]["steps"] == 4 and meta["notes"] == ["continued"]
    assert meta["training_data"]["cases"] == 4 and len(meta["training_data"]["data_dirs"]) == 2

    # Warm start from a model bundle (fresh optimisers): the starting model's provenance is kept.
    out2 = tmp_path / "out" / "model2.pt"
    assert cli.main(["train", str(data), "-o", str(out2), "--config", "tiny", "--cache", str(tmp_path / "cache"),
                          "--checkpoint-dir", str(tmp_path / "ckpt2"), "--sequential", "--jobs", "1", "--crops", "2",
                          "--max-steps", "1", "--epochs", "1", "--resume", str(out)]) == 0
    meta2 = load_model(out2).metadata
    assert meta2["networks"]["xunet"]["steps"] == 1
    assert meta2["initialised_from"]["networks"]["xunet"]["steps"] == 4


def test_seed_ranges_are_disjoint(tmp_path):
    with pytest.raises(InputError):
        training.generate_phantoms(tmp_path, 2, training.EVAL_SEED_START - 1)
    with pytest.raises(InputError):
        evaluation.evaluate_model(None, n=1, seed=5)
    assert evaluation.EVAL_SEED_START == training.EVAL_SEED_START
    fov, spacing = training.phantom_spec(3)
    assert fov in training.TRAIN_FOV_PROBS and 1.6 <= spacing[0] <= 2.4
    assert training.phantom_spec(3) == (fov, spacing)  # deterministic


def test_identity_analysis_counts_wrong_invented_and_missed():
    ref = np.zeros((30, 4, 4), np.uint8)
    ref[0:10] = 3
    ref[10:20] = 2
    pred = np.zeros_like(ref)
    pred[0:10] = 3  # correct
    pred[10:20] = 1  # true L2 called L1: wrong identity
    pred[22:28] = 5  # L5 where the truth has nothing: invented, no overlap
    r = evaluation.identity_analysis(pred, ref)
    assert r["correct"] == ["L3"] and r["wrong"] == ["L1->L2"]
    assert r["invented"] == ["L1", "L5"] and r["missed"] == ["L2"] and r["no_overlap"] == ["L5"]


def test_evaluation_card_on_a_tiny_model(tmp_path, monkeypatch):
    from LumbarSegLib import phantoms
    from LumbarSegLib.inference.models import save_model
    from LumbarSegLib.inference.networks import build_networks

    loc, xu = build_networks(TINY)
    path = save_model(tmp_path / "tiny.pt", TINY, loc, xu, {"training_data": {"cases": 0}})
    monkeypatch.setattr(phantoms, "load_shape_library", lambda *a, **k: None)
    card = evaluation.evaluate_model(path, n=1, seed=evaluation.EVAL_SEED_START, fovs=["thoracic"],
                                     spacing=(6.0, 6.0, 6.0), real_ct=False, log=lambda s: None)
    assert card["evaluation"]["seeds"] == [100000, 100000]
    assert set(card["targets"]) == {"phantom_mean_dsc", "phantom_identity"}  # real targets only where measured
    evaluation.write_card(card, tmp_path / "card.json", tmp_path / "card.md")
    assert json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))["model"]["file"] == "tiny.pt"
    assert "Held-out evaluation" in (tmp_path / "card.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_leave_one_real_case_out_scores_only_cases_the_model_never_trained_on(tmp_path, monkeypatch):
    from LumbarSegLib import phantoms
    from LumbarSegLib.training import real_evaluation

    _tiny_cli(monkeypatch)
    monkeypatch.setattr(phantoms, "load_shape_library", lambda *a, **k: None)
    real = tmp_path / "real"
    write_case(real, "sub-r1")
    write_case(real, "sub-r2", orientation="PIR")

    def train(out, *extra):
        assert cli.main(["train", "--real", str(real), "--views", "2", "-o", str(out), "--config", "tiny",
                         "--cache", str(tmp_path / "cache"), "--sequential", "--jobs", "1", "--max-steps", "1",
                         "--epochs", "1", *extra]) == 0
        return out

    fold = train(tmp_path / "fold.pt", "--leave-out", "sub-r1")
    meta = load_model(fold).metadata["training_data"]["real"]
    assert meta["cases"] == ["sub-r2"] and meta["left_out"] == ["sub-r1"] and meta["views_per_case"] == 2
    hashes = load_model(fold).metadata["training_data"]["case_hashes"]  # the trained-on CT, by content
    assert [(h["case"], h["ct_file"]) for h in hashes] == [("sub-r2", "sub-r2_ct.nii.gz")]
    loo = real_evaluation.leave_one_out([fold], [real], partial_views=1, log=lambda s: None)
    assert [r["case"] for r in loo["cases"]] == ["sub-r1"] and len(loo["cases"][0]["partial"]) == 1
    assert loo["cases"][0]["truth"] == ["L1", "L2", "L3", "L4", "L5"] and loo["summary"]["cases"] == 1
    # The acquisitions hospitals store: each held-out case also re-imaged with a thick axis of its own.
    reimaged = loo["cases"][0]["reimaged"]
    assert list(reimaged) == list(real_evaluation.REIMAGINGS)
    spacings = [r["view"]["spacing"] for r in reimaged.values()]
    assert spacings[0][2] == 5.0 and spacings[1][0] == 3.0 and spacings[2][1] == 3.0
    assert [r["view"]["thick_axis"] for r in reimaged.values()] == ["z", "x", "y"]
    assert set(loo["summary"]["reimaged_mean_dsc"]) == set(real_evaluation.REIMAGINGS)
    # Fit: only the case the fold trained on, kept apart from the held-out scores.
    fit = real_evaluation.training_fit(fold, [real], log=lambda s: None)
    assert [r["case"] for r in fit["cases"]] == ["sub-r2"]
    # A model that left no real case out has nothing it may be scored on.
    full = train(tmp_path / "full.pt")
    with pytest.raises(InputError, match="not trained with"):
        real_evaluation.leave_one_out([full], [real], partial_views=0, log=lambda s: None)
    card = evaluation.evaluate_model(fold, n=1, seed=evaluation.EVAL_SEED_START, fovs=["thoracic"],
                                     spacing=(6.0, 6.0, 6.0), real_ct=False, log=lambda s: None)
    card["real_leave_one_out"] = loo
    card["targets"] = evaluation.targets_status(card["evaluation"], loo)
    assert {"real_left_out_dsc", "real_left_out_names"} <= set(card["targets"])
    card["real_fit"] = fit
    md = evaluation.card_markdown(card)
    assert "## Real CT, leave one case out" in md and "| sub-r1" in md and "left out: sub-r1" in md
    assert "## Real CT it trained on (fit, not accuracy)" in md and "| sub-r2 |" in md


def test_bundled_model_loads_and_is_small():
    path = default_model_path()
    if not path.is_file():
        pytest.skip("bundled model not trained yet")
    assert path.stat().st_size < 30e6
    model = load_model(path, allow_untrained=False)
    assert model.trained and model.config.name == "cpu"
    assert model.metadata.get("training_data", {}).get("phantoms", {}).get("count", 0) > 0


@pytest.mark.slow
def test_cross_validation_runs_the_pipeline_on_held_out_folds(tmp_path, monkeypatch, capsys):
    _tiny_cli(monkeypatch)
    data = tmp_path / "data"
    for i in range(4):
        write_case(data, f"sub-{i:03d}", orientation=("RAS", "LPS")[i % 2])
    out = tmp_path / "cv" / "model.pt"
    assert cli.main(["train", str(data), "-o", str(out), "--config", "tiny", "--cache", str(tmp_path / "c"),
                          "--sequential", "--jobs", "1", "--crops", "1", "--max-steps", "1", "--epochs", "1",
                          "--folds", "2", "--device", "cpu"]) == 0
    cv = json.loads((tmp_path / "cv" / "model.cv.json").read_text(encoding="utf-8"))
    assert cv["folds"] == 2 and len(cv["cases"]) == 4
    assert set(cv["table"]) == {"L1", "L2", "L3", "L4", "L5"}
    assert (tmp_path / "cv" / "model.fold1.pt").is_file() and (tmp_path / "cv" / "model.fold2.pt").is_file()
    assert "DSC" in capsys.readouterr().out


def test_epoch_batches_cover_each_case_once_per_epoch_and_samples_are_keyed():
    from LumbarSegLib.training.samples import AugmentedSamples, EpochBatches

    batches = EpochBatches(5, 2, seed=3, kind="xunet", first_epoch=4)
    assert batches.steps_per_epoch() == 3
    it = iter(batches)
    first = [next(it) for _ in range(6)]  # two epochs
    assert [len(b) for b in first] == [2, 2, 1, 2, 2, 1]
    for epoch, chunk in ((4, first[:3]), (5, first[3:])):
        keys = [k for b in chunk for k in b]
        assert {e for e, _, _ in keys} == {epoch} and sorted(i for _, _, i in keys) == [0, 1, 2, 3, 4]
        assert [slot for _, slot, _ in keys] == [0, 1, 2, 3, 4]
    assert [i for b in first[:3] for _, _, i in b] != [i for b in first[3:] for _, _, i in b]  # reshuffled
    rng = np.random.default_rng(0)
    items = [{"x": rng.random((2, 16, 12, 12)).astype(np.float16),
              "y": rng.integers(0, 6, (2, 16, 12, 12)).astype(np.uint8), "positive": True}]
    samples = AugmentedSamples(items, "xunet", seed=1, p_spatial=1.0)
    x1, y1 = samples[(0, 0, 0)]
    x2, y2 = samples[(0, 0, 0)]
    x3, _ = samples[(1, 0, 0)]
    x4, _ = samples[(0, 1, 0)]  # the same case drawn again in the same epoch: augmented differently
    assert x1.shape == (1, 16, 12, 12) and y1.shape == (16, 12, 12) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)  # the key alone decides the augmentation
    assert not torch.equal(x1, x3) and not torch.equal(x1, x4)


def test_weighted_epochs_draw_real_views_at_the_asked_rate():
    from LumbarSegLib.training.samples import EpochBatches, sampling_weights

    items = [{"source": "sub-a"}] * 4 + [{"source": ""}] * 36  # 4 real views among 40 cases
    w = sampling_weights(items, 0.5)
    assert w is not None and np.isclose(w[:4].sum(), 0.5) and np.isclose(w.sum(), 1.0)
    assert sampling_weights(items, None) is None and sampling_weights(items[:4], 0.5) is None
    with pytest.raises(ValueError):
        sampling_weights(items, 1.0)
    it = iter(EpochBatches(40, 8, seed=0, kind="xunet", weights=w))
    drawn = [i for _ in range(50) for _, _, i in next(it)]  # 10 epochs of 40 draws
    real_share = np.mean([i < 4 for i in drawn])
    assert 0.4 < real_share < 0.6  # without weights it would be 0.1


@pytest.mark.slow
def test_gpu_path_on_the_cpu_loader_workers_and_bfloat16(tmp_path, monkeypatch):
    """What CUDA runs (networks one after the other, batches augmented in loader worker processes,
    bfloat16 autocast), exercised on the CPU with tiny settings."""
    _tiny_cli(monkeypatch)
    data = tmp_path / "data"
    write_case(data, "sub-001")
    write_case(data, "sub-002", codes=(14, 15, 16, 17, 18, 19), orientation="LPS")
    write_case(data, "sub-003", orientation="LAS")

    def train(name, *extra):
        out = tmp_path / name / "model.pt"
        assert cli.main(["train", str(data), "-o", str(out), "--config", "tiny", "--cache", str(tmp_path / "cache"),
                         "--device", "cpu", "--sequential", "--jobs", "1", "--crops", "2", "--val-fraction", "0.34",
                         "--batch", "2", "--batch-localizer", "2", "--max-steps", "3", "--epochs", "3",
                         *extra]) == 0
        return load_model(out), torch.load(out.with_name("model.xunet.ckpt"), map_location="cpu", weights_only=True)

    # The same batches whoever augments them: no worker or two forked workers train identical weights.
    _, ck0 = train("w0", "--loader-workers", "0")
    _, ck2 = train("w2", "--loader-workers", "2")
    assert ck0["step"] == ck2["step"] == 3
    assert all(torch.equal(ck0["state"][k], ck2["state"][k]) for k in ck0["state"])

    model, ck = train("bf16", "--loader-workers", "2", "--precision", "bfloat16")
    meta = model.metadata
    assert meta["options"]["precision"] == "bfloat16" and meta["options"]["loader_workers"] == 2
    assert meta["options"]["batch_xunet"] == 2 and meta["finished"]
    for k in ("localizer", "xunet"):
        net = meta["networks"][k]
        assert net["steps"] == 3 and np.isfinite(net["final_train_loss"])
        assert np.isfinite(net["final_validation"]["val_loss"])
    assert all(torch.isfinite(v).all() for v in ck["state"].values() if v.is_floating_point())


@pytest.mark.slow
def test_a_training_step_that_is_not_finite_is_skipped_and_counted(tmp_path, monkeypatch):
    from LumbarSegLib.training import loop

    _tiny_cli(monkeypatch)
    data = tmp_path / "data"
    write_case(data, "sub-001")
    write_case(data, "sub-002", orientation="LPS")
    training_calls = []

    def nan_at_the_first_step(logits, labels):  # before any finite loss: nothing to show as the loss yet
        loss = dice_ce_loss(logits, labels)
        if torch.is_grad_enabled():  # not validation
            training_calls.append(1)
            if len(training_calls) == 1:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(loop, "dice_ce_loss", nan_at_the_first_step)
    out = tmp_path / "model.pt"
    assert cli.main(["train", str(data), "-o", str(out), "--config", "tiny", "--cache", str(tmp_path / "cache"),
                     "--sequential", "--jobs", "1", "--crops", "2", "--val-fraction", "0.5", "--batch", "2",
                     "--batch-localizer", "2", "--max-steps", "3", "--epochs", "3"]) == 0
    ck = torch.load(out.with_name("model.xunet.ckpt"), map_location="cpu", weights_only=True)
    assert ck["step"] == 3 and ck["skipped"] == 1 and json.loads(ck["history_json"])[-1]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ck["state"].values() if v.is_floating_point())
    assert load_model(out).trained  # the bundle's weights pass the loader's check for values that are not numbers


def test_training_device_and_batch_options_are_checked(tmp_path, capsys):
    rc = cli.main(["train", "--phantoms", "1", "-o", str(tmp_path / "m.pt"), "--minutes", "1", "--batch", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--batch must be at least 1" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        rc = cli.main(["train", "--phantoms", "1", "-o", str(tmp_path / "m.pt"), "--minutes", "1", "--device", "cuda"])
        err = capsys.readouterr().err
        assert rc == 2 and "no CUDA GPU" in err
