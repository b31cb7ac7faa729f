"""MONCH network parts: open_clip encoders, MGFE (FFT high-pass, dilated KNN), decoder, dynamic head, loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from bundles.monch.scripts.decoder import DynamicHead, FPNFusion, ProgressivePromptDecoder, QueryStage, sincos_2d
from bundles.monch.scripts.decode import DecodeClassesd, decode_classes
from bundles.monch.scripts.losses import MONCHLoss
from bundles.monch.scripts.mgfe import (
    MGFE,
    ConvBlock,
    HighFrequencyModule,
    TopologyModule,
    dilated_knn,
    high_pass,
    high_pass_mask,
    pairwise_sq_distances,
)
from bundles.monch.scripts.network import CLASS_NAMES, MONCH, load_prompts, to_image_grid
from common.networks.clip_encoders import OpenClipBackbone, build_open_clip, tiny_clip_config
from transforms.base.errors import PretrainedWeightsError

SIZE = 64


def backbone(**kwargs):
    torch.manual_seed(0)
    return OpenClipBackbone(model_cfg=tiny_clip_config(image_size=SIZE), **kwargs)


def make_net(**kwargs):
    b = backbone()
    torch.manual_seed(0)
    defaults = dict(feature_channels=32, attention_heads=4, head_channels=8)
    return MONCH(b, **{**defaults, **kwargs})


# ---- open_clip encoders -------------------------------------------------------------------------
def test_image_encoder_gives_spatial_map_at_any_size_and_learns():
    b = backbone()
    enc = b.image_encoder
    x = torch.randn(2, 3, SIZE, SIZE)
    fm = enc(x)
    assert fm.shape == (2, 32, SIZE // 8, SIZE // 8)
    # another input size: the positional embedding is interpolated, not cropped
    assert enc(torch.randn(1, 3, 96, 80)).shape == (1, 32, 12, 10)
    fm.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    assert all(p.requires_grad for p in enc.parameters())
    assert getattr(enc.visual, "proj", None) is None  # pooled head dropped: no unused weights under DDP


def test_resnet_tower_spatial_map():
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
           "text_cfg": {"context_length": 77, "width": 32, "heads": 2, "layers": 1}}
    b = OpenClipBackbone(model_cfg=cfg)
    assert b.image_encoder(torch.randn(1, 3, 64, 64)).shape == (1, 256, 2, 2)  # stride 32, width*32 channels


def test_text_encoder_frozen_77_tokens_and_cached():
    b = backbone()
    text = b.text_encoder
    assert text.tokenize(["a cell"]).shape == (1, 77)
    assert not any(p.requires_grad for p in text.parameters())
    a = text.encode(["a neoplastic nucleus", "background"])
    assert a.shape == (2, 32) and torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-5)
    assert len(text._cache) == 2
    again = text.encode(["background", "a neoplastic nucleus"])
    assert torch.equal(again[0], a[1]) and len(text._cache) == 2  # served from the cache
    b.train()
    assert not text.training  # stays in eval mode


def test_text_cache_holds_copies_not_views_of_the_batch():
    """Each cached string owns its storage: a row view of the encoded batch would keep the whole batch alive."""
    text = backbone().text_encoder
    batches = []
    encode_text = text.clip.encode_text

    def recording(*args, **kwargs):
        out = encode_text(*args, **kwargs)
        batches.append(out)
        return out

    text.clip.encode_text = recording
    text.encode(["a neoplastic nucleus", "background", "an inflammatory cell"])
    (batch,) = batches
    assert batch.dtype == torch.float32 and batch.device.type == "cpu"  # so .float().cpu() returned the batch itself
    for cached in text._cache.values():
        assert cached.untyped_storage().data_ptr() != batch.untyped_storage().data_ptr()
        assert cached.untyped_storage().nbytes() == cached.numel() * cached.element_size()


def test_missing_pretrained_weights_name_the_key(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="clip_pretrained.*none.bin"):
        build_open_clip(model_cfg=tiny_clip_config(), pretrained=str(tmp_path / "none.bin"))
    with pytest.raises(PretrainedWeightsError, match="clip_pretrained.*not_a_tag"):
        build_open_clip("RN50", pretrained="not_a_tag")
    with pytest.raises(ValueError, match="not an open_clip model"):
        build_open_clip("no-such-model", pretrained=None)


def test_default_model_has_a_1024_wide_text_embedding():
    import open_clip

    cfg = open_clip.get_model_config("ViT-H-14")
    assert cfg["embed_dim"] == 1024 and cfg["text_cfg"].get("context_length", 77) == 77


# ---- MGFE ---------------------------------------------------------------------------------------
def test_high_pass_on_a_known_signal():
    n = 16
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij")
    low = torch.cos(2 * math.pi * 1 * x / n)  # 1 cycle per 16 px: radius 0.125 of Nyquist
    high = torch.cos(2 * math.pi * 6 * x / n) * torch.cos(2 * math.pi * 5 * y / n)  # radius ~0.98
    signal = (3.0 + low + high)[None, None]
    out = high_pass(signal, cutoff=0.25)
    assert torch.allclose(out[0, 0], high, atol=1e-5)  # constant and low frequency removed
    assert torch.allclose(HighFrequencyModule(0.25)(signal), signal + high, atol=1e-5)  # eq. 4 residual
    assert torch.allclose(high_pass(signal, 0.0), signal, atol=1e-5)  # cut-off 0 keeps everything
    mask = high_pass_mask(8, 8, 0.25)
    assert not mask[0, 0] and mask[4, 4]  # DC removed, Nyquist corner kept


def test_high_pass_equals_the_fft_and_exports_to_onnx(tmp_path):
    """The DFT-matrix high-pass gives torch.fft's numbers, and the module exports (ONNX has no complex FFT)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 12)
    mask = high_pass_mask(9, 12, 0.3)
    reference = torch.fft.ifft2(torch.fft.fft2(x, norm="ortho") * mask, norm="ortho").real
    assert torch.allclose(high_pass(x, 0.3), reference, atol=1e-5)
    fy = torch.fft.fftfreq(9).abs() / 0.5
    fx = torch.fft.fftfreq(12).abs() / 0.5
    assert torch.equal(mask, torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) >= 0.3)
    import onnxruntime

    module = HighFrequencyModule(0.3).eval()
    torch.onnx.export(module, (x,), str(tmp_path / "hf.onnx"), dynamo=False, opset_version=17)
    session = onnxruntime.InferenceSession(str(tmp_path / "hf.onnx"))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - module(x).numpy()).max() < 1e-5


