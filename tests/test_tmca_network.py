import pytest
import torch

from bundles.tmca.scripts.losses import TMCALoss
from bundles.tmca.scripts.network import (
    GuidedDecoderBlock,
    TMCA,
    language_enhancement_map,
    sincos_1d,
    sincos_2d,
)
from common.networks.image_encoders import TimmFeatureEncoder

SIZE = 64


@pytest.fixture(scope="module")
def batch(tokenizer):
    texts = ["one small polyp, top left", "one large polyp, located in bottom right of the image", "two polyps"]
    ids, mask = tokenizer.tokenize(texts)
    torch.manual_seed(0)
    image = torch.randn(3, 3, SIZE, SIZE)
    label = torch.zeros(3, 1, SIZE, SIZE)
    label[0, :, :16, :16] = 1
    label[1, :, 40:, 40:] = 1
    label[2, :, 10:30, 20:50] = 1
    return image, ids, mask, label


def make_net(text_encoder, **kwargs):
    torch.manual_seed(0)
    return TMCA(TimmFeatureEncoder("convnext_atto"), text_encoder, **kwargs)


def test_sincos_shapes_and_uniqueness():
    enc = sincos_2d(4, 6, 32)
    assert enc.shape == (24, 32)
    assert torch.unique(enc, dim=0).shape[0] == 24  # every position differs
    assert sincos_1d(5, 7).shape == (5, 7)


def test_decoder_block_shapes_and_gradients():
    block = GuidedDecoderBlock(32, 16, num_heads_self=1, num_heads_cross=4)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    text = torch.randn(2, 5, 32, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    skip = torch.randn(2, 16, 8, 8)
    out = block(x, text, mask, skip)
    assert out.shape == (2, 16, 8, 8)
    out.sum().backward()
    assert x.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    # padded tokens are masked out: they receive no gradient
    assert text.grad[0, 3:].abs().sum() == 0
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


def test_ltem_map_gates_where_the_text_points():
    image = torch.zeros(1, 2, 3, 3)
    image[0, 0] = 1.0  # every position points along channel 0 ...
    image[0, :, 1, 2] = torch.tensor([0.0, 1.0])  # ... except (1, 2), which points along channel 1
    text = torch.tensor([[0.0, 1.0]])  # the text points along channel 1
    # eq. 2: cosine of each position with the text (1 at (1, 2), 0 elsewhere), softmax over positions
    raw = language_enhancement_map(image, text, temperature=0.1, mean_one=False, scale_factor=1)
    expected = torch.softmax(torch.tensor([0.0] * 5 + [1.0] + [0.0] * 3) / 0.1, dim=0)
    assert torch.allclose(raw.flatten(), expected, atol=1e-6)
    # upsampled x2 to the decoder block's output size, peak kept at (1, 2)
    up = language_enhancement_map(image, text, temperature=0.1, mean_one=False)
    assert up.shape == (1, 1, 6, 6)
    assert divmod(up.flatten().argmax().item(), 6)[0] in (2, 3) and divmod(up.flatten().argmax().item(), 6)[1] in (4, 5)
    # mean_one rescales by the number of positions
    scaled = language_enhancement_map(image, text, temperature=0.1, mean_one=True)
    assert torch.allclose(scaled, up * 9)
    # a text orthogonal to every position gives a uniform map of ones
    uniform = language_enhancement_map(torch.ones(1, 2, 3, 3) * torch.tensor([1.0, 0.0])[None, :, None, None],
                                       torch.tensor([[0.0, 1.0]]), 0.1, True)
    assert torch.allclose(uniform, torch.ones_like(uniform))


def test_forward_shapes_train_and_eval(text_encoder, batch):
    image, ids, mask, label = batch
    net = make_net(text_encoder)
    net.train()
    out = net(image, ids, mask)
    assert out["pred"].shape == (3, 1, SIZE, SIZE)
    assert set(out["alignment"]) == {"global", "32", "16", "8"}
    channels = {"global": 320, "32": 320, "16": 160, "8": 80}  # convnext_atto
    for level, (img, txt) in out["alignment"].items():
        assert img.shape == txt.shape == (3, channels[level])
    net.eval()
    with torch.no_grad():
        logits = net(image, ids, mask)
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 1, SIZE, SIZE)


