"""Co-Seg: the SAM2 encoder with LoRA and adapters, RP-Encoder, task decoders, the two passes, the
Table 4 switches, the loss, and the paper-sized network's parameter counts (built on the meta device)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Sam2Config, Sam2Model, Sam2VisionConfig, Sam2VisionModel

from bundles.coseg.scripts.losses import CoSegLoss, hv_gradients, msge_loss
from bundles.coseg.scripts.network import CoSeg
from bundles.coseg.scripts.rp_encoder import RPEncoder
from transforms.base.describe import describe, instantiate
from transforms.base.errors import PretrainedWeightsError
from common.networks.sam2 import Sam2ImageEncoder, sam2_hiera_large_config, tiny_sam2_config

TINY = dict(num_tissue_classes=4, num_nuclei_types=3, decoder_mlp_dim=64, prompt_ffn_dim=64)
BASELINE = dict(co_segmentation=False)  # the one-pass baseline: no prompt path, whatever the other switches say
ABLATIONS = {"full": {}, "no_rp_encoder": dict(rp_encoder=False), "no_cross_guidance": dict(cross_guidance=False),
             "baseline": BASELINE}
TRAINABLE_PARTS = ("lora_", ".adapter.", "prompt_encoders.", "decoders.")


def tiny_net(seed=0, train_neck=False, **kwargs):
    torch.manual_seed(seed)
    encoder = Sam2ImageEncoder(model_config=tiny_sam2_config(), train_neck=train_neck)
    return CoSeg(encoder, **{**TINY, **kwargs})


def image(b=2, size=64, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def targets(b=2, size=64, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {
        "tissue": torch.randint(0, TINY["num_tissue_classes"], (b, 1, size, size), generator=g),
        "nuclei": (torch.rand(b, 1, size, size, generator=g) > 0.7).float(),
        "hv": torch.rand(b, 2, size, size, generator=g) * 2 - 1,
        "nuclei_type": torch.randint(0, TINY["num_nuclei_types"] + 1, (b, 1, size, size), generator=g),
    }


def count(module, trainable):
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)


# ---------------------------------------------------------------------------- SAM2 encoder
def test_encoder_starts_as_plain_sam2_and_returns_three_scales():
    torch.manual_seed(0)
    plain = Sam2VisionModel(Sam2VisionConfig(**tiny_sam2_config())).eval()
    torch.manual_seed(0)
    encoder = Sam2ImageEncoder(model_config=tiny_sam2_config()).eval()
    x = image(size=128)
    features = encoder(x)
    assert [tuple(f.shape) for f in features] == [(2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8)]
    assert encoder.reductions == [4, 8, 16] and encoder.size_divisor == 32 and encoder.embed_dim == 32
    # LoRA's B and the adapters' up-projections start at zero and the split qkv holds the fused weights
    for ours, reference in zip(features, plain(pixel_values=x).fpn_hidden_states):
        assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("train_neck", [False, True])
def test_encoder_trains_lora_on_q_and_v_and_the_adapters_only(train_neck):
    encoder = Sam2ImageEncoder(model_config=tiny_sam2_config(), train_neck=train_neck, lora_rank=4)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(".attn.qkv.q." in n or ".attn.qkv.v." in n for n in lora)  # never k, proj or the MLP
    assert {n for n in trainable if ".adapter." in n}
    assert all(("lora_" in n or ".adapter." in n) != (".neck." in n) for n in trainable)
    assert any(".neck." in n for n in trainable) == train_neck
    blocks = encoder.model.backbone.blocks
    expected_lora = sum(2 * 4 * (b.dim + b.dim_out) for b in blocks)  # A: r x d_in, B: d_out x r; q and v
    expected_adapters = sum(2 * b.dim_out * (b.dim_out // 4) + b.dim_out // 4 + b.dim_out for b in blocks)
    neck = sum(p.numel() for p in encoder.model.neck.parameters())
    assert count(encoder, True) == expected_lora + expected_adapters + (neck if train_neck else 0)
    plain = Sam2VisionModel(Sam2VisionConfig(**tiny_sam2_config()))
    assert count(encoder, False) == sum(p.numel() for p in plain.parameters()) - (neck if train_neck else 0)
    bare = Sam2ImageEncoder(model_config=tiny_sam2_config(), lora_rank=0, adapter_ratio=0)
    assert count(bare, True) == 0 and not any("lora_" in n or "adapter" in n for n, _ in bare.named_parameters())


def test_a_saved_sam2_model_loads_by_its_folder(tmp_path):
    torch.manual_seed(0)
    sam2 = Sam2Model(Sam2Config(vision_config={"model_type": "sam2_vision_model", **tiny_sam2_config()},
                                prompt_encoder_config={"hidden_size": 32},
                                mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "iou_head_hidden_dim": 32}))
    sam2.save_pretrained(tmp_path)
    encoder = Sam2ImageEncoder(weights=str(tmp_path)).eval()
    x = image(b=1)
    with torch.no_grad():
        for ours, saved in zip(encoder(x), sam2.eval().vision_encoder(pixel_values=x).fpn_hidden_states):
            assert torch.allclose(ours, saved, atol=1e-5)
    config = describe(encoder)  # a checkpoint rebuilds it from the architecture, without the folder
    assert config["weights"] is None and config["model_config"]["backbone_config"]["blocks_per_stage"] == [1, 1, 2, 1]


def test_pretrained_source_errors_name_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError, match=r"'coseg_weights' = 'no-such-org/sam2-uncached'.*HF_HUB_OFFLINE"):
        Sam2ImageEncoder(weights="no-such-org/sam2-uncached", config_key="coseg_weights")
    with pytest.raises(PretrainedWeightsError, match=r"'image_encoder_weights'.*local folder"):
        Sam2ImageEncoder(weights=str(tmp_path / "missing" / "sam2"))
    with pytest.raises(PretrainedWeightsError, match="config.json"):
        Sam2ImageEncoder(weights=str(tmp_path))
    with pytest.raises(ValueError, match="either weights"):
        Sam2ImageEncoder(weights="facebook/sam2.1-hiera-large", model_config=tiny_sam2_config())
    with pytest.raises(ValueError, match="either weights"):
        Sam2ImageEncoder()


def test_paper_sized_network_counts():
    """Hiera-L + FPN 256 + decoders with 6 tissue classes, on the meta device (no weights, no download)."""
    with torch.device("meta"):
        full = CoSeg(Sam2ImageEncoder(model_config=sam2_hiera_large_config()), num_tissue_classes=6)
        base = CoSeg(Sam2ImageEncoder(model_config=sam2_hiera_large_config()), num_tissue_classes=6, **BASELINE)

    def size(net, part):
        return sum(p.numel() for n, p in net.named_parameters() if part in n)

    trunk = size(full, "image_encoder.model.backbone") - size(full, "lora_") - size(full, ".adapter.")
    assert 211e6 < trunk < 213e6  # SAM2-L's Hiera trunk: 212.1 M, frozen
    assert count(full, False) == trunk + size(full, ".neck.")
    assert size(full, "lora_") == 4 * 2 * sum(b.dim + b.dim_out for b in full.image_encoder.model.backbone.blocks)
    assert 8.8e6 < size(full, ".adapter.") < 9.0e6
    assert count(full, True) == sum(size(full, part) for part in TRAINABLE_PARTS)
    assert count(full, False) == count(base, False)
    added = count(full, True) - count(base, True)
    assert added == size(full, "prompt_encoders.")  # the RP-Encoders are all Co-Seg adds to the baseline
    assert 0.15 < added / count(base, True) < 0.20  # two RP-Encoders: +18 % (the paper: +9.1 %)
    assert count(full, True) / (count(full, True) + count(full, False)) < 0.1


# ---------------------------------------------------------------------------- network
@pytest.mark.parametrize("name", ABLATIONS)
def test_training_outputs_and_gradients_reach_only_the_trainable_parts(name):
    net = tiny_net(train_neck=name == "full", **ABLATIONS[name]).train()
    with torch.no_grad():  # move LoRA B and the adapters' up-projections off zero so every part gets gradient
        for n, p in net.named_parameters():
            if "lora_B" in n or ".adapter.2." in n:
                p.normal_(0, 0.02)
    out = net(image())
    passes = [out] + ([out["pass1"]] if name != "baseline" else [])
    assert ("pass1" in out) == (name != "baseline")
    for result in passes:
        assert {k: tuple(v.shape) for k, v in result.items() if k != "pass1"} == {
            "tissue": (2, 4, 64, 64), "nuclei": (2, 1, 64, 64), "hv": (2, 2, 64, 64), "nuclei_type": (2, 3, 64, 64)}
    terms = CoSegLoss()(out, targets())
    assert torch.isfinite(terms["loss"]) and not any(v.requires_grad for k, v in terms.items() if k != "loss")
    terms["loss"].backward()
    parts = TRAINABLE_PARTS + ((".neck.",) if name == "full" else ())
    for n, p in net.named_parameters():
        if any(part in n for part in parts):  # every trainable parameter gets gradient (DDP needs no unused ones)
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, n
        else:  # the frozen trunk (and neck)
            assert not p.requires_grad and p.grad is None, n


def test_eval_returns_final_logits_and_no_type_head_without_types():
    net = tiny_net(num_nuclei_types=0).eval()
    with torch.no_grad():
        out = net(image(b=1))
    assert set(out) == {"tissue", "nuclei", "hv"} and out["tissue"].shape == (1, 4, 64, 64)
    assert net.decoders["nuclei"].mask_tokens.num_embeddings == 3  # nuclei logit + two HV maps


@pytest.mark.parametrize("cross", [True, False])
def test_region_prompts_route_pass_one_logits_to_the_other_task(cross):
    net = tiny_net(cross_guidance=cross).eval()
    x = image()
    with torch.no_grad():
        features = net.image_encoder(x)
        first = net.decode(features, (64, 64))
        second = net.decode(features, (64, 64), first)
        assert all(torch.equal(net(x)[k], second[k]) for k in second)  # forward = pass 2 on pass 1's logits
        noisy = {**first, "tissue": first["tissue"] + 3 * torch.randn_like(first["tissue"])}
        changed = net.decode(features, (64, 64), noisy)
    prompted, unprompted = ("nuclei", "tissue") if cross else ("tissue", "nuclei")
    assert not torch.allclose(changed[prompted], second[prompted], atol=1e-4)
    assert torch.equal(changed[unprompted], second[unprompted])
    assert not torch.allclose(second["tissue"], first["tissue"], atol=1e-4)  # the prompts change the output


@pytest.mark.parametrize("name,removed", [("no_rp_encoder", ".region_attention."),
                                          ("no_cross_guidance", "_to_"), ("baseline", "prompt_encoders.")])
def test_each_switch_removes_its_module_and_changes_the_output(name, removed):
    full, ablated = tiny_net().eval(), tiny_net(**ABLATIONS[name]).eval()
    state = full.state_dict()
    if name == "no_cross_guidance":  # the same prompt encoders, now prompting their own task's decoder
        assert not any("tissue_to_nuclei" in n or "nuclei_to_tissue" in n for n, _ in ablated.named_parameters())
        state = {n.replace("tissue_to_nuclei", "tissue_to_tissue").replace("nuclei_to_tissue", "nuclei_to_nuclei"): v
                 for n, v in state.items()}
        ablated.load_state_dict(state)
    else:
        assert not any(removed in n for n, _ in ablated.named_parameters())
        result = ablated.load_state_dict(state, strict=False)
        assert not result.missing_keys and result.unexpected_keys
        assert all(removed in n for n in result.unexpected_keys)
    x = image()
    with torch.no_grad():
        a, b = full(x), ablated(x)
        if name == "baseline":  # the baseline is the full model's first pass
            first = full.decode(full.image_encoder(x), (64, 64))
            assert all(torch.equal(b[k], first[k]) for k in first)
    assert not torch.allclose(a["tissue"], b["tissue"], atol=1e-4)
    assert not torch.allclose(a["nuclei"], b["nuclei"], atol=1e-4)


def test_bad_settings_raise_and_command_line_strings_are_read():
    net = tiny_net(rp_encoder="false", cross_guidance="true", co_segmentation="false")
    assert net.co_segmentation is False and not hasattr(net, "prompt_encoders")
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_net()(image(size=48))
    with pytest.raises(ValueError, match="16x the embedding"):
        RPEncoder(1, 32, ffn_dim=64)(torch.randn(1, 1, 32, 32), torch.randn(1, 32, 4, 4))


def test_description_rebuilds_the_network_without_the_pretrained_source(root):
    net = tiny_net().eval()
    config = describe(net)
    assert config["_target_"] == "scripts.network.CoSeg"
    encoder = config["image_encoder"]
    assert encoder["weights"] is None and encoder["model_config"]["fpn_hidden_size"] == 32
    again = instantiate(config, bundle_root=root / "bundles" / "coseg").eval()
    again.load_state_dict(net.state_dict())
    x = image(b=1)
    with torch.no_grad():
        assert torch.equal(again(x)["nuclei"], net(x)["nuclei"])


# ---------------------------------------------------------------------------- loss
def ramp(size=12, axis=-1):
    line = torch.arange(float(size))
    return (line.view(1, 1, 1, size) if axis == -1 else line.view(1, 1, size, 1)).expand(1, 1, size, size)


def test_msge_matches_hand_computed_gradients():
    """HoVer-Net's 5x5 kernel dx/(dx²+dy²) on a ramp a*x gives a * sum(dx²/(dx²+dy²)) = 12a inside the border."""
    interior = torch.zeros(1, 1, 12, 12)
    interior[..., 2:10, 2:10] = 1
    horizontal = torch.cat([0.5 * ramp(), torch.zeros(1, 1, 12, 12)], dim=1)
    grads = hv_gradients(horizontal)
    assert torch.allclose(grads[0, 0, 2:10, 2:10], torch.full((8, 8), 6.0))
    assert grads[0, 1].abs().max() == 0  # the vertical map is differentiated along y only
    across = hv_gradients(torch.cat([ramp(), ramp()], dim=1))[0, 1, 2:10, 2:10]
    assert torch.allclose(across, torch.zeros(8, 8), atol=1e-5)
    zero = torch.zeros_like(horizontal)
    assert torch.isclose(msge_loss(horizontal, zero, interior), torch.tensor(36.0 / 2))  # (6² + 0²) / 2 channels
    vertical = torch.cat([torch.zeros(1, 1, 12, 12), ramp(axis=-2)], dim=1)
    assert torch.isclose(msge_loss(vertical, zero, interior), torch.tensor(144.0 / 2))
    assert torch.isclose(msge_loss(vertical, vertical, interior), torch.tensor(0.0))


