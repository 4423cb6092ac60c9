"""Stage 3 (one binary network per vertebra): network layout, crops, thick-slice simulation, sampler, merging,
and training that resumes across sessions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sitk = pytest.importorskip("SimpleITK")

from LumbarSegLib.inference import vertebra_net, vertebra_stage  # noqa: E402
from LumbarSegLib.inference.vertebra_net import VertebraNetConfig  # noqa: E402
from LumbarSegLib.training import vertebra_samples, vertebra_train  # noqa: E402

SMALL = VertebraNetConfig(widths=(4, 8, 16), crop_zyx=(32, 32, 32), spacing_mm=2.0)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_every_block_keeps_channels_last():
    net = vertebra_net.build(SMALL)
    seen = []

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 5 and output.shape[1] > 1:
            seen.append((type(module).__name__, output.is_contiguous(memory_format=torch.channels_last_3d)))

    for m in net.modules():
        m.register_forward_hook(hook)
    x = vertebra_net.network_input(torch.zeros(2, *SMALL.crop_zyx), torch.full((2, 3), 15.5), SMALL)
    out = net(x)
    assert out.shape == (2, 1, *SMALL.crop_zyx)
    assert seen and all(ok for _name, ok in seen), [s for s in seen if not s[1]]


def test_group_norm_per_channel_is_instance_norm():
    x = torch.randn(2, 6, 5, 6, 7)
    gn = torch.nn.GroupNorm(6, 6, affine=False, eps=1e-5)
    inn = torch.nn.InstanceNorm3d(6, affine=False, eps=1e-5)
    assert torch.allclose(gn(x), inn(x), atol=1e-5)


def test_heatmap_peaks_at_the_centre():
    hm = vertebra_net.heatmap((16, 16, 16), torch.tensor([[3.0, 8.0, 12.0]]), 1.25, 5.0)
    assert hm.shape == (1, 1, 16, 16, 16)
    assert tuple(np.unravel_index(int(hm.argmax()), (16, 16, 16))) == (3, 8, 12)
    assert float(hm.max()) == pytest.approx(1.0)


def _sphere_ct(direction=None, spacing=(0.8, 0.9, 2.5)):
    """A CT (-1000 outside a body of 40 HU) with a bone sphere of radius 10 mm at LPS (12, -30, 55)."""
    img = sitk.Image([120, 110, 60], sitk.sitkFloat32)
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    # The same physical box (x -40..56, y -70..29, z -20..130) whatever way the axes run.
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    img.SetOrigin([-40.0 if d[0, 0] > 0 else 56.0, -70.0 if d[1, 1] > 0 else 29.0, -20.0 if d[2, 2] > 0 else 130.0])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in img.GetSize()], indexing="ij"), -1).reshape(-1, 3)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    pts = np.asarray(img.GetOrigin()) + (idx * np.asarray(spacing)) @ d.T
    r = np.linalg.norm(pts - np.array([12.0, -30.0, 55.0]), axis=1)
    vals = np.where(r < 10, 700.0, 40.0).reshape(img.GetSize()).transpose(2, 1, 0)
    out = sitk.GetImageFromArray(vals.astype(np.float32))
    out.CopyInformation(img)
    return out


@pytest.mark.parametrize("direction", [None, (1, 0, 0, 0, -1, 0, 0, 0, -1)])
def test_crop_is_centred_on_the_seed_whatever_the_header(direction):
    ct = _sphere_ct(direction)
    centre = np.array([12.0, -30.0, 55.0])
    crop, ref = vertebra_stage.crop_ct(ct, centre, SMALL)
    assert crop.shape == SMALL.crop_zyx
    bone = np.argwhere(crop > 300)
    assert bone.size and np.allclose(bone.mean(0), (np.asarray(SMALL.crop_zyx) - 1) / 2, atol=1.0)


def test_merge_gives_each_voxel_its_most_probable_vertebra():
    ct = _sphere_ct()
    a = vertebra_stage.VertebraSeed(np.array([12.0, -30.0, 55.0]), 3)
    b = vertebra_stage.VertebraSeed(np.array([12.0, -30.0, 70.0]), 4)  # overlapping crops
    ga, gb = vertebra_stage.crop_grid(a.centre_mm, SMALL), vertebra_stage.crop_grid(b.centre_mm, SMALL)
    pa = np.full(SMALL.crop_zyx, 0.7, np.float32)
    pb = np.full(SMALL.crop_zyx, 0.9, np.float32)
    pb[:, :, :10] = 0.2  # where b is unsure, a keeps its voxels
    labels = vertebra_stage.merge(ct, [a, b], [(pa, ga), (pb, gb)])
    assert labels.shape == sitk.GetArrayViewFromImage(ct).shape
    assert set(np.unique(labels)) == {0, 3, 4}
    # A voxel inside both crops where b is sure goes to b; one where b said 0.2 stays with a.
    both = ct.TransformPhysicalPointToIndex([12.0, -30.0, 62.0])
    assert labels[both[2], both[1], both[0]] == 4
    left = ct.TransformPhysicalPointToIndex([12.0 - 25.0, -30.0, 62.0])
    assert labels[left[2], left[1], left[0]] == 3
    # Nothing below 0.5 is labelled.
    pa[:] = 0.4
    assert not vertebra_stage.merge(ct, [a], [(pa, ga)]).any()


def test_thick_slices_blur_across_the_slices_only():
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 40, 40), np.float32)
    vol[20, :, :] = 1000.0  # a thin axial plate
    vol[:, :, 20] = 1000.0  # a thin sagittal plate
    out = vertebra_samples.thick_slices(vol, 0, 5.0, 1.25, rng)
    assert out[10:30, 5, 5].max() < 500  # the axial plate is smeared across 5 mm slices
    assert out[10:30, 5, 5].sum() == pytest.approx(vol[10:30, 5, 5].sum(), rel=0.35)
    assert out[5, 5, 20] == pytest.approx(1000.0, rel=0.05) or out[8, 5, 20] > 900  # the sagittal plate stays
    assert np.allclose(vertebra_samples.thick_slices(vol, 2, 1.2, 1.25, rng), vol)  # thinner than the grid
    flat = np.full((20, 20, 20), 300.0, np.float32)
    assert np.allclose(vertebra_samples.thick_slices(flat, 1, 4.0, 1.25, rng), 300.0, atol=1e-3)


def _label_map(tmp_path: Path) -> Path:
    """Three stacked box 'vertebrae' (VerSe codes 20-22) with 'posterior elements', 1 mm, in a masks folder."""
    arr = np.zeros((120, 80, 80), np.uint8)
    for k, code in enumerate((20, 21, 22)):
        z0 = 10 + 35 * (2 - k)  # L1 on top (LPS +z superior, array z grows with it)
        arr[z0:z0 + 25, 20:50, 25:55] = code
        arr[z0 + 5:z0 + 20, 50:65, 36:44] = code
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    folder = tmp_path / "masks" / "verse999"
    folder.mkdir(parents=True)
    sitk.WriteImage(img, str(folder / "sub-verse999_seg-vert_msk.nii.gz"))
    return tmp_path / "masks"


def test_sampler_draws_one_vertebra_against_the_rest(tmp_path):
    sources = vertebra_samples.load_labelmap_sources(_label_map(tmp_path))
    assert [s.name for s in sources] == ["masks/verse999"]
    sampler = vertebra_samples.VertebraSampler(sources, SMALL, {"labelmap": 1.0}, seed=3)
    assert sampler.counts() == {"labelmap": 3}
    for _ in range(6):
        ct, centre, target, info = sampler.draw()
        assert ct.shape == target.shape == SMALL.crop_zyx and ct.dtype == np.float32
        assert target.any() and set(np.unique(target)) <= {0, 1}
        # The target is the drawn vertebra near the crop's middle, bone-bright on the synthesised CT.
        assert np.linalg.norm(np.argwhere(target).mean(0) - centre) * SMALL.spacing_mm < 12
        assert ct[target > 0].mean() > ct[target == 0].mean() + 100
    assert vertebra_samples.load_labelmap_sources(tmp_path / "masks", leave_out=["sub-verse999"]) == []


def test_sampler_mirrors_half_of_the_draws_left_right(tmp_path):
    """A vertebra with a process on its left only: a mirrored draw has it on the right, crops and target alike."""
    arr = np.zeros((60, 60, 60), np.uint8)
    arr[20:40, 20:40, 20:40] = 20
    arr[25:35, 25:35, 40:55] = 20  # array x grows towards the patient's left (LPS)
    labels = sitk.GetImageFromArray(arr)
    src = vertebra_samples.Source("masks/verse999", "labelmap", labels)
    centre = vertebra_samples.vertebra_centres(labels)[20]
    ref = vertebra_stage.crop_grid(centre, SMALL)
    rng = np.random.default_rng(0)
    _, plain = vertebra_samples.resample_turned(src, ref, centre, np.eye(3), 1.0, SMALL.spacing_mm, rng)
    _, mirrored = vertebra_samples.resample_turned(src, ref, centre, vertebra_samples.MIRROR_LR, 1.0,
                                                   SMALL.spacing_mm, rng)
    def process_on_the_left(mask) -> bool:  # the far end of the bone from its centroid, along x
        x = np.argwhere(mask)[:, 2]
        return x.max() - x.mean() > x.mean() - x.min()

    assert process_on_the_left(plain) and not process_on_the_left(mirrored)
    assert (plain > 0).sum() == pytest.approx((mirrored > 0).sum(), rel=0.05)
    sampler = vertebra_samples.VertebraSampler([src], SMALL, {"labelmap": 1.0}, seed=1)
    draws = [sampler.draw() for _ in range(12)]
    assert {info["mirrored"] for *_, info in draws} == {True, False}
    for _, _, target, info in draws:
        assert process_on_the_left(target) != info["mirrored"]


@pytest.mark.slow
def test_training_checkpoints_and_resumes_across_sessions(tmp_path):
    masks = _label_map(tmp_path)
    phase = vertebra_train.Phase("pretrain", minutes=0.05, weights={"labelmap": 1.0})
    state = tmp_path / "state"
    done = vertebra_train.train_phase(phase, state, [], masks, SMALL, minutes_left=5)
    assert done
    first = torch.load(state / "pretrain.pt", weights_only=True)
    assert first["done"] and first["step"] >= 1
    log = [line for line in (state / "log.jsonl").read_text().splitlines() if line]
    assert '"steps_per_hour"' in log[-1] and '"load_avg"' in log[-1]
    # The committed resume file: small (fp16), and the next session unpacks it and starts the next phase.
    resume = vertebra_train.export_resume(state, tmp_path / "resume.pt")
    packed = torch.load(resume, weights_only=True)
    assert all(v.dtype == torch.float16 for v in packed["phases"]["pretrain"]["weights"].values()
               if v.is_floating_point())
    state2 = tmp_path / "state2"
    assert vertebra_train.import_resume(resume, state2) == ["pretrain"]
    # the new machine's log holds the phase's last record: the card's training table keeps its speed and load
    moved = [json.loads(line) for line in (state2 / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in moved] == ["pretrain"] and moved[0]["unpacked_from"] == "resume.pt"
    assert moved[0]["steps_per_hour"] == json.loads(log[-1])["steps_per_hour"] and moved[0]["step"] == first["step"]
    assert vertebra_train.import_resume(resume, state2) == []  # already there: neither weights nor log rewritten
    assert len((state2 / "log.jsonl").read_text().splitlines()) == 1
    net = vertebra_stage.load_weights(torch.load(state2 / "pretrain.pt", weights_only=True))
    ref = vertebra_stage.load_weights(first)
    for (k, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=2e-3 * (1 + b.abs().max().item())), k
    fine = vertebra_train.Phase("fold-X", minutes=0.05, leave_out=("verse000",), init="pretrain",
                                weights={"labelmap": 1.0})
    assert vertebra_train.train_phase(fine, state2, [], masks, SMALL, minutes_left=5)
    assert torch.load(state2 / "fold-X.pt", weights_only=True)["leave_out"] == ["verse000"]


_COMPILED_RUN = """
import json, sys, torch
from pathlib import Path
from LumbarSegLib.inference.vertebra_net import VertebraNetConfig
from LumbarSegLib.training import vertebra_train
small = VertebraNetConfig(widths=(4, 8, 16), crop_zyx=(32, 32, 32), spacing_mm=2.0)
phase = vertebra_train.Phase("pretrain", minutes=0.05, weights={"labelmap": 1.0})
assert vertebra_train.train_phase(phase, Path(sys.argv[1]), [], sys.argv[2], small, minutes_left=5, compile_net=True)
torch.manual_seed(0)
untrained = vertebra_train.STAGE3.build(small)
saved = torch.load(Path(sys.argv[1]) / "pretrain.pt", weights_only=True)
print(json.dumps({"names_as_plain": set(saved["weights"]) == set(untrained.state_dict()),
                  "moved": any(not torch.allclose(saved["weights"][k], v) for k, v in untrained.state_dict().items())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile needs a C++ compiler")
def test_a_compiled_run_trains_the_network_it_checkpoints(tmp_path):
    # in a fresh interpreter in UTF-8 mode, as tools/train_stage3.sh runs it: inductor reads its kernel templates in the
    # locale's encoding, which was ASCII in the whole suite on a clean clone
    masks = _label_map(tmp_path)
    state = tmp_path / "state"
    run = subprocess.run([sys.executable, "-c", _COMPILED_RUN, str(state), str(masks)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONUTF8": "1"}, cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    # the checkpoint holds the plain network's weights (no torch.compile wrapper names), and they moved
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"names_as_plain": True, "moved": True}
    rec = json.loads((state / "log.jsonl").read_text().splitlines()[-1])
    assert rec["compiled"] is True and rec["first_step_s"] > 0 and rec["step"] >= 1


def test_where_inductor_cannot_load_the_run_trains_plain_and_says_so(tmp_path, monkeypatch):
    def no_inductor(*args, **kwargs):
        raise UnicodeDecodeError("ascii", b"\xe2", 0, 1, "ordinal not in range(128)")

    monkeypatch.setattr(torch, "compile", no_inductor)
    masks = _label_map(tmp_path)
    phase = vertebra_train.Phase("pretrain", minutes=0.02, weights={"labelmap": 1.0})
    said = []
    assert vertebra_train.train_phase(phase, tmp_path / "state", [], masks, SMALL, minutes_left=5, log=said.append,
                                      compile_net=True)
    assert any("PYTHONUTF8=1" in line for line in said)
    rec = json.loads((tmp_path / "state" / "log.jsonl").read_text().splitlines()[-1])
    assert rec["compiled"] is False and rec["step"] >= 1


def test_a_step_with_gradients_that_are_not_numbers_is_skipped():
    from LumbarSegLib.training.loop import optimiser_step

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.ones(2, 3)
    assert not optimiser_step(opt, net(x).sum() * float("nan"))  # the loss itself
    assert not optimiser_step(opt, torch.sqrt(net(x) - net(x)).sum())  # a finite loss (0) whose gradients are NaN
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())) and not opt.state
    assert optimiser_step(opt, net(x).sum())
    assert not any(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def _loss_not_finite_at(steps):
    """Stage 3's batch loss, made NaN at the given steps (1-based; None: every step)."""
    calls = []

    def batch_loss(net, batch, config):
        calls.append(1)
        loss = vertebra_train.stage3_batch_loss(net, batch, config)
        return loss * float("nan") if steps is None or len(calls) in steps else loss
    return batch_loss


def test_a_run_skips_a_step_that_is_not_finite_and_stops_on_a_run_of_them(tmp_path):
    import dataclasses

    masks = _label_map(tmp_path)
    phase = vertebra_train.Phase("pretrain", minutes=0.05, weights={"labelmap": 1.0})
    once = dataclasses.replace(vertebra_train.STAGE3, batch_loss=_loss_not_finite_at({1}))
    said = []
    assert vertebra_train.train_phase(phase, tmp_path / "once", [], masks, SMALL, minutes_left=5, log=said.append,
                                      trainee=once)
    rec = json.loads((tmp_path / "once" / "log.jsonl").read_text().splitlines()[-1])
    assert rec["skipped_steps"] == 1 and rec["step"] >= 1 and any("step 1: loss or gradients" in m for m in said)
    saved = torch.load(tmp_path / "once" / "pretrain.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["weights"].values() if v.is_floating_point())

    always = dataclasses.replace(vertebra_train.STAGE3, batch_loss=_loss_not_finite_at(None))
    long_phase = dataclasses.replace(phase, minutes=5)  # it stops on the tenth step, long before its budget
    with pytest.raises(RuntimeError, match="10 training steps in a row"):
        vertebra_train.train_phase(long_phase, tmp_path / "always", [], masks, SMALL, minutes_left=5,
                                   log=said.append, trainee=always)


@pytest.mark.skipif(not (SHARED / "real").is_dir(), reason="needs ../shared/data")
def test_a_held_out_subject_leaves_every_source():
    real = vertebra_samples.load_real_sources([SHARED / "real"], leave_out=["verse005"])
    masks = vertebra_samples.load_labelmap_sources(SHARED / "masks", leave_out=["verse005", "s0328"])
    names = [s.name for s in real + masks]
    assert names and not any("verse005" in n or "s0328" in n for n in names)
    assert any("verse008" in n for n in names)


def test_model_file_round_trip_and_refusals(tmp_path):
    from LumbarSegLib.errors import ModelError

    net = vertebra_net.build(SMALL)
    state = {"config": SMALL.to_dict(), "weights": net.state_dict()}
    path = vertebra_stage.save_bundle(state, tmp_path / "s3.pt", {"trained_on": ["x"]})
    loaded, meta = vertebra_stage.load_bundle(path)
    assert meta == {"trained_on": ["x"]} and loaded.config == SMALL
    x = vertebra_net.network_input(torch.randn(1, *SMALL.crop_zyx) * 300, torch.full((1, 3), 15.5), SMALL)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net.eval()(x), atol=0.05)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="per-vertebra model"):
        vertebra_stage.load_bundle(bad)
    broken = dict(state, weights={k: v.clone() for k, v in state["weights"].items()})
    next(v for v in broken["weights"].values() if v.is_floating_point()).fill_(float("nan"))
    vertebra_stage.save_bundle(broken, tmp_path / "nan.pt", {})
    with pytest.raises(ModelError, match="not numbers"):
        vertebra_stage.load_bundle(tmp_path / "nan.pt")


def _sphere_prob(config, centre_mm, grid_centre_mm, value, radius_mm=12.0):
    """A crop's probabilities: ``value`` inside a ball at ``centre_mm``, 0.05 elsewhere."""
    ref = vertebra_stage.crop_grid(grid_centre_mm, config)
    zyx = np.stack(np.meshgrid(*[np.arange(n) for n in config.crop_zyx], indexing="ij"), -1)
    pts = np.asarray(ref.GetOrigin()) + zyx[..., ::-1] * config.spacing_mm
    inside = np.linalg.norm(pts - np.asarray(centre_mm), axis=-1) < radius_mm
    return np.where(inside, value, 0.05).astype(np.float32), ref


def test_two_seeds_on_one_vertebra_are_one():
    ct = _sphere_ct()
    bone = np.array([12.0, -30.0, 55.0])
    upper = vertebra_stage.VertebraSeed(bone + [0, 0, 4.0], 3)
    lower = vertebra_stage.VertebraSeed(bone - [0, 0, 5.0], 4)  # a second seed on the same bone
    far = vertebra_stage.VertebraSeed(bone - [0, 0, 32.0], 5)
    probs = [_sphere_prob(SMALL, bone, upper.centre_mm, 0.95), _sphere_prob(SMALL, bone, lower.centre_mm, 0.8),
             _sphere_prob(SMALL, far.centre_mm, far.centre_mm, 0.9)]
    grids = vertebra_stage.on_ct_grid(ct, probs)
    assert vertebra_stage.duplicates([upper, lower, far], grids) == {4: 3}
    assert vertebra_stage.duplicates([upper, far], [grids[0], grids[2]]) == {}


def test_stage3_vertebrae_are_reported_whole_and_apart():
    """tidy_vertebrae: each vertebra keeps its largest piece with its enclosed holes filled, never takes
    another vertebra's voxels, and a label stage 3 found nothing of is named."""
    from LumbarSegLib.inference import by_vertebra

    refined = np.zeros((20, 20, 40), np.uint8)
    refined[4:16, 4:16, 2:14] = 1
    refined[8:12, 8:12, 6:10] = 0  # a hole in L1's body (cancellous bone called background)
    refined[0:2, 0:2, 18:20] = 1  # an island of L1 elsewhere
    refined[4:16, 4:16, 20:32] = 2
    refined[9:11, 9:11, 24:28] = 1  # L1's voxels inside L2: an enclosed piece of another vertebra
    out, empty = by_vertebra.tidy_vertebrae(refined, [1, 2, 3])
    assert empty == [3]
    assert (out[8:12, 8:12, 6:10] == 1).all() and not out[0:2, 0:2, 18:20].any()
    assert (out[4:16, 4:16, 20:32] == 2).sum() == (refined == 2).sum()  # L2 never loses its voxels
    assert not (out[9:11, 9:11, 24:28] == 2).any() and not (out[9:11, 9:11, 24:28] == 1).any()


def test_a_vertebra_of_soft_tissue_is_not_reported():
    from LumbarSegLib.inference import by_vertebra

    hu = np.full((30, 30, 30), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[2:10, 5:20, 5:20] = 1
    hu[2:10, 5:20, 5:20] = 260.0  # bone
    labels[15:25, 5:20, 5:20] = 2  # a blob on soft tissue (e.g. bowel) named L2
    messages: list[str] = []
    out = by_vertebra.drop_soft_tissue(labels, hu, messages)
    assert set(np.unique(out)) == {0, 1}
    assert len(messages) == 1 and "L2 (40 HU)" in messages[0]
    assert by_vertebra.drop_soft_tissue(out, hu, []) is out  # bone alone: kept as it is
    hu[2:10, 5:20, 5:20] = 85.0  # an osteoporotic vertebra (cancellous bone 40-140 HU) is still bone
    hu[15:25, 5:20, 5:20] = 68.0  # the brightest bowel blob measured
    kept = by_vertebra.drop_soft_tissue(labels, hu, [])
    assert set(np.unique(kept)) == {0, 1}


@pytest.mark.slow
def test_run_study_says_whether_stage3_ran(tmp_path, monkeypatch):
    from conftest import phantom

    from LumbarSegLib.errors import InputError
    from LumbarSegLib.study.runner import StudyOptions, run_study

    import dataclasses

    ct, _ = phantom()
    model = tmp_path / "lumbarseg_stage3.pt"
    # the bundled file's place (RESOURCES_DIR / file_name; an absolute name replaces the folder)
    monkeypatch.setattr(vertebra_stage, "STAGE3", dataclasses.replace(vertebra_stage.STAGE3, file_name=str(model)))
    from LumbarSegLib.inference import finder

    # the XUNet's path first: no finder installed (whether or not one is bundled)
    monkeypatch.setattr(finder, "FINDER_BUNDLE", dataclasses.replace(finder.FINDER_BUNDLE,
                                                                     file_name=str(tmp_path / "no_finder.pt")))

    def run(name, refine):
        return run_study(StudyOptions(input=ct, output=str(tmp_path / name), device="cpu", quiet=True, refine=refine))

    with pytest.raises(InputError, match="--refine needs the per-vertebra model"):
        run("missing", True)
    assert not (tmp_path / "missing").exists()
    none = run("none", None)
    assert none["found"] and none["stage3"] == {"ran": False, "model": None, "sha256": None}
    assert "refine" not in none["timings_s"]
    net = vertebra_net.build(SMALL)
    vertebra_stage.save_bundle({"config": SMALL.to_dict(), "weights": net.state_dict()}, model, {})
    on = run("on", None)
    assert on["stage3"]["model"] == "lumbarseg_stage3.pt" and len(on["stage3"]["sha256"]) == 64
    assert "refine" in on["timings_s"]  # the XUNet's vertebrae went through stage 3
    assert on["stage3"]["ran"] == bool(on["found"])
    assert on["provenance"]["stage3"] == on["stage3"] and on["provenance"]["options"]["refine"] is None
    assert on["finder"] == {"ran": False, "model": None, "sha256": None} == on["provenance"]["finder"]
    off = run("off", False)
    assert off["stage3"]["ran"] is False and off["provenance"]["options"]["refine"] is False

    # with a finder installed, its path runs and the report says so (a tiny untrained one: the plumbing only)
    from LumbarSegLib.inference.finder import FinderConfig, build_finder

    tiny = FinderConfig(base=4, crop_zyx=(32, 32, 32), spacing_mm=4.0)
    torch.manual_seed(0)
    found_by = tmp_path / "lumbarseg_finder.pt"
    finder.FINDER_BUNDLE.save({"config": tiny.to_dict(), "weights": build_finder(tiny).state_dict()}, found_by, {})
    monkeypatch.setattr(finder, "FINDER_BUNDLE", dataclasses.replace(finder.FINDER_BUNDLE, file_name=str(found_by)))
    counted = run("counted", None)
    assert counted["finder"]["model"] == "lumbarseg_finder.pt" and counted["finder"]["ran"] is True
    assert counted["provenance"]["finder"] == counted["finder"]
    with pytest.raises(InputError, match="needs that stage"):
        run_study(StudyOptions(input=ct, output=str(tmp_path / "x"), device="cpu", quiet=True, refine=False,
                               finder=True))


def test_gate_combines_folds_scored_one_at_a_time(tmp_path):
    # Folds are scored as each finishes training; the gate's summary pools every fold's held-out vertebrae.
    import json

    from LumbarSegLib.training import vertebra_eval

    def fold(name, dscs):
        rows = [{"phase": name, "case": f"{name}-case", "acquisition": "as stored", "held_out": True,
                 "vertebrae": {str(20 + i): {"DSC": d, "ASD": 1.0, "HD95": 3.0} for i, d in enumerate(dscs)}}]
        path = tmp_path / f"gate_{name}.json"
        path.write_text(json.dumps({"summary": vertebra_eval.summarize(rows), "rows": rows}))
        return str(path)

    out = tmp_path / "gate.json"
    assert vertebra_eval.main(["--combine", fold("fold-A", [0.9, 0.8]), fold("fold-B", [0.7]),
                               "--json", str(out)]) == 0
    summary = json.loads(out.read_text())["summary"]["as stored"]
    assert summary["vertebrae"] == 3 and summary["DSC"] == pytest.approx(0.8)
    with pytest.raises(SystemExit):
        vertebra_eval.main(["--phases", "fold-A"])  # scoring needs a state folder and the real cases