def test_every_trainable_parameter_gets_a_gradient(text_encoder, batch):
    image, ids, mask, label = batch
    net = make_net(text_encoder)
    net.train()
    terms = TMCALoss()(net(image, ids, mask), label)
    assert set(terms) == {"loss", "seg", "align"}
    terms["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    # the frozen text encoder is not trained
    assert all(not p.requires_grad for p in net.text_encoder.parameters())


def test_the_text_changes_the_prediction(text_encoder, batch):
    image, ids, mask, _ = batch
    net = make_net(text_encoder).eval()
    with torch.no_grad():
        a = net(image[:1], ids[:1], mask[:1])
        b = net(image[:1], ids[1:2], mask[1:2])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "levels,use_ltem",
    [([], False), (["global"], True), (["global", "32"], True), (["global", "32", "16"], True), ("[]", True)],
)
def test_ablation_switches(text_encoder, batch, levels, use_ltem):
    image, ids, mask, label = batch
    net = make_net(text_encoder, alignment_levels=levels, use_ltem=use_ltem)
    net.train()
    out = net(image, ids, mask)
    expected = [] if levels == "[]" else levels
    assert list(out["alignment"]) == expected
    terms = TMCALoss()(out, label)
    if not expected:
        assert terms["align"].item() == 0.0
    terms["loss"].backward()


def test_bad_inputs(text_encoder, batch):
    image, ids, mask, _ = batch
    net = make_net(text_encoder).eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 3, 50, 64), ids[:1], mask[:1])
    with pytest.raises(ValueError, match="unknown alignment levels"):
        make_net(text_encoder, alignment_levels=["4"])


def test_loss_terms_and_flags(batch):
    _, _, _, label = batch
    logits = torch.randn(3, 1, SIZE, SIZE)
    img, txt = torch.randn(3, 8), torch.randn(3, 8)
    out = {"pred": logits, "alignment": {"global": (img, txt)}}
    with_tsdm = TMCALoss(target_informed=True)(out, label)
    without = TMCALoss(target_informed="false")(out, label)  # command-line spelling
    # the labels are disjoint, so Dice targets are (nearly) one-hot: both agree closely
    assert with_tsdm["align"].item() == pytest.approx(without["align"].item(), rel=1e-2)
    weighted = TMCALoss(alignment_weight=0.5)(out, label)
    assert weighted["loss"].item() == pytest.approx(weighted["seg"].item() + 0.5 * weighted["align"].item(), rel=1e-5)
    plain = TMCALoss()(logits, label)  # a plain tensor output has no alignment term
    assert plain["align"].item() == 0.0
    empty = TMCALoss()({"pred": logits, "alignment": {"global": (img, txt)}}, torch.zeros_like(label))
    assert torch.isfinite(empty["loss"])


def test_ltem_gates_the_decoder_output(text_encoder, batch, monkeypatch):
    import bundles.tmca.scripts.network as network

    image, ids, mask, _ = batch
    net = make_net(text_encoder).eval()
    with torch.no_grad():
        open_gate = net(image, ids, mask)
    # a gate of zeros silences the decoder blocks: the output no longer depends on image or text
    monkeypatch.setattr(network, "language_enhancement_map",
                        lambda x, *a, **k: torch.zeros_like(x[:, :1]).repeat_interleave(2, 2).repeat_interleave(2, 3))
    with torch.no_grad():
        closed = net(image, ids, mask)
    assert not torch.allclose(open_gate[0], open_gate[1])
    assert torch.allclose(closed[0], closed[1], atol=1e-6)
    assert torch.allclose(closed[0], closed[2], atol=1e-6)


def test_train_yaml_loads_the_imagenet_1k_convnext_tiny_of_the_reference_code(monkeypatch, caplog):
    """`image_encoder_weights: timm` with train.yaml's `image_encoder` asks timm for `convnext_tiny.fb_in1k` (the
    ImageNet-1k weights Ariadne uses), not a bare `convnext_tiny`, which timm resolves to its default tag
    (`in12k_ft_in1k` in timm 1.0). timm.create_model is replaced: nothing is downloaded."""
    from pathlib import Path

    import timm

    from bundle_runner import bundle_parser

    calls = []
    create = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    parser = bundle_parser(Path(__file__).resolve().parents[1] / "bundles" / "tmca", "train")
    assert parser.get_parsed_content("image_encoder_weights") == "timm"
    encoder = parser.get_parsed_content("network_def#image_encoder")
    assert calls == [("convnext_tiny.fb_in1k", True)]
    assert encoder.timm_name == "convnext_tiny.fb_in1k" and encoder.body.pretrained_cfg["tag"] == "fb_in1k"
    # a bare name: the tag timm would load is named (the one its model's pretrained_cfg carries), with a warning
    calls.clear()
    with caplog.at_level("WARNING"):
        bare = TimmFeatureEncoder("convnext_tiny", weights="timm")
    default = bare.body.pretrained_cfg["tag"]
    assert default != "fb_in1k" and calls == [(f"convnext_tiny.{default}", True)]
    assert bare.timm_name == f"convnext_tiny.{default}" and f"convnext_tiny.{default}" in caplog.text