def random_outputs(b=2, size=16, seed=3, types=True):
    g = torch.Generator().manual_seed(seed)
    out = {"tissue": torch.randn(b, 4, size, size, generator=g), "nuclei": torch.randn(b, 1, size, size, generator=g),
           "hv": torch.randn(b, 2, size, size, generator=g)}
    if types:
        out["nuclei_type"] = torch.randn(b, 3, size, size, generator=g)
    return {k: v.requires_grad_() for k, v in out.items()}


def test_loss_weights_the_first_pass_by_the_lambdas():
    loss = CoSegLoss(lambda_tissue=2.0, lambda_nuclei=1.0)
    final = random_outputs()
    one = loss(final, targets(size=16))
    sem = one["tissue_ce"] + one["tissue_dice"]
    ins = one["nuclei_focal"] + one["nuclei_dice"] + 10 * one["hv_mse"] + 2.5 * one["hv_msge"] + one["nuclei_type"]
    assert torch.isclose(one["loss"], sem + ins) and one["prior"] == 0
    both = loss({**final, "pass1": final}, targets(size=16))
    assert torch.isclose(both["prior"], 2 * sem + ins)
    assert torch.isclose(both["loss"], 3 * sem + 2 * ins)
    assert torch.isclose(one["hv_mse"], F.mse_loss(final["hv"], targets(size=16)["hv"]))
    bce = CoSegLoss(focal=False)(final, targets(size=16))
    mask = targets(size=16)["nuclei"]
    assert torch.isclose(bce["nuclei_bce"], F.binary_cross_entropy_with_logits(final["nuclei"], mask))