def test_pairwise_distances_and_dilated_knn_on_a_tiny_graph():
    pos = torch.tensor([0.0, 1.0, 3.0, 10.0, 11.5, 20.0])
    nodes = pos[None, :, None]  # (1, 6, 1)
    dist = pairwise_sq_distances(nodes)
    assert torch.allclose(dist[0], (pos[:, None] - pos[None, :]) ** 2)
    idx = dilated_knn(nodes, k=3, dilation=1)[0]
    assert idx[0].tolist() == [0, 1, 2] and idx[3].tolist() == [3, 4, 2]
    # dilation 2: the 6 nearest of node 0 by distance are 0,1,2,3,4,5 -> every 2nd: 0,2,4
    assert dilated_knn(nodes, k=3, dilation=2)[0, 0].tolist() == [0, 2, 4]
    # more neighbours than nodes: k shrinks to the graph size
    assert dilated_knn(nodes, k=9, dilation=2).shape == (1, 6, 6)


def test_knn_distances_stay_float32_under_bf16_autocast():
    """``.float()`` does not leave autocast: the distance matmul must run with autocast off."""
    torch.manual_seed(0)
    # nodes far from the origin, close to each other: bf16 (8 mantissa bits) cannot order their distances
    x = 100.0 + 0.05 * torch.randn(1, 48, 16)
    exact = dilated_knn(x, k=4, dilation=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pairwise_sq_distances(x).dtype == torch.float32
        under_autocast = dilated_knn(x, k=4, dilation=1)
    assert torch.equal(under_autocast, exact)


def test_topology_module_max_relative_feature_by_hand():
    torch.manual_seed(0)
    topo = TopologyModule(4, k=2, dilation=1, aggregation="max_relative")
    fc = torch.randn(1, 4, 2, 2)
    reduced = topo.reduce(fc)  # (1, 2, 2, 2): four nodes of two channels
    nodes = reduced.flatten(2).transpose(1, 2)[0]
    d = torch.cdist(nodes, nodes)
    expected = []
    for i in range(4):
        nn_idx = d[i].argsort()[:2]
        expected.append(torch.cat([nodes[i], (nodes[nn_idx] - nodes[i]).amax(dim=0)]))
    expected = torch.stack(expected).T.reshape(1, 4, 2, 2)
    assert torch.allclose(topo.graph_feature(reduced), expected, atol=1e-5)


@pytest.mark.parametrize("aggregation", ["max_relative", "mean", "edge"])
def test_topology_module_shapes_and_gradients(aggregation):
    topo = TopologyModule(16, k=9, dilation=2, aggregation=aggregation)
    fc = torch.randn(2, 16, 5, 4, requires_grad=True)
    out = topo(fc)
    assert out.shape == fc.shape
    out.square().mean().backward()
    assert fc.grad.abs().sum() > 0
    assert all(p.grad is not None for p in topo.parameters())


def test_mgfe_switches():
    ff, fm, fc = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)
    off = MGFE(8, use_mgfe=False)
    assert all(torch.equal(a, b) for a, b in zip(off(ff, fm, fc), (ff, fm, fc)))  # Table 3: MGFE x
    table4 = MGFE(8, use_highpass=False, use_topology=False)
    assert isinstance(table4.high, ConvBlock) and isinstance(table4.topo, ConvBlock)  # "replaced by conv"
    full = MGFE(8)
    fh, fv, ft = full(ff, fm, fc)
    assert fh.shape == ff.shape and fv.shape == fm.shape and ft.shape == fc.shape
    assert isinstance(full.high, HighFrequencyModule) and isinstance(full.topo, TopologyModule)
    assert isinstance(MGFE(8, use_conv=False).conv, torch.nn.Identity)


