"""Unit tests for kitscascade.networks: pooling schedule, argument checks, shapes, structure."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from kitscascade.losses import deep_supervision_loss
from kitscascade.networks import (
    ResUNet,
    UNet,
    build_network,
    count_parameters,
    pool_schedule,
    pools_per_axis,
)

TINY = dict(
    patch_size=(16, 32, 32), base_features=4
)  # pools (2, 3, 3): 3 decoder levels


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------
# pool_schedule
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "pools"),
    [
        ((80, 160, 160), (4, 5, 5)),  # paper, stage 1
        ((40, 128, 128), (3, 5, 5)),  # paper, stage 2
        ((32, 64, 64), (3, 4, 4)),
        ((16, 32, 32), (2, 3, 3)),
        ((160, 160), (5, 5)),
    ],
)
def test_pool_schedule_pools_per_axis(patch, pools):
    assert pools_per_axis(pool_schedule(patch)) == pools


def test_pool_schedule_skips_the_coarse_axis_first():
    assert pool_schedule((80, 160, 160)) == [(1, 2, 2)] + [(2, 2, 2)] * 4
    assert pool_schedule((40, 128, 128)) == [(1, 2, 2)] * 2 + [(2, 2, 2)] * 3


def test_pool_schedule_min_size_and_max_pools():
    assert pools_per_axis(pool_schedule((80, 160, 160), min_size=16)) == (3, 4, 4)
    assert pool_schedule((80, 160, 160), max_pools=2) == [(2, 2, 2)] * 2
    assert pool_schedule((4, 64, 64), max_pools=0) == []


def test_pool_schedule_indivisible_patch_names_axis_size_and_divisor():
    # 30 -> 15 -> 7.5: two halvings, so the axis must be a multiple of 4
    with pytest.raises(ValueError, match=r"patch_size\[1\]=30 is not divisible by 4"):
        pool_schedule((32, 30, 64))


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ((64,), "2 .* or 3 .* entries, got 1"),
        ((8, 64, 64, 64), "got 4"),
        ((32, -64, 64), r"patch_size\[1\] must be a positive int, got -64"),
        ((32, 64.0, 64), r"got 64\.0"),
        ("64", "sequence"),
    ],
)
def test_pool_schedule_rejects_bad_patch(patch, message):
    with pytest.raises(ValueError, match=message):
        pool_schedule(patch)


# --------------------------------------------------------------------------
# argument validation of the networks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("net", [UNet, ResUNet])
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(base_features=-4), "base_features must be a positive int, got -4"),
        (dict(in_channels=0), "in_channels must be a positive int, got 0"),
        (dict(num_classes=2.5), "num_classes must be a positive int, got 2.5"),
        (dict(max_features=2), "max_features=2 must be >= base_features=4"),
        (dict(patch_size=(16, 30, 32)), r"patch_size\[1\]=30 is not divisible by 4"),
        (dict(patch_size=(16, 32, 32, 32)), "got 4"),
        (dict(patch_size=(4, 4, 4)), "allows no pooling"),
        (dict(deep_supervision=1), "deep_supervision must be True or False, got 1"),
    ],
)
def test_networks_reject_bad_arguments(net, override, message):
    kwargs = dict(in_channels=1, num_classes=2, **TINY) | override
    with pytest.raises(ValueError, match=message):
        net(**kwargs)


def test_build_network_dispatches_and_lists_valid_kinds():
    assert isinstance(build_network("unet", in_channels=1, num_classes=2, **TINY), UNet)
    assert isinstance(build_network("resunet", in_channels=2, **TINY), ResUNet)
    with pytest.raises(ValueError, match=r"'vnet'.*\['resunet', 'unet'\]"):
        build_network("vnet", in_channels=1, **TINY)


def test_forward_rejects_indivisible_or_wrong_channel_input():
    net = ResUNet(in_channels=2, **TINY)
    with pytest.raises(ValueError, match=r"divisible by \(4, 8, 8\)"):
        net(torch.zeros(1, 2, 16, 36, 32))
    with pytest.raises(ValueError, match=r"got \(1, 1, 16, 32, 32\)"):
        net(torch.zeros(1, 1, 16, 32, 32))


# --------------------------------------------------------------------------
# output shapes and the forward contract
# --------------------------------------------------------------------------


@pytest.mark.parametrize("deep_supervision", [True, False])
@pytest.mark.parametrize("patch", [(16, 32, 32), (32, 32)])
def test_unet_output_shapes(patch, deep_supervision):
    net = UNet(
        in_channels=1,
        num_classes=2,
        patch_size=patch,
        base_features=4,
        deep_supervision=deep_supervision,
    )
    x = torch.randn(2, 1, *patch)
    for mode in (net.train, net.eval):
        mode()
        outputs = net(x)
        assert isinstance(outputs, list)
        assert len(outputs) == (len(net.decoder) if deep_supervision else 1)
        assert all(out.shape == (2, 2, *patch) for out in outputs)
    assert len(net.decoder) == len(pool_schedule(patch))


@pytest.mark.parametrize(
    ("residual", "deep_supervision", "in_channels"),
    list(itertools.product([True, False], [True, False], [1, 2])),
)
def test_resunet_output_shapes(residual, deep_supervision, in_channels):
    net = ResUNet(
        in_channels=in_channels,
        residual=residual,
        deep_supervision=deep_supervision,
        **TINY,
    )
    outputs = net(torch.randn(2, in_channels, 16, 32, 32))
    assert len(outputs) == (3 if deep_supervision else 1)  # 3 decoder levels
    assert all(out.shape == (2, 3, 16, 32, 32) for out in outputs)


def test_resunet_2d_output_shapes():
    net = ResUNet(in_channels=2, patch_size=(32, 32), base_features=4)
    outputs = net(torch.randn(2, 2, 32, 32))
    assert [out.shape for out in outputs] == [(2, 3, 32, 32)] * 3
    assert net.stem.kernel_size == (3, 3)


@pytest.mark.parametrize("kind", ["unet", "resunet"])
def test_inputs_larger_than_patch_are_accepted(kind):
    net = build_network(kind, in_channels=1, num_classes=3, **TINY).eval()
    with torch.no_grad():
        outputs = net(torch.randn(1, 1, 20, 40, 48))  # divisible by (4, 8, 8)
    assert all(out.shape == (1, 3, 20, 40, 48) for out in outputs)


def test_deep_supervision_heads_are_ordered_finer_to_coarser():
    net = ResUNet(in_channels=1, **TINY)
    # head i reads decoder level i (width F_i // 2 = 2, 4, 8)
    assert [head.in_channels for head in net.heads] == [2, 4, 8]
    assert [head.out_channels for head in net.heads] == [3, 3, 3]


# --------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------


def test_resunet_encoder_structure():
    net = ResUNet(in_channels=2, **TINY)
    assert net.stem.kernel_size == (1, 3, 3)
    assert [down.stride for down in net.down] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert [(down.in_channels, down.out_channels) for down in net.down] == [
        (4, 8),
        (8, 16),
        (16, 32),
    ]
    assert all(isinstance(block.shortcut, nn.Identity) for block in net.encoder)
    assert not any(isinstance(m, nn.MaxPool3d) for m in net.modules())


def test_resunet_decoder_adds_encoder_output_instead_of_concatenating():
    net = ResUNet(in_channels=1, **TINY)
    widths = [4, 8, 16, 32]
    seen = {}
    for level, block in enumerate(net.decoder):
        block.register_forward_hook(
            lambda mod, inputs, out, level=level: seen.update(
                {level: inputs[0].shape[1]}
            )
        )
    net(torch.randn(1, 1, 16, 32, 32))
    # a concatenating decoder would see 2 * F_l channels
    assert seen == {0: 4, 1: 8, 2: 16}
    assert [up.out_channels for up in net.up] == widths[:3]
    assert [up.in_channels for up in net.up] == [
        4,
        8,
        32,
    ]  # F_{l+1} // 2, bottleneck F_3
    for level, block in enumerate(net.decoder):
        first_conv, projection = block.body[2], block.shortcut
        assert (first_conv.in_channels, first_conv.out_channels) == (
            widths[level],
            widths[level] // 2,
        )
        assert projection.kernel_size == (1, 1, 1)
        assert (projection.in_channels, projection.out_channels) == (
            widths[level],
            widths[level] // 2,
        )


def test_resunet_without_residual_has_no_shortcuts():
    plain = ResUNet(in_channels=1, residual=False, **TINY)
    residual = ResUNet(in_channels=1, residual=True, **TINY)
    assert all(block.shortcut is None for block in [*plain.encoder, *plain.decoder])
    one_by_one = [
        m
        for m in plain.modules()
        if isinstance(m, nn.Conv3d) and m.kernel_size == (1, 1, 1)
    ]
    assert len(one_by_one) == len(plain.heads)
    # exactly the decoder projections (F_l -> F_l // 2, with bias) are missing
    projections = sum(w * (w // 2) + w // 2 for w in (4, 8, 16))
    assert count_parameters(residual) - count_parameters(plain) == projections


def test_unet_decoder_concatenates_and_pools_with_schedule():
    net = UNet(in_channels=1, num_classes=2, **TINY)
    assert [block[0].in_channels for block in net.decoder] == [8, 16, 32]  # 2 * F_l
    assert [pool.kernel_size for pool in net.pools] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(norm.affine for norm in norms)
    assert all(
        m.negative_slope == 0.01 for m in net.modules() if isinstance(m, nn.LeakyReLU)
    )


def test_feature_widths_are_capped():
    net = UNet(
        in_channels=1, num_classes=2, patch_size=(80, 160, 160), base_features=30
    )
    widths = [block[0].out_channels for block in net.encoder]
    assert widths == [30, 60, 120, 240, 320, 320]


@pytest.mark.parametrize(
    ("net", "low", "high"),
    [
        (
            lambda: UNet(in_channels=1, num_classes=2, patch_size=(80, 160, 160)),
            25e6,
            35e6,
        ),
        (lambda: ResUNet(in_channels=2, patch_size=(40, 128, 128)), 20e6, 30e6),
        (
            lambda: ResUNet(in_channels=2, patch_size=(40, 128, 128), residual=False),
            20e6,
            30e6,
        ),
    ],
)
def test_paper_size_networks_build_with_plausible_size(net, low, high):
    # construction only: a forward pass at paper size is too slow on CPU
    assert low < count_parameters(net()) < high


def test_resunet_overfits_one_patch():
    net = ResUNet(in_channels=1, num_classes=2, **TINY)
    x = torch.randn(1, 1, 16, 32, 32)
    target = torch.zeros(1, 16, 32, 32, dtype=torch.long)
    target[:, 4:12, 8:24, 8:24] = 1
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = deep_supervision_loss(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.0
    assert losses[-1] < 0.2


def test_resunet_needs_base_features_that_can_be_halved():
    with pytest.raises(ValueError, match="base_features must be >= 2 .* got 1"):
        ResUNet(in_channels=1, patch_size=(16, 32, 32), base_features=1)
