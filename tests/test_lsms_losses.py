"""LSMS loss terms against hand-made cases."""

import math

import pytest
import torch

from bundles.lsms.scripts.losses import (
    LSMSLoss, boundary_band, boundary_weights, pixel_text_contrastive_loss, weighted_dice_loss,
)


def square_mask(size=7, lo=2, hi=5):
    m = torch.zeros(1, 1, size, size)
    m[..., lo:hi, lo:hi] = 1
    return m


def test_boundary_band_of_a_square_by_hand():
    band = boundary_band(square_mask(), kernel_size=3)[0, 0]
    # 3x3 square at rows/cols 2..4: dilation is the 5x5 square 1..5, erosion the centre pixel (3, 3)
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1
    expected[3, 3] = 0
    assert torch.equal(band, expected)
    weights = boundary_weights(square_mask(), weight=1.2, kernel_size=3)[0, 0]
    assert weights[3, 3] == 1.0 and weights[0, 0] == 1.0
    assert torch.allclose(weights[1, 1], torch.tensor(1.2)) and int((weights > 1).sum()) == 24


def test_boundary_band_bad_kernel():
    with pytest.raises(ValueError, match="odd"):
        boundary_band(square_mask(), kernel_size=4)


def test_weighted_dice_by_hand():
    target = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    probs = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    weights = torch.tensor([[[[2.0, 1.0, 1.0, 1.0]]]])
    # intersection 2*1*1 = 2; sum(w p) = 2 + 1 = 3; sum(w g) = 2 + 1 = 3 -> dice 4/6
    assert math.isclose(weighted_dice_loss(probs, target, weights, smooth=0.0).item(), 1 - 4 / 6, rel_tol=1e-6)


def test_contrastive_loss_worked_by_hand():
    # 1 image, 2-d features on a 1x3 map: pixel 0 is lesion, pixels 1-2 background
    feats = torch.tensor([[[[1.0, 0.0, 0.6]], [[0.0, 1.0, 0.8]]]])  # (1, 2, 1, 3)
    text = torch.tensor([[2.0, 0.0]])  # normalised to (1, 0)
    target = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    tau = 0.1
    # p.L = 1, p.n1 = 0, p.n2 = 0.6 (unit vectors already)
    prob = math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0) + math.exp(0.6 / tau))
    got = pixel_text_contrastive_loss(feats, text, target, temperature=tau, max_pixels=None, use_log=False)
    assert math.isclose(got.item(), 1 - prob, rel_tol=1e-5)
    got_log = pixel_text_contrastive_loss(feats, text, target, temperature=tau, max_pixels=None, use_log=True)
    assert math.isclose(got_log.item(), -math.log(prob), rel_tol=1e-5)


def test_contrastive_loss_skips_images_without_lesion_or_background():
    feats = torch.randn(2, 4, 3, 3, requires_grad=True)
    text = torch.randn(2, 4)
    target = torch.zeros(2, 1, 3, 3)
    target[1] = 1  # image 0 all background, image 1 all lesion: nothing to contrast
    loss = pixel_text_contrastive_loss(feats, text, target)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert feats.grad is not None


def test_total_loss_terms_and_alpha():
    torch.manual_seed(0)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:10, 4:10] = 1
    outputs = {"pred": torch.randn(2, 1, 16, 16, requires_grad=True),
               "pixel_features": torch.randn(2, 8, 4, 4, requires_grad=True),
               "text_feature": torch.randn(2, 8, requires_grad=True)}
    terms = LSMSLoss(alpha=0.125, max_pixels=None)(outputs, target)
    assert set(terms) == {"loss", "focal", "dice", "con"}
    assert math.isclose(terms["loss"].item(), (terms["focal"] + terms["dice"] + 0.125 * terms["con"]).item(), rel_tol=1e-6)
    terms["loss"].backward()
    assert outputs["pixel_features"].grad.abs().sum() > 0 and outputs["text_feature"].grad.abs().sum() > 0
    no_con = LSMSLoss(alpha=0.0)(outputs, target)
    assert no_con["con"].item() == 0.0


def test_all_empty_masks_give_a_finite_loss():
    outputs = {"pred": torch.full((2, 1, 8, 8), -3.0, requires_grad=True),
               "pixel_features": torch.randn(2, 4, 2, 2), "text_feature": torch.randn(2, 4)}
    terms = LSMSLoss()(outputs, torch.zeros(2, 1, 8, 8))
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    assert torch.isfinite(outputs["pred"].grad).all()
    assert torch.isfinite(LSMSLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))["loss"])


def _decoder_like_batch(seed=0):
    """Post-ReLU decoder features (non-negative, as the Hamburger head gives them), a random text feature,
    a lesion of 10x10 feature pixels among 900: ~800 negatives per positive pixel."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.relu(torch.randn(2, 32, 30, 30, generator=g)).requires_grad_(True)
    text = torch.randn(2, 32, generator=g)
    target = torch.zeros(2, 1, 120, 120)
    target[:, :, 40:80, 40:80] = 1
    return feats, text, target


def test_the_default_contrastive_term_has_a_real_gradient_and_moves_the_features():
    feats, text, target = _decoder_like_batch()
    loss_fn = LSMSLoss(alpha=1.0, max_pixels=None)
    con = pixel_text_contrastive_loss(feats, text, target, loss_fn.temperature, None, loss_fn.normalize, loss_fn.use_log)
    con.backward()
    assert feats.grad.norm() > 1e-2  # eq. 14 taken literally (1 - p) sits at 0.9999 with gradients near 1e-7

    def mean_prob(f):
        return 1 - pixel_text_contrastive_loss(f, text, target, loss_fn.temperature, None, True, False).item()

    def train_features(use_log):
        moved = feats.detach().clone().requires_grad_(True)
        optimizer = torch.optim.SGD([moved], lr=100.0)
        for _ in range(10):
            optimizer.zero_grad()
            pixel_text_contrastive_loss(moved, text, target, loss_fn.temperature, None, loss_fn.normalize,
                                        use_log).backward()
            optimizer.step()
        return mean_prob(moved.detach())

    before = mean_prob(feats.detach())
    assert before < 1e-3
    assert train_features(loss_fn.use_log) > 0.5  # lesion pixels moved towards the text, away from the rest
    assert train_features(False) < 10 * before  # the literal eq. 14 barely moves them in the same ten steps