# ---- decoder and head ---------------------------------------------------------------------------
def test_position_codes_agree_across_scales():
    """F^h (fine) queries F^v and F^t (coarser): the same place in the image must get the same code.
    Pixel centres of a 9x9 grid at (3i+1, 3k+1) are the centres of the 3x3 grid's cells (i, k)."""
    fine, coarse = sincos_2d(9, 9, 32).reshape(9, 9, 32), sincos_2d(3, 3, 32).reshape(3, 3, 32)
    for i in range(3):
        for k in range(3):
            assert torch.allclose(fine[3 * i + 1, 3 * k + 1], coarse[i, k], atol=1e-6)
    assert not torch.allclose(fine[0, 0], fine[0, 1])  # and neighbours still differ


def test_query_stage_and_fpn_shapes_and_gradients():
    stage = QueryStage(16, num_heads=4)
    q = torch.randn(2, 64, 16, requires_grad=True)
    kv = torch.randn(2, 9, 16, requires_grad=True)
    out = stage(q, kv)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.abs().sum() > 0 and kv.grad.abs().sum() > 0
    fpn = FPNFusion(8)
    blended = fpn(torch.randn(1, 8, 3, 3), torch.randn(1, 8, 5, 5), torch.randn(1, 8, 10, 10))
    assert blended.shape == (1, 8, 10, 10)
    with pytest.raises(ValueError, match="attention_heads"):
        QueryStage(10, num_heads=4)


def test_decoder_stages_switch_off_by_carrying_the_query():
    torch.manual_seed(0)
    fh, fv, ft = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)
    text, blended = torch.randn(1, 18, 8), torch.randn(1, 8, 8, 8)
    full = ProgressivePromptDecoder(8, num_heads=2)
    assert full(fh, fv, ft, text, blended).shape == (1, 8, 8, 8)
    none = ProgressivePromptDecoder(8, num_heads=2, stages=(False, False, False, False))
    assert torch.allclose(none(fh, fv, ft, text, blended), none.merge(torch.cat([fh, blended], dim=1)))
    # only the text stage: the output depends on the text, and text gets gradients
    only_text = ProgressivePromptDecoder(8, num_heads=2, stages=(False, False, True, False))
    text = text.clone().requires_grad_(True)
    only_text(fh, fv, ft, text, blended).sum().backward()
    assert text.grad.abs().sum() > 0


@pytest.mark.parametrize("context", ["text", "text+image"])
def test_dynamic_head_grouped_conv_equals_per_image_conv(context):
    torch.manual_seed(0)
    head = DynamicHead(8, text_dim=12, hidden_channels=4, upsample=1, kernel_size=1, kernel_context=context)
    x, text = torch.randn(3, 8, 5, 5), torch.randn(6, 12)
    out = head(x, text)
    assert out.shape == (3, 6, 10, 10)
    feat = head.visual(x)
    weight, bias = head.kernels(x, text)
    weight, bias = weight.reshape(3, 6, 4), bias.reshape(3, 6)
    manual = torch.einsum("bchw,bkc->bkhw", feat, weight) + bias[:, :, None, None]
    assert torch.allclose(out, manual, atol=1e-5)
    same_kernels = torch.allclose(weight[0], weight[1])
    assert same_kernels == (context == "text")  # eq. 8 alone gives every image the same kernels


# ---- whole network and loss ---------------------------------------------------------------------
def test_logits_land_on_the_pixels_their_patch_covers():
    """A stride-14 ViT at 256x256 sees 19 patches (the image padded to 266 px); a token shifted by one
    patch moves its logit by exactly 14 pixels, and token i is centred on pixel i*14 + 6.5."""
    def centre_of_token(i):
        tokens = torch.zeros(1, 1, 19, 19)
        tokens[0, 0, 9, i] = 1.0
        row = to_image_grid(tokens, (256, 256), 14)[0, 0, 9 * 14 + 7]
        return float((row * torch.arange(256)).sum() / row.sum())

    centres = [centre_of_token(i) for i in (5, 6, 7)]
    assert centres[1] - centres[0] == pytest.approx(14.0, abs=1e-3)
    assert centres[2] - centres[1] == pytest.approx(14.0, abs=1e-3)
    assert centres[1] == pytest.approx(6 * 14 + 6.5, abs=1e-3)


