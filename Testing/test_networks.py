"""Shapes, Inception branch widths and parameter counts of the paper configuration."""

import pytest
import torch

from LumbarSegLib.inference.networks import (CONFIGS, DoubleConv, InceptionBlock, LocalizerUNet,
                                             MultiScaleDecoderLevel, XUNet, _resize_to, build_networks,
                                             count_parameters)


def conv_norm_act(cin, cout, k=3):
    """Parameters of Conv3d (no bias, followed by a norm) + the affine instance norm (weight and bias)."""
    return k ** 3 * cin * cout + 2 * cout


def double_conv(cin, cout):
    return conv_norm_act(cin, cout) + conv_norm_act(cout, cout)


def test_inception_branch_widths_match_paper():
    block = InceptionBlock(128, 256)
    assert block.branch_widths == (64, 128, 32, 32)
    out = block(torch.zeros(1, 128, 4, 4, 4))
    assert out.shape == (1, 256, 4, 4, 4)
    # 3x3x3(16) -> 5x5x5(32) branch and 1x1x1(32) -> 3x3x3(128) branch as in the paper
    assert block.branch5[0][0].out_channels == 16 and block.branch5[1][0].kernel_size == (5, 5, 5)
    assert block.branch3[0][0].out_channels == 32 and block.branch3[1][0].out_channels == 128


def test_inception_rejects_widths_that_do_not_split():
    with pytest.raises(ValueError, match="divisible by 16"):
        InceptionBlock(8, 40)


def test_paper_localizer_parameter_count():
    c = 64
    expected = double_conv(1, c) + 4 * double_conv(c, c)
    expected += sum(double_conv(c + c * (i + 1), c) for i in range(4))  # decoders fuse all finer encoders
    expected += c + 1  # 1x1x1 head with bias
    localizer, _ = build_networks(CONFIGS["paper"])
    assert count_parameters(localizer) == expected


def test_paper_xunet_parameter_count():
    w, bottom = [32, 64, 128], 256
    expected = double_conv(1, 32) + double_conv(32, 64) + double_conv(64, 128)
    expected += conv_norm_act(128, bottom)
    expected += (conv_norm_act(bottom, 64, 1) + conv_norm_act(bottom, 32, 1) + conv_norm_act(32, 128, 3)
                 + conv_norm_act(bottom, 16, 3) + conv_norm_act(16, 32, 5) + conv_norm_act(bottom, 32, 1))
    expected += double_conv(bottom + sum(w), 128) + double_conv(128 + sum(w), 64) + double_conv(64 + sum(w), 32)
    classes = 6 + 2  # background, L1-L5, then the context classes thoracic and caudal
    expected += 32 * classes + classes
    _, xunet = build_networks(CONFIGS["paper"])
    assert count_parameters(xunet) == expected


@pytest.mark.parametrize("name", ["paper", "cpu"])
def test_output_shapes(name):
    config = CONFIGS[name]
    localizer, xunet = build_networks(config)
    # Smaller spatial grids than the real inputs keep the test fast; the nets are fully convolutional.
    with torch.no_grad():
        heat = localizer(torch.rand(1, 1, 32, 32, 48))
        logits = xunet(torch.rand(2, 1, 32, 16, 16))
    assert heat.shape == (1, 1, 32, 32, 48)
    assert 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    assert logits.shape == (2, 6 + len(config.context_classes), 32, 16, 16)


def test_cpu_config_is_narrower_than_paper():
    paper = [count_parameters(n) for n in build_networks(CONFIGS["paper"])]
    cpu = [count_parameters(n) for n in build_networks(CONFIGS["cpu"])]
    assert all(c < p / 10 for c, p in zip(cpu, paper))
    assert isinstance(build_networks(CONFIGS["cpu"])[0], LocalizerUNet)
    assert isinstance(build_networks(CONFIGS["cpu"])[1], XUNet)


def test_xunet_coordinate_channel_and_warm_start():
    from LumbarSegLib.inference.networks import load_compatible_state

    torch.manual_seed(0)
    plain = XUNet(8).eval()
    with_coords = XUNet(8, coords=True).eval()
    assert with_coords.enc[0][0][0].in_channels == 2
    # Warm start: the coordinate channel's weights start at zero, so the output is unchanged ...
    load_compatible_state(with_coords, plain.state_dict())
    x = torch.rand(1, 1, 32, 16, 16)
    with torch.no_grad():
        assert torch.allclose(with_coords(x), plain(x), atol=1e-6)
        # ... and once they are not zero, the network knows where along z each voxel is.
        with_coords.enc[0][0][0].weight[:, 1].fill_(0.5)
        out = with_coords(torch.zeros(1, 1, 32, 16, 16))
    assert not torch.allclose(out[:, :, 0], out[:, :, -1])