def test_loss_is_finite_on_empty_masks():
    empty = {"tissue": torch.zeros(2, 16, 16, dtype=torch.long), "nuclei": torch.zeros(2, 1, 16, 16),
             "hv": torch.zeros(2, 2, 16, 16), "nuclei_type": torch.zeros(2, 1, 16, 16, dtype=torch.long)}
    out = random_outputs()
    terms = CoSegLoss()({**out, "pass1": out}, empty)
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["hv_msge"] == 0 and terms["nuclei_type"] == 0  # no nuclei pixels to focus on, no typed nuclei
    terms["loss"].backward()
    assert all(torch.isfinite(v.grad).all() for v in out.values())


def test_loss_names_missing_targets():
    with pytest.raises(KeyError, match="nuclei_type"):
        CoSegLoss()(random_outputs(), {k: v for k, v in targets(size=16).items() if k != "nuclei_type"})
    assert "nuclei_type" not in CoSegLoss()(random_outputs(types=False), targets(size=16))
    with pytest.raises(KeyError, match="'hv'"):
        CoSegLoss()(random_outputs(), {"tissue": torch.zeros(2, 1, 16, 16), "nuclei": torch.zeros(2, 1, 16, 16)})


@pytest.mark.parametrize("heads", [1, 2])
def test_rope_attention_equals_sam2_memory_attention_and_runs_in_onnxruntime(heads, tmp_path):
    """RP-Encoder's rotary table and attention compute what transformers' SAM2 memory attention does
    (Sam2VideoVisionRotaryEmbedding, Sam2VideoRoPEAttention with keys on the query grid) and, unlike
    them, export to an ONNX file onnxruntime runs with the eager output."""
    import onnxruntime
    from transformers.models.sam2_video.configuration_sam2_video import Sam2VideoConfig
    from transformers.models.sam2_video.modeling_sam2_video import (
        Sam2VideoRoPEAttention,
        Sam2VideoVisionRotaryEmbedding,
    )

    from bundles.coseg.scripts.rp_encoder import RegionAttention

    torch.manual_seed(0)
    layer = RegionAttention(32, heads, 64, dropout=0.0).eval()
    config = Sam2VideoConfig(memory_attention_hidden_size=32, memory_attention_num_attention_heads=heads,
                             memory_attention_downsample_rate=1, memory_attention_rope_dropout=0.0,
                             rope_parameters={"rope_type": "axial", "rope_theta": 10000.0})
    config._attn_implementation = "sdpa"
    x, z = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    theirs_rope = Sam2VideoVisionRotaryEmbedding(config)(x, torch.stack([cols.flatten(), rows.flatten()], dim=-1))
    ours_rope = layer.rope(3, 4, x)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours_rope, theirs_rope))
    reference = Sam2VideoRoPEAttention(config).eval()
    reference.load_state_dict(layer.cross_attn.state_dict())
    with torch.no_grad():
        ours = layer.cross_attn(x, z, z, ours_rope)
        theirs = reference(query=x[:, None], key=z[:, None], value=z[:, None], position_embeddings=theirs_rope)[0][:, 0]
    assert torch.allclose(ours, theirs, atol=1e-6)
    prompt, embedding = torch.randn(1, 32, 3, 4), torch.randn(1, 32, 3, 4)
    torch.onnx.export(layer, (prompt, embedding), str(tmp_path / "layer.onnx"), input_names=["prompt", "embedding"],
                      opset_version=17, dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    ran = session.run(None, {"prompt": prompt.numpy(), "embedding": embedding.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(ran, layer(prompt, embedding).numpy(), atol=1e-5)


def test_a_checkpoint_without_the_frozen_sam2_trunk_keeps_lora_and_loads_the_trunk_from_its_source(tmp_path, root):
    """``checkpoint_frozen_pretrained: false``: the frozen Hiera trunk (and neck) are left out of model.pt and
    come from ``image_encoder_weights`` on loading; the trained LoRA, adapters and decoders are kept."""
    from common.engine.checkpoints import ModelDescription, load_model

    torch.manual_seed(0)
    sam2 = Sam2Model(Sam2Config(vision_config={"model_type": "sam2_vision_model", **tiny_sam2_config()},
                                prompt_encoder_config={"hidden_size": 32},
                                mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "iou_head_hidden_dim": 32}))
    sam2.save_pretrained(tmp_path / "sam2")
    net = CoSeg(Sam2ImageEncoder(weights=str(tmp_path / "sam2")), **TINY).eval()
    with torch.no_grad():  # as if trained: LoRA's B and the adapters' up-projections are no longer zero
        for name, p in net.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    bundle = root / "bundles" / "coseg"
    described = ModelDescription(net, bundle, settings={"image_size": 64}, leave_out_frozen_pretrained=True)
    saved = described.state_dict()
    kept = described.weights.state_dict()  # what the checkpoint saver stores as "model"
    torch.save({"model": kept, "description": saved}, tmp_path / "model.pt")
    assert saved["excluded"] == ["image_encoder."]
    assert saved["network"]["image_encoder"]["weights"] == str(tmp_path / "sam2")
    assert not any(".base_layer." in k or k.endswith("qkv.k.weight") for k in kept)  # the frozen trunk is gone
    assert any(".lora_B." in k for k in kept) and any(".adapter." in k for k in kept)
    loaded = load_model(str(tmp_path / "model.pt"), str(bundle)).network.eval()
    x = image(b=1)
    with torch.no_grad():
        assert torch.allclose(loaded(x)["tissue"], net(x)["tissue"], atol=1e-5)
