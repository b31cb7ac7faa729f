import math

import pytest
import torch

from common.networks.contrastive import pairwise_dice, soft_contrastive_loss, soft_targets


def _masks():
    a = torch.zeros(1, 4, 4)
    a[0, :2, :2] = 1  # 4 pixels
    b = torch.zeros(1, 4, 4)
    b[0, :2, :] = 1  # 8 pixels, contains a
    c = torch.zeros(1, 4, 4)
    c[0, 3, 3] = 1  # 1 pixel, disjoint
    empty = torch.zeros(1, 4, 4)
    return torch.stack([a, b, c, empty])


def test_pairwise_dice_hand_computed():
    d = pairwise_dice(_masks())
    assert d.shape == (4, 4)
    # a vs b: 2*4 / (4+8) = 2/3; a vs c and b vs c: 0; diagonal 1
    assert d[0, 1].item() == pytest.approx(2 / 3, abs=1e-5)
    assert d[1, 0].item() == pytest.approx(2 / 3, abs=1e-5)
    assert d[0, 2].item() == pytest.approx(0.0, abs=1e-5)
    assert torch.allclose(torch.diagonal(d)[:3], torch.ones(3), atol=1e-5)
    # two empty masks are the same target; empty vs non-empty share nothing
    assert d[3, 3].item() == pytest.approx(1.0)
    assert d[3, 0].item() == pytest.approx(0.0, abs=1e-5)


def test_tsdm_targets_are_softmax_of_dice():
    d = pairwise_dice(_masks())
    t = soft_targets(d, temperature=0.5)
    assert torch.allclose(t.sum(dim=1), torch.ones(4))
    row0 = torch.tensor([1.0, 2 / 3, 0.0, 0.0]) / 0.5
    assert torch.allclose(t[0], torch.softmax(row0, dim=0), atol=1e-5)
    # a and b overlap: a's target puts more mass on b than on the disjoint c
    assert t[0, 1] > t[0, 2]


def test_loss_hand_computed_two_samples():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # cosines: identity; logits = I / 0.5; log_softmax of [2, 0] = 2 - log(e^2 + 1)
    expected = -(2 - math.log(math.exp(2) + 1))
    loss = soft_contrastive_loss(img, txt, None, temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # soft targets [[0.75, 0.25], [0.25, 0.75]] given as a similarity whose softmax is that
    sim = torch.log(torch.tensor([[3.0, 1.0], [1.0, 3.0]]))
    loss_soft = soft_contrastive_loss(img, txt, sim, target_temperature=1.0, temperature=tau)
    ls = [2 - math.log(math.exp(2) + 1), -math.log(math.exp(2) + 1)]
    expected_soft = -(0.75 * ls[0] + 0.25 * ls[1])
    assert loss_soft.item() == pytest.approx(expected_soft, rel=1e-5)


def test_tsdm_does_not_punish_pairs_with_the_same_target():
    # samples 0 and 1 have the same mask: with TSDM, text 1 is as good a match for image 0
    # as text 0, so swapping their texts leaves the loss unchanged; the one-to-one loss rises
    torch.manual_seed(0)
    img = torch.randn(3, 8)
    txt = img.clone()
    swapped = txt[[1, 0, 2]]
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2] = 1
    masks[1, 0, :2] = 1
    masks[2, 0, 3:] = 1
    dice = pairwise_dice(masks)
    soft = soft_contrastive_loss(img, txt, dice, target_temperature=0.1, temperature=0.1)
    soft_swapped = soft_contrastive_loss(img, swapped, dice, target_temperature=0.1, temperature=0.1)
    hard = soft_contrastive_loss(img, txt, None, temperature=0.1)
    hard_swapped = soft_contrastive_loss(img, swapped, None, temperature=0.1)
    assert soft_swapped.item() == pytest.approx(soft.item(), rel=1e-4)
    assert hard_swapped > hard + 1.0


def test_loss_gradients_and_shape_errors():
    img = torch.randn(4, 16, requires_grad=True)
    txt = torch.randn(4, 16, requires_grad=True)
    loss = soft_contrastive_loss(img, txt, pairwise_dice(_masks()))
    loss.backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    assert txt.grad is not None and txt.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        soft_contrastive_loss(torch.randn(4, 16), torch.randn(3, 16))
    with pytest.raises(ValueError):
        soft_contrastive_loss(torch.randn(4, 16), torch.randn(4, 16), torch.rand(3, 3))
