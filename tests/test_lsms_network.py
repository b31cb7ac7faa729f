"""LSMS modules: shapes, gradients, masking, the NMF head, the paper-sized network's size."""

import pytest
import torch
from torch import nn

from bundles.lsms.scripts.hamburger import LightHamHead, NMF2D
from bundles.lsms.scripts.network import LSMS, SVLA, ConvUnit, EncoderBlock, LanguageGuidedBranch

TINY = dict(depths=(1, 1, 1, 1), channels=(8, 16, 24, 32), mlp_ratios=(2, 2, 2, 2), ham_channels=16,
            decoder_channels=16, nmf_rank=4)


class FakeWords(nn.Module):
    """A text encoder stand-in: embeds ids into ``hidden_size`` features (trainable)."""

    def __init__(self, hidden_size=12, vocab=50):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(vocab, hidden_size)

    def forward(self, ids, mask):
        return self.embed(ids)


def words(b=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 3:] = 0
    return ids, mask


def test_conv_unit_is_a_depthwise_strip_pair():
    unit = ConvUnit(4, 7)
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    assert unit(x).shape == x.shape
    assert unit.horizontal.weight.shape == (4, 1, 1, 7) and unit.vertical.weight.shape == (4, 1, 7, 1)
    unit(x).sum().backward()
    assert x.grad is not None and unit.horizontal.weight.grad.abs().sum() > 0


def test_language_branch_shapes_and_ignores_padding_words():
    branch = LanguageGuidedBranch(channels=6, text_channels=12).eval()
    v = torch.randn(2, 6, 5, 7)
    w = torch.randn(2, 4, 12, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = branch(v, w, mask)
    assert out.shape == v.shape
    changed = w.detach().clone()
    changed[0, 2:] = 100.0  # padding words of sample 0
    assert torch.allclose(branch(v, changed, mask)[0], out[0], atol=1e-5)
    out.sum().backward()
    assert w.grad[0, :2].abs().sum() > 0 and w.grad[0, 2:].abs().sum() == 0


def test_svla_gates_its_input_and_runs_without_language():
    v = torch.randn(2, 8, 6, 6, requires_grad=True)
    w, m = torch.randn(2, 3, 12), torch.ones(2, 3)
    with_text = SVLA(8, 12)
    assert with_text(v, w, m).shape == v.shape
    without = SVLA(8, None)
    assert without.language is None and without(v).shape == v.shape
    # F_att = Conv1x1(...) * V: a zero input gives a zero output
    assert without(torch.zeros(1, 8, 6, 6)).abs().max() == 0
    with_text(v, w, m).sum().backward()
    assert v.grad.abs().sum() > 0
    assert with_text.language.w_l1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pre_norm", [False, True])
def test_encoder_block_shapes_and_gradients(pre_norm):
    block = EncoderBlock(8, 12, mlp_ratio=2, kernels=(3, 5), pre_norm=pre_norm)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    y = block(x, torch.randn(2, 3, 12), torch.ones(2, 3))
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


def test_nmf_reconstructs_a_low_rank_non_negative_map():
    torch.manual_seed(0)
    bases, codes = torch.rand(1, 16, 3), torch.rand(1, 3, 64)
    x = torch.bmm(bases, codes).reshape(1, 16, 8, 8)
    nmf = NMF2D(channels=16, rank=3, steps_train=50, steps_eval=50).eval()
    out = nmf(x)
    assert out.shape == x.shape and (out >= 0).all()
    assert (out - x).norm() / x.norm() < 0.1
    assert torch.equal(nmf(x), out)  # eval mode: the same bases every call


def test_nmf_carries_gradient_in_training():
    nmf = NMF2D(channels=8, rank=4).train()
    x = torch.rand(2, 8, 5, 5, requires_grad=True)
    nmf(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_eval_bases_do_not_depend_on_the_position_in_the_batch():
    """The same image at batch index 0 and 1 gives the same output, equal to batch-1 inference."""
    torch.manual_seed(0)
    nmf = NMF2D(channels=8, rank=4).eval()
    x = torch.rand(1, 8, 5, 5)
    one = nmf(x)
    two = nmf(torch.cat([x, x]))
    assert torch.equal(two[0], two[1])
    assert torch.allclose(two[:1], one, atol=1e-6)
    head = LightHamHead(in_channels=12, ham_channels=8, channels=8, rank=4).eval()
    y = torch.randn(1, 12, 6, 6)
    assert torch.allclose(head(torch.cat([torch.randn(1, 12, 6, 6), y]))[1:], head(y), atol=1e-5)


def test_ham_head_shapes():
    head = LightHamHead(in_channels=40, ham_channels=32, channels=16, rank=4)
    x = torch.randn(2, 40, 6, 6, requires_grad=True)
    assert head(x).shape == (2, 16, 6, 6)
    head(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_lsms_training_output_and_gradients_reach_every_trainable_part():
    torch.manual_seed(0)
    net = LSMS(FakeWords(), **TINY).train()
    ids, mask = words()
    out = net(torch.randn(2, 3, 64, 64), ids, mask)
    assert out["pred"].shape == (2, 1, 64, 64)
    assert out["pixel_features"].shape == (2, 16, 16, 16)  # 1/4 resolution
    assert out["text_feature"].shape == (2, 16)
    (out["pred"].mean() + out["pixel_features"].mean() + out["text_feature"].mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert net.text_encoder.embed.weight.grad.abs().sum() > 0  # the text encoder is fine-tuned


def test_lsms_eval_returns_logits_and_depends_on_the_text():
    torch.manual_seed(0)
    net = LSMS(FakeWords(), **TINY).eval()
    image = torch.randn(1, 3, 64, 64)
    a = net(image, *words(1, seed=1))
    b = net(image, *words(1, seed=2))
    assert a.shape == (1, 1, 64, 64) and not torch.allclose(a, b)


def test_text_free_lsms_has_no_language_parts():
    net = LSMS(None, use_text=False, **TINY).train()
    assert net.text_encoder is None and net.text_projection is None
    assert not any("language" in n for n, _ in net.named_parameters())
    out = net(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)


@pytest.mark.parametrize("stages", [(4,), (3, 4), (1, 2, 3, 4)])
def test_decoder_stage_choices(stages):
    net = LSMS(FakeWords(), decoder_stages=stages, **TINY).eval()
    assert net.decoder.squeeze[0].in_channels == sum(TINY["channels"][s - 1] for s in stages)
    assert net(torch.randn(1, 3, 64, 64), *words(1)).shape == (1, 1, 64, 64)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="decoder_stages"):
        LSMS(FakeWords(), decoder_stages=(5,), **{k: v for k, v in TINY.items()})
    with pytest.raises(ValueError, match="text_encoder"):
        LSMS(None, use_text=True, **TINY)
    net = LSMS(FakeWords(), **TINY)
    with pytest.raises(ValueError, match="text_ids"):
        net(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="at least 64"):
        net(torch.randn(1, 3, 32, 32), *words(1))


def test_paper_sized_image_network_matches_the_papers_parameter_count():
    """Table I widths and depths, text-free: within 10 % of the paper's 8.78 M."""
    net = LSMS(None, use_text=False)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(params - 8.78) / 8.78 < 0.10, params
    with_text = LSMS(FakeWords(hidden_size=768))
    extra = sum(p.numel() for n, p in with_text.named_parameters() if not n.startswith("text_encoder")) / 1e6 - params
    assert extra > 0  # the language branch adds its projections