def test_cpu_config_uses_coordinates_and_paper_does_not():
    assert CONFIGS["cpu"].xunet_coords and not CONFIGS["paper"].xunet_coords
    assert build_networks(CONFIGS["paper"])[1].enc[0][0][0].in_channels == 1


def test_warm_start_grows_the_head_with_context_classes_that_start_below_background():
    from LumbarSegLib.inference.networks import load_compatible_state

    torch.manual_seed(0)
    old = XUNet(8).eval()
    new = XUNet(8, num_classes=8).eval()
    load_compatible_state(new, old.state_dict())
    x = torch.rand(1, 1, 32, 16, 16)
    with torch.no_grad():
        a, b = old(x), new(x)
    assert torch.allclose(b[:, :6], a, atol=1e-6)  # the old classes compute exactly what they did
    assert torch.allclose(b[:, 6:], a[:, :1] - 2.0, atol=1e-5)  # new ones: background's logit, 2 lower
    assert (b.argmax(1) < 6).all()  # so the warm-started network predicts what the old one did


def test_config_round_trip_keeps_context_classes_and_old_bundles_have_none():
    from LumbarSegLib.inference.networks import ModelConfig

    cfg = CONFIGS["cpu"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg and cfg.xunet_outputs == 8
    old = {k: v for k, v in cfg.to_dict().items() if k != "context_classes"}  # written before they existed
    assert ModelConfig.from_dict(old).context_classes == () and ModelConfig.from_dict(old).xunet_outputs == 6


def test_the_instance_norm_keeps_channels_last_and_the_function_of_instancenorm3d():
    """Every double convolution and decoder level of both networks hands channels-last on in training (batch 2;
    InstanceNorm3d would turn it back to NCDHW; with a batch of one, or a 1x1x1 kernel as in the Inception block
    at the bottom, 1/512 of the voxels, a convolution returns NCDHW whatever its input), and the
    GroupNorm computes what an affine InstanceNorm3d with the same parameters computes, so the bundled weights
    (saved from InstanceNorm3d) give the same output."""
    localizer, xunet = build_networks(CONFIGS["cpu"])
    seen = []

    def hook(module, _inputs, out):
        if isinstance(out, torch.Tensor) and out.dim() == 5 and out.shape[1] > 1:
            seen.append((type(module).__name__, out.is_contiguous(memory_format=torch.channels_last_3d)))

    for net, shape in ((xunet, (2, 1, 16, 16, 16)), (localizer, (2, 1, 32, 32, 32))):
        net = net.to(memory_format=torch.channels_last_3d)
        for m in net.modules():
            if isinstance(m, (DoubleConv, MultiScaleDecoderLevel)):
                m.register_forward_hook(hook)
        net(torch.randn(*shape).contiguous(memory_format=torch.channels_last_3d))
    assert seen and all(ok for _name, ok in seen), [s for s in seen if not s[1]]

    gn = xunet.enc[0][0][1]
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == gn.num_channels
    inn = torch.nn.InstanceNorm3d(gn.num_channels, affine=True, eps=1e-5)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    inn.load_state_dict(gn.state_dict())  # the same parameter names and shapes
    x = torch.randn(2, gn.num_channels, 5, 6, 7)
    assert torch.allclose(gn(x), inn(x), atol=1e-5)


@pytest.mark.parametrize("size, target", [((32, 16, 16), (16, 8, 8)), ((32, 16, 16), (8, 4, 4)),
                                          ((32, 16, 16), (8, 8, 4)), ((31, 16, 16), (15, 8, 8))])
def test_a_finer_map_pools_to_the_coarser_grid_as_adaptive_pooling_does_and_stays_channels_last(size, target):
    x = torch.randn((2, 3) + size).contiguous(memory_format=torch.channels_last_3d)
    like = torch.empty((2, 3) + target)
    out = _resize_to(x, like)
    assert torch.equal(out, torch.nn.functional.adaptive_max_pool3d(x, target))
    whole_multiples = all(a % b == 0 for a, b in zip(size, target))
    assert out.is_contiguous(memory_format=torch.channels_last_3d) == whole_multiples
