"""Unit tests for kitscascade.losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kitscascade.losses import (
    deep_supervision_loss,
    deep_supervision_weights,
    dice_bce_region_loss,
    dice_ce_loss,
    region_targets,
    soft_dice_loss,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _target() -> torch.Tensor:
    target = torch.zeros(2, 4, 6, 6, dtype=torch.long)
    target[:, 1:3, 1:4, 1:4] = 1
    target[0, 2, 2, 2] = 2
    return target


def _logits_for(
    labels: torch.Tensor, num_classes: int = 3, scale: float = 50.0
) -> torch.Tensor:
    return scale * F.one_hot(labels, num_classes).movedim(-1, 1).float()


def test_dice_loss_is_zero_for_perfect_and_one_for_wrong_prediction():
    target = _target()
    assert soft_dice_loss(_logits_for(target), target).item() == pytest.approx(
        0.0, abs=1e-4
    )
    wrong = (target + 1) % 3  # every voxel predicted as another class
    assert soft_dice_loss(_logits_for(wrong), target).item() == pytest.approx(
        1.0, abs=1e-4
    )


def test_dice_loss_matches_hand_computed_batch_dice():
    # one image, two voxels, 2 classes; p(class 1) = 0.5 on both, label [0, 1]
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[0, 1]])
    # class 1: intersection 0.5, sum p = 1, sum t = 1 -> dice 0.5
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(0.5)
    # background included: class 0 has the same dice -> mean 0.5
    assert soft_dice_loss(
        logits, target, eps=0.0, include_background=True
    ).item() == pytest.approx(0.5)


def test_dice_is_computed_over_the_whole_batch():
    # class 1 absent from image 0, present in image 1: batch Dice pools them
    logits = _logits_for(torch.tensor([[0, 0], [1, 1]]), num_classes=2)
    target = torch.tensor([[0, 0], [1, 0]])
    # class 1: intersection 1, sum p = 2, sum t = 1 -> 2/3
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(
        1 / 3, abs=1e-5
    )


def test_dice_ce_is_the_sum_of_its_parts():
    target = _target()
    logits = torch.randn(2, 3, 4, 6, 6)
    expected = F.cross_entropy(logits, target) + soft_dice_loss(logits, target)
    assert dice_ce_loss(logits, target).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_deep_supervision_weights():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(4, scheme="uniform") == [0.25] * 4
    with pytest.raises(ValueError, match="'linear'"):
        deep_supervision_weights(3, scheme="linear")
    with pytest.raises(ValueError, match="got 0"):
        deep_supervision_weights(0)


def test_deep_supervision_loss_with_one_head_equals_dice_ce():
    target = _target()
    logits = torch.randn(2, 3, 4, 6, 6)
    assert deep_supervision_loss([logits], target).item() == pytest.approx(
        dice_ce_loss(logits, target).item()
    )


def test_deep_supervision_loss_is_the_weighted_sum():
    target = _target()
    heads = [torch.randn(2, 3, 4, 6, 6) for _ in range(3)]
    expected = sum(
        w * dice_ce_loss(h, target) for w, h in zip([4 / 7, 2 / 7, 1 / 7], heads)
    )
    assert deep_supervision_loss(heads, target).item() == pytest.approx(
        expected.item(), rel=1e-6
    )
    custom = deep_supervision_loss(heads, target, weights=[1.0, 0.0, 0.0])
    assert custom.item() == pytest.approx(
        dice_ce_loss(heads[0], target).item(), rel=1e-6
    )


def test_deep_supervision_loss_rejects_mismatched_weights():
    target = _target()
    heads = [torch.randn(2, 3, 4, 6, 6) for _ in range(3)]
    with pytest.raises(ValueError, match="got 2 weights .* for 3 outputs"):
        deep_supervision_loss(heads, target, weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="empty"):
        deep_supervision_loss([], target)


def test_losses_reject_bad_target():
    logits = torch.randn(2, 3, 4, 6, 6)
    with pytest.raises(ValueError, match=r"target \(2, 4, 6\)"):
        dice_ce_loss(logits, torch.zeros(2, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.float32"):
        soft_dice_loss(logits, torch.zeros(2, 4, 6, 6))


def test_gradients_flow_to_every_head():
    target = _target()
    heads = [torch.randn(2, 3, 4, 6, 6, requires_grad=True) for _ in range(2)]
    deep_supervision_loss(heads, target).backward()
    for head in heads:
        assert head.grad is not None and head.grad.abs().sum() > 0


def test_loss_is_float32_under_autocast():
    target = _target()
    weight = torch.randn(3, 3, requires_grad=True)
    features = torch.randn(2, 4, 6, 6, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = (features @ weight).movedim(-1, 1)  # bf16 under autocast
        loss = dice_ce_loss(logits, target)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    loss.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


REGIONS = [(1, 2), (2,)]


def test_region_targets_are_nested_binary_maps():
    target = _target()
    maps = region_targets(target, REGIONS)
    assert maps.shape == (2, 2, 4, 6, 6) and maps.dtype == torch.float32
    assert torch.equal(maps[:, 0], (target > 0).float()) and torch.equal(maps[:, 1], (target == 2).float())
    assert (maps[:, 1] <= maps[:, 0]).all()


def test_region_loss_is_near_zero_for_perfect_and_large_for_inverted_logits():
    maps = region_targets(_target(), REGIONS)
    perfect = dice_bce_region_loss(50 * (2 * maps - 1), _target(), REGIONS)
    wrong = dice_bce_region_loss(-50 * (2 * maps - 1), _target(), REGIONS)
    assert perfect.dtype == torch.float32 and float(perfect) < 1e-3
    assert float(wrong) > 10  # BCE of confident mistakes plus a Dice loss near 1


def test_region_loss_is_bce_plus_mean_region_dice():
    target = _target()
    logits = torch.randn(2, 2, 4, 6, 6)
    maps = region_targets(target, REGIONS)
    probs = logits.sigmoid()
    dice = [(2 * (probs[:, r] * maps[:, r]).sum() + 1e-5) / (probs[:, r].sum() + maps[:, r].sum() + 1e-5)
            for r in range(2)]
    expected = F.binary_cross_entropy_with_logits(logits, maps) + 1 - sum(dice) / 2
    assert torch.allclose(dice_bce_region_loss(logits, target, REGIONS), expected, atol=1e-6)
    heads = [logits, torch.randn(2, 2, 4, 6, 6)]
    weighted = deep_supervision_loss(heads, target, [0.75, 0.25], regions=REGIONS)
    parts = [dice_bce_region_loss(h, target, REGIONS) for h in heads]
    assert torch.allclose(weighted, 0.75 * parts[0] + 0.25 * parts[1])


def test_region_loss_rejects_a_channel_count_other_than_the_regions():
    with pytest.raises(ValueError, match="2 regions"):
        dice_bce_region_loss(torch.randn(2, 3, 4, 6, 6), _target(), REGIONS)