def test_image_encoder_pads_to_whole_patches():
    enc = backbone().image_encoder  # patch 8
    assert enc(torch.randn(1, 3, 60, 68)).shape[-2:] == (8, 9)  # ceil(60/8), ceil(68/8): every pixel is seen
    net = make_net().eval()
    assert net(torch.randn(1, 3, 60, 60)).shape == (1, 6, 60, 60)


def test_shipped_prompts_three_sentences_per_class():
    prompts = load_prompts(None)
    assert len(prompts) == 6 and all(len(p) == 3 for p in prompts)
    with pytest.raises(ValueError, match="no prompts for classes"):
        load_prompts({"background": ["a"]})


def test_monch_forward_shapes_gradients_and_cached_text():
    net = make_net()
    assert net.class_text.shape == (6, 3, 32)
    image = torch.randn(2, 3, SIZE, SIZE)
    net.eval()
    with torch.no_grad():
        logits = net(image)
    assert logits.shape == (2, len(CLASS_NAMES), SIZE, SIZE)
    feats = net.features(image)
    assert feats["F^f"].shape[-1] == 2 * feats["F^m"].shape[-1] == 4 * feats["F^c"].shape[-1]
    net.train()
    label = torch.randint(0, 6, (2, 1, SIZE, SIZE))
    terms = MONCHLoss()(net(image), label)
    terms["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert net.image_encoder.visual.conv1.weight.grad.abs().sum() > 0  # the image encoder is fine-tuned
    assert "class_text" in net.state_dict()  # prompts travel with the checkpoint
    assert not any(k.startswith("text") and "proj" not in k for k in net.state_dict())  # text tower released


@pytest.mark.parametrize("kwargs", [
    {"use_mgfe": False}, {"use_ppd": False}, {"use_highpass": False, "use_topology": "false"},
    {"query_stages": [True, False, True, "false"]}, {"kernel_size": 3, "kernel_context": "text+image"},
])
def test_monch_ablations_run(kwargs):
    net = make_net(**kwargs)
    out = net(torch.randn(1, 3, SIZE, SIZE))
    assert out.shape == (1, 6, SIZE, SIZE) and torch.isfinite(out).all()


def test_loss_matches_hand_computed_bce():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 1, 0, 0] = 2.0
    label = torch.tensor([[[[1, 0]]]])
    terms = MONCHLoss()(logits, label)
    sp = lambda z: math.log(1 + math.exp(z))  # BCE with logits: target 1 -> sp(-z), target 0 -> sp(z)
    per_class = [(sp(0) + sp(0)) / 2,          # class 0: pixel0 target 0 (z=0), pixel1 target 1 (z=0)
                 (sp(-2.0) + sp(0)) / 2,       # class 1: pixel0 target 1 (z=2), pixel1 target 0
                 (sp(0) + sp(0)) / 2]          # class 2: never present
    assert terms["loss"].item() == pytest.approx(sum(per_class) / 3, rel=1e-5)
    no_bg = MONCHLoss(include_background=False)(logits, label)
    assert no_bg["loss"].item() == pytest.approx(sum(per_class[1:]) / 2, rel=1e-5)
    assert MONCHLoss(dice_weight=1.0)({"pred": logits}, label)["dice"].item() > 0
    with pytest.raises(ValueError, match="label values"):
        MONCHLoss()(logits, torch.full((1, 1, 1, 2), 3))


def test_without_a_trained_background_map_background_is_where_no_cell_map_fires():
    logits = torch.full((6, 2, 3), -4.0)
    logits[0] = 9.0  # the untrained background map is high everywhere
    logits[2, 0, 0] = 1.0  # inflammatory fires at (0, 0)
    logits[3, 0, 0] = 0.5
    logits[4, 1, 2] = -0.1  # dead, but below the 0.5 probability threshold
    with_bg = decode_classes(logits, include_background=True)
    assert torch.equal(with_bg, torch.zeros(2, 3, dtype=torch.long))  # argmax is swamped by the background map
    without = decode_classes(logits, include_background=False)
    expected = torch.zeros(2, 3, dtype=torch.long)
    expected[0, 0] = 2
    assert torch.equal(without, expected)
    onehot = DecodeClassesd(keys="pred", include_background="false")({"pred": logits})["pred"]
    assert onehot.shape == (6, 2, 3) and torch.equal(onehot.argmax(0), expected) and onehot.sum() == 6
