"""LTSE modules on tiny configs built in code: a tiny LLaVA folder (2-layer Llama, 2-layer CLIP tower, BPE
tokenizer trained in code) and a 64-pixel SAM. Shapes, gradients, [SEG]/[REJ] bookkeeping, gating, ablation
switches, the loss by hand, generation, trainable-part checkpoints, pretrained-weight errors."""

import math

import numpy as np
import sys

import pytest
import torch

from bundles.ltse.scripts.aem import AdaptiveExpertMixture, ExpertGate, run_decoder, top_k_weights
from common.data.seg_answers import (build_answer, masks_for_targets, seg_target_masks, seg_targets, slot_phrases,
                                     special_tokens)
from bundles.ltse.scripts.losses import LTSELoss, causal_lm_loss
from bundles.ltse.scripts.network import LTSE
from transforms.base.describe import describe, instantiate
from transforms.base.errors import CheckpointError, DatasetError, PretrainedWeightsError
from common.engine.checkpoints import ModelDescription, load_weights
from bundle_runner import ROOT
from common.networks.llava import LlavaLM, save_tiny_llava, tokenize_conversation
from common.networks.sam import (SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamEncoder, build_mask_decoder, sam_config,
                                 sam_postprocess_masks, sam_preprocess, tiny_sam_config)

SIZES = [(40, 50), (48, 36)]
ANSWERS = [(["tumor", "necrosis", "stroma"], [True, False, True]), (["fat"], [True])]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory):
    """A tiny SAM state dict in the official checkpoint's layout (image_encoder./prompt_encoder./mask_decoder.)."""
    torch.manual_seed(1)
    config = tiny_sam_config()
    encoder, decoder = SamEncoder(model_config=config, dtype="float32"), build_mask_decoder(config)
    state = {f"image_encoder.{k}": v for k, v in encoder.image_encoder.state_dict().items()}
    state |= {f"prompt_encoder.{k}": v for k, v in encoder.prompt_encoder.state_dict().items()}
    state |= {f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()}
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(state, path)
    return str(path)


def make_ltse(llava_dir, checkpoint=None, use_rej=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    llava = LlavaLM(llava_dir, new_tokens=special_tokens(use_rej), dtype="float32")
    sam = SamEncoder(model_config=tiny_sam_config(), checkpoint=checkpoint, dtype="float32")
    return LTSE(llava, sam, use_rej=use_rej, gate_heads=2, gate_mlp_dim=32, **kwargs)


def make_batch(net, answers=ANSWERS, multi_seg=True, use_rej=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, h, w), generator=g).float() for h, w in SIZES[: len(answers)]]
    texts, targets = [], []
    for (names, present), image in zip(answers, images):
        answer, slots = build_answer(names, present, multi_seg, use_rej)
        texts.append(answer)
        masks = (torch.rand(len(names), *image.shape[1:], generator=g) > 0.5).float()
        targets.append(seg_target_masks(masks, slots))
    rgb = [im.to(torch.uint8).permute(1, 2, 0).numpy() for im in images]
    batch = tokenize_conversation(net.llava.processor, rgb, [f"segment {' and '.join(n)}" for n, _ in answers], texts,
                                  template=net.llava.prompt_template)
    sam = [sam_preprocess(im, net.sam.image_size) for im in images]
    inputs = dict(pixel_values=batch["pixel_values"], sam_images=torch.stack([s[0] for s in sam]),
                  input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                  resize_sizes=[s[1] for s in sam], original_sizes=[im.shape[1:] for im in images])
    return inputs, targets


@pytest.fixture(scope="module")
def net(llava_dir):
    return make_ltse(llava_dir)


@pytest.fixture(scope="module")
def single(llava_dir):
    """The "w/o AEM" ablation: one SAM decoder."""
    return make_ltse(llava_dir, use_aem=False)


# ---------------------------------------------------------------------------- answers
def test_the_words_before_each_slot_name_its_mask():
    answer, _ = build_answer(["tumor", "blood vessel", "stroma"], [True, False, True])
    assert slot_phrases(answer) == [("tumor", "[SEG]"), ("blood vessel", "[REJ]"), ("stroma", "[SEG]")]
    assert slot_phrases("Sure, [SEG] and the necrosis [SEG]. That is all.") == [("", "[SEG]"), ("necrosis", "[SEG]")]
    assert slot_phrases("I cannot find it.") == []


def test_kth_seg_belongs_to_kth_present_target_and_rej_slots_have_no_mask():
    answer, slots = build_answer(["tumor", "necrosis", "stroma"], [True, False, True])
    assert answer == "Sure, tumor [SEG], necrosis [REJ], stroma [SEG]."
    assert seg_targets(slots) == [(0,), (2,)]
    masks = torch.zeros(3, 4, 4)
    masks[0, 0], masks[2, 3] = 1, 1
    per_seg = seg_target_masks(masks, slots)
    assert per_seg.shape == (2, 4, 4) and torch.equal(per_seg[0], masks[0]) and torch.equal(per_seg[1], masks[2])
    changed = masks.clone()
    changed[1] = 1  # the rejected target's mask never reaches a [SEG]
    assert torch.equal(seg_target_masks(changed, slots), per_seg)
    assert masks_for_targets(["[SEG]", "[REJ]", "[SEG]"], 3) == [0, None, 1]
    assert masks_for_targets(["[SEG]"], 3) == [0, None, None]  # missing slots: nothing predicted


def test_answer_switches():
    text, slots = build_answer(["tumor", "fat"], [True, False], use_rej=False)
    assert text == "Sure, tumor [SEG], fat [SEG]." and seg_targets(slots) == [(0,), (1,)]
    masks = torch.ones(2, 3, 3)
    masks[1] = 0  # fat is absent: its [SEG] is trained towards an empty mask
    assert seg_target_masks(masks, slots)[1].sum() == 0
    text, slots = build_answer(["tumor", "fat", "blood"], [True, False, True], multi_seg=False)
    assert text == "Sure, tumor, fat, blood [SEG]." and seg_targets(slots) == [(0, 2)]
    union = seg_target_masks(torch.eye(3)[:, :, None].expand(3, 3, 2), slots)
    assert torch.equal(union[0, :, 0], torch.tensor([1.0, 0.0, 1.0]))
    text, slots = build_answer(["fat"], [False], multi_seg=False)
    assert text == "Sure, fat [REJ]." and seg_targets(slots) == []
    assert seg_target_masks(torch.ones(1, 2, 2), slots).shape == (0, 2, 2)
    assert masks_for_targets(["[SEG]"], 2, multi_seg=False) == [0, 0]
    with pytest.raises(ValueError, match="max_seg_tokens=2"):
        build_answer(["a", "b", "c"], [True] * 3, max_seg_tokens=2)


# ---------------------------------------------------------------------------- gate and experts
@pytest.mark.parametrize("k", [1, 2, 4])
def test_top_k_gating_sums_to_one_with_exactly_k_experts(k):
    torch.manual_seed(0)
    probs = torch.randn(6, 4).softmax(-1)
    w = top_k_weights(probs, k)
    assert torch.allclose(w.sum(-1), torch.ones(6)) and ((w > 0).sum(-1) == k).all()
    assert torch.equal(w.argmax(-1), probs.argmax(-1))
    gate = ExpertGate(dim=32, num_experts=4, top_k=k, num_heads=2, mlp_dim=32)
    weights, gate_probs = gate(torch.randn(3, 1, 32), torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8))
    assert weights.shape == (3, 4) and torch.allclose(weights.sum(-1), torch.ones(3))
    assert ((weights > 0).sum(-1) == k).all() and torch.allclose(gate_probs.sum(-1), torch.ones(3))


def test_mixture_is_the_weighted_sum_of_the_experts():
    torch.manual_seed(0)
    config = tiny_sam_config()
    aem = AdaptiveExpertMixture([build_mask_decoder(config) for _ in range(3)], 32, top_k=2, gate_heads=2,
                                gate_mlp_dim=32)
    args = (torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8), torch.randn(2, 1, 32), torch.randn(2, 32, 8, 8))
    mixed, weights = aem(*args)
    experts = torch.stack([run_decoder(e, *args) for e in aem.experts], dim=1)  # (N, n, 1, 32, 32)
    assert mixed.shape == (2, 1, 32, 32)
    assert torch.allclose(mixed, (weights[:, :, None, None, None] * experts).sum(1), atol=1e-5)
    with pytest.raises(ValueError, match="use_aem=false"):
        AdaptiveExpertMixture([build_mask_decoder(config)], 32, top_k=1)


# ---------------------------------------------------------------------------- network
def test_training_forward_shapes_and_gradients(net):
    net.train()
    net.zero_grad()
    inputs, targets = make_batch(net)
    out = net(**inputs)
    vocab = len(net.llava.processor.tokenizer)
    assert out["logits"].shape == (2, inputs["input_ids"].shape[1], vocab)
    assert [m.shape for m in out["masks"]] == [(2, 40, 50), (1, 48, 36)]  # [REJ] gets no mask
    assert [w.shape for w in out["expert_weights"]] == [(2, 4), (1, 4)]
    loss = LTSELoss()(out, targets)
    loss["loss"].backward()
    named = dict(net.named_parameters())
    trainable = {n: p for n, p in named.items() if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())  # every trained weight takes part (DDP)

    def moved(part):
        return any(p.grad.abs().sum() > 0 for n, p in trainable.items() if part in n)

    assert moved("lora_B") and moved("trainable_tokens_delta") and moved("projector.") and moved("aem.gate.")
    chosen = torch.cat(out["expert_weights"]).sum(0) > 0
    for i, used in enumerate(chosen.tolist()):
        assert moved(f"aem.experts.{i}.") == used
    assert not any(p.requires_grad or p.grad is not None for n, p in named.items() if n.startswith("sam."))
    base = [n for n, p in named.items() if n.startswith("llava.") and not p.requires_grad]
    assert base and all(named[n].grad is None for n in base)
    kept = ModelDescription(net, ROOT / "bundles" / "ltse", leave_out_frozen_pretrained=True).weights.state_dict()
    assert set(trainable) <= set(kept)  # every trained weight is checkpointed (a random base stays in too)
    net.zero_grad()


def test_rej_is_learned_as_text_but_gets_no_mask_loss(net):
    inputs, targets = make_batch(net)
    rej = net.rej_token_id
    assert (inputs["labels"][0] == rej).sum() == 1  # the LM learns to write [REJ]
    with torch.no_grad():
        out = net(**inputs)
    assert out["masks"][0].shape[0] == 2 == targets[0].shape[0]
    with pytest.raises(ValueError, match="target masks"):
        LTSELoss()(out, [targets[0][:1], targets[1]])


def test_a_sample_without_seg_gets_an_empty_mask_list_entry(net):
    inputs, targets = make_batch(net, answers=[(["tumor"], [False]), (["fat"], [True])])
    with torch.no_grad():
        out = net(**inputs)
    assert out["masks"][0].shape == (0, 40, 50) and out["masks"][1].shape == (1, 48, 36)
    loss = LTSELoss()(out, targets)
    assert loss["num_masks"] == 1 and torch.isfinite(loss["loss"])


def test_one_decoder_ablation_builds_no_gate_and_no_other_experts(single):
    kinds = [type(m).__name__ for m in single.modules()]
    assert not hasattr(single, "aem") and "ExpertGate" not in kinds and "AdaptiveExpertMixture" not in kinds
    assert kinds.count("MaskDecoder") == 1 and not any(n.startswith("aem.") for n, _ in single.named_parameters())
    inputs, targets = make_batch(single)
    out = single(**inputs)
    assert "expert_weights" not in out and [m.shape[0] for m in out["masks"]] == [2, 1]
    LTSELoss()(out, targets)["loss"].backward()
    assert single.decoder.output_upscaling[0].weight.grad.abs().sum() > 0


def test_seg_and_rej_switches(llava_dir, net):
    single_seg = make_ltse(llava_dir, multi_seg=False)
    inputs, targets = make_batch(single_seg, multi_seg=False)
    out = single_seg(**inputs)
    assert [m.shape[0] for m in out["masks"]] == [1, 1]
    with pytest.raises(ValueError, match="at most 1"):
        single_seg(**make_batch(single_seg)[0])
    no_rej = make_ltse(llava_dir, use_rej=False)
    assert no_rej.rej_token_id is None and "[REJ]" not in no_rej.llava.processor.tokenizer.get_vocab()
    inputs, targets = make_batch(no_rej, use_rej=False)
    assert [m.shape[0] for m in no_rej(**inputs)["masks"]] == [3, 1]  # the absent target gets [SEG] + empty mask
    with pytest.raises(ValueError, match="use_rej=False"):
        LTSE(net.llava, no_rej.sam, use_rej=False)  # a vocabulary with [REJ] for a model without it


# ---------------------------------------------------------------------------- loss
def test_loss_against_a_hand_computed_case():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    out = {"lm_loss": torch.tensor(0.7), "masks": [logits, torch.zeros(0, 2, 2)]}
    result = LTSELoss(ce_weight=1.0, bce_weight=2.0, dice_weight=0.5)(out, [target, torch.zeros(0, 2, 2)])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(2)) / 4
    probs = [0.5, sig(2.0), sig(-1.0), 0.5]
    dice = 1 - (2 * (probs[0] + probs[1]) + 1) / (sum(probs) + 2 + 1)
    assert result["bce"].item() == pytest.approx(bce, rel=1e-5)
    assert result["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert result["loss"].item() == pytest.approx(0.7 + 2 * bce + 0.5 * dice, rel=1e-5)
    assert result["num_masks"].item() == 1

    lm_logits = torch.tensor([[[1.0, 2.0], [0.5, -0.5], [3.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 0]])  # position 0 predicts label 1, position 1 predicts label 0
    expected = (-math.log(math.exp(2) / (math.exp(1) + math.exp(2))) -
                math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(-0.5)))) / 2
    assert causal_lm_loss(lm_logits, labels).item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- inference
def test_generation_without_seg_returns_an_empty_mask_list(net):
    image = torch.randint(0, 256, (3, 40, 50)).float()
    result = net.generate(image, "segment the tumor", max_new_tokens=4, suppress_tokens=[net.seg_token_id])
    assert isinstance(result["answer"], str) and result["masks"] == [] and "[SEG]" not in result["tokens"]


def test_generation_with_seg_returns_masks_at_the_original_size(net):
    image = torch.randint(0, 256, (3, 40, 50)).float()
    net.train()
    result = net.generate(image, "segment the tumor", max_new_tokens=3, sequence_bias={(net.seg_token_id,): 100.0})
    assert net.training  # generate runs in eval mode and restores the mode
    assert result["tokens"] == ["[SEG]"] * 3 and "[SEG]" in result["answer"]
    assert len(result["masks"]) == 3 and result["masks"][0].shape == (40, 50) and result["masks"][0].dtype == torch.bool


def test_an_answer_cut_by_max_new_tokens_says_so(net, caplog):
    """An answer that never reached its end token lost its later slots: flagged and logged, not silent."""
    image = torch.randint(0, 256, (3, 40, 50)).float()
    with caplog.at_level("WARNING"):
        cut = net.generate(image, "segment the tumor", max_new_tokens=3, sequence_bias={(net.seg_token_id,): 100.0})
    assert cut["cut"] and "reached max_new_tokens=3 before its end" in caplog.text
    ended = net.generate(image, "segment the tumor", max_new_tokens=3,
                         sequence_bias={(net.llava.processor.tokenizer.eos_token_id,): 100.0})
    assert not ended["cut"] and ended["answer"] == ""


# ---------------------------------------------------------------------------- checkpoints
TRAINED_KEY = ("projector.", "aem.", "decoder.")


def is_trained_key(key: str) -> bool:
    return key.startswith(TRAINED_KEY) or (key.startswith("llava.") and ("lora_" in key or "trainable_tokens_delta" in key))


def test_checkpoints_keep_only_the_trained_parts_and_rebuild_from_the_description(llava_dir, sam_checkpoint, root,
                                                                                    single):
    """The shared checkpoint path (ModelDescription, load_weights) on LTSE: with a LLaVA folder and a SAM
    checkpoint named, the frozen base is left out; LoRA, new-token rows, projector and decoders are kept and
    the rebuilt network answers like the trained one."""
    net = make_ltse(llava_dir, checkpoint=sam_checkpoint)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # move away from the fresh initialisation
    description = ModelDescription(net, root / "bundles" / "ltse", leave_out_frozen_pretrained=True)
    assert description.excluded_prefixes() == ["llava.", "sam."]
    state = description.weights.state_dict()
    assert state and all(is_trained_key(k) for k in state), sorted(k for k in state if not is_trained_key(k))[:3]
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained <= set(state) and all("iou_prediction_head" in k for k in set(state) - trained)
    config = description.state_dict()["network"]
    assert config["sam"]["checkpoint"] == sam_checkpoint and config["llava"]["pretrained"] is True
    rebuilt = instantiate(config, bundle_root=root / "bundles" / "ltse")
    load_weights(rebuilt, state, description.excluded_prefixes())
    net.eval()
    rebuilt.eval()
    inputs, _ = make_batch(net)
    with torch.no_grad():
        a, b = net(**inputs), rebuilt(**inputs)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a["masks"], b["masks"]))
    with pytest.raises(CheckpointError, match="do not fit this network"):
        load_weights(single, state, description.excluded_prefixes())


def test_a_model_whose_bases_lie_elsewhere_on_this_machine_loads_when_told_where(llava_dir, sam_checkpoint, tmp_path):
    """A shared model.pt names the SAM file and LLaVA folder of the machine it was trained on; on another
    machine the error says which sources it needs and --pretrained_sources points them to local copies."""
    import shutil

    from transforms.base.describe import ConfigurationError
    from common.engine.checkpoints import load_model

    net = make_ltse(llava_dir, checkpoint=sam_checkpoint)
    description = ModelDescription(net, ROOT / "bundles" / "ltse", leave_out_frozen_pretrained=True)
    trained_here = tmp_path / "trained_here"
    shutil.copytree(llava_dir, trained_here / "llava")
    shutil.copy(sam_checkpoint, trained_here / "sam.pth")
    state = description.state_dict()
    state["network"]["sam"]["checkpoint"] = str(trained_here / "sam.pth")
    state["network"]["llava"]["name_or_path"] = str(trained_here / "llava")
    torch.save({"model": description.weights.state_dict(), "description": state}, tmp_path / "model.pt")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(trained_here), str(elsewhere))     # the other machine keeps them somewhere else
    bundle = str(ROOT / "bundles" / "ltse")
    with pytest.raises(CheckpointError, match=r"Its pretrained parts load from llava.name_or_path = .*trained_here/llava"
                                              r".*sam.checkpoint = .*trained_here/sam.pth.*--pretrained_sources"):
        load_model(str(tmp_path / "model.pt"), bundle)
    with pytest.raises(ConfigurationError, match=r"'sam.weights' is not a pretrained source of this model; its "
                                                 r"sources: llava.name_or_path .*, sam.checkpoint"):
        load_model(str(tmp_path / "model.pt"), bundle, pretrained_sources={"sam.weights": "x"})
    loaded = load_model(str(tmp_path / "model.pt"), bundle, pretrained_sources={
        "sam.checkpoint": str(elsewhere / "sam.pth"), "llava.name_or_path": str(elsewhere / "llava")})
    assert loaded.description["network"]["sam"]["checkpoint"] == str(elsewhere / "sam.pth")
    net.eval()
    inputs, _ = make_batch(net)
    with torch.no_grad():
        a, b = net(**inputs), loaded.network(**inputs)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5)


def test_a_random_base_named_by_no_source_stays_in_the_checkpoint(llava_dir):
    """A base with random weights (``pretrained: false``, no SAM checkpoint) cannot be reloaded from anywhere:
    leaving it out would rebuild a different random network."""
    torch.manual_seed(0)
    llava = LlavaLM(llava_dir, new_tokens=special_tokens(True), dtype="float32", pretrained=False)
    net = LTSE(llava, SamEncoder(model_config=tiny_sam_config(), dtype="float32"), gate_heads=2, gate_mlp_dim=32)
    description = ModelDescription(net, ROOT / "bundles" / "ltse", leave_out_frozen_pretrained=True)
    assert description.excluded_prefixes() == []
    assert set(description.weights.state_dict()) == set(net.state_dict())


def test_sam_decoders_start_from_the_checkpoint(llava_dir, sam_checkpoint):
    net = make_ltse(llava_dir, checkpoint=sam_checkpoint)
    reference = torch.load(sam_checkpoint, weights_only=True)["mask_decoder.mask_tokens.weight"]
    assert all(torch.equal(e.mask_tokens.weight, reference) for e in net.aem.experts)


# ---------------------------------------------------------------------------- SAM helpers and pretrained errors
def test_sam_preprocess_resizes_the_longest_side_normalises_and_pads():
    image = torch.full((3, 40, 50), 200.0)
    x, size = sam_preprocess(image, 64)
    assert x.shape == (3, 64, 64) and size == (51, 64)
    expected = (200 - SAM_PIXEL_MEAN[0]) / SAM_PIXEL_STD[0]
    assert torch.allclose(x[0, :51], torch.full((51, 64), expected), atol=1e-4) and x[:, 51:].abs().max() == 0
    logits = torch.zeros(2, 1, 16, 16)
    assert sam_postprocess_masks(logits, 64, size, (40, 50)).shape == (2, 1, 40, 50)
    assert sam_postprocess_masks(logits, 64).shape == (2, 1, 64, 64)


def test_full_size_sam_parts_match_the_official_architecture():
    with torch.device("meta"):
        sam = SamEncoder("vit_h")
        decoder = build_mask_decoder(sam_config("vit_h"))
    assert sum(p.numel() for p in sam.image_encoder.parameters()) == pytest.approx(637e6, rel=0.01)
    assert sum(p.numel() for p in decoder.parameters()) == pytest.approx(4.06e6, rel=0.01)


def test_missing_pretrained_parts_raise_naming_the_key(tmp_path, monkeypatch):
    with pytest.raises(PretrainedWeightsError, match="sam_checkpoint"):
        SamEncoder(model_config=tiny_sam_config(), checkpoint=str(tmp_path / "sam_vit_h_4b8939.pth"))
    with pytest.raises(PretrainedWeightsError, match="'llava'.*does not exist"):
        LlavaLM(str(tmp_path / "no_llava"))
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE"):
        LlavaLM("nobody-has/this-llava")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when it is not installed
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        LlavaLM(str(tmp_path / "no_llava"), load_in_4bit=True)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("record")
    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[:20] = 1
    Image.fromarray(image).save(folder / "p.png")
    Image.fromarray(mask).save(folder / "m.png")
    return {"image": str(folder / "p.png"), "mask": str(folder / "m.png"), "instruction": "Please segment the tumor and the fat.",
            "targets": ["tumor", "fat"], "codes": [1, 9], "answer": "Sure, tumor [SEG], fat [REJ].", "record": "r.jsonl:3"}


def test_inputs_are_fixed_size_and_the_batch_gives_one_truth_per_seg(net, record):
    from bundles.ltse.scripts.inputs import LTSEInputsd, LTSEPrepareBatch
    from monai.data import list_data_collate

    item = LTSEInputsd(net, max_text_tokens=200)(record)
    assert item["input_ids"].shape == item["labels"].shape == (200,)
    assert item["target_masks"].shape == (10, 64, 64) and item["present"][:2].tolist() == [True, False]
    assert item["resize_size"].tolist() == [51, 64]   # 40x50 -> longest side 64
    pixels, targets, _, kwargs = LTSEPrepareBatch()(list_data_collate([item, item]))
    assert kwargs["input_ids"].shape[1] == int(item["attention_mask"].sum())   # trimmed to the longest text
    assert [m.shape for m in targets["seg_masks"]] == [(1, 51, 64)] * 2       # one [SEG]: tumor; fat is [REJ]
    out = net(pixels, **{k: kwargs[k] for k in ("sam_images", "input_ids", "attention_mask", "labels",
                                                 "resize_sizes", "original_sizes")})
    assert [m.shape for m in out["masks"]] == [(1, 51, 64)] * 2


def test_inputs_never_cut_text_and_check_the_answer_slots(net, record):
    from bundles.ltse.scripts.inputs import LTSEInputsd

    with pytest.raises(DatasetError, match=r"record r.jsonl:3: prompt and answer take \d+ tokens, more than max_text_tokens=20"):
        LTSEInputsd(net, max_text_tokens=20)(record)
    with pytest.raises(DatasetError, match=r"answer 'Sure, tumor \[SEG\], fat \[SEG\].' reads .* need "
                                           r"\[\('tumor', '\[SEG\]'\), \('fat', '\[REJ\]'\)\]"):
        LTSEInputsd(net, max_text_tokens=200)(record | {"answer": "Sure, tumor [SEG], fat [SEG]."})


def test_an_answer_naming_the_targets_in_another_order_is_refused(net, record):
    """Same [SEG]/[REJ] sequence, targets swapped: the k-th mask would be trained under the wrong words."""
    from bundles.ltse.scripts.inputs import LTSEInputsd

    both = record | {"targets": ["tumor", "stroma"], "codes": [1, 0], "instruction": "Segment the tumor and the stroma."}
    assert LTSEInputsd(net, max_text_tokens=200)(both | {"answer": "Sure, Tumor  [SEG], stroma [SEG]."})
    with pytest.raises(DatasetError, match=r"r.jsonl:3: answer 'Sure, stroma \[SEG\], tumor \[SEG\].' reads"):
        LTSEInputsd(net, max_text_tokens=200)(both | {"answer": "Sure, stroma [SEG], tumor [SEG]."})


def test_a_mask_code_outside_the_class_table_names_the_record(net, record):
    from bundles.ltse.scripts.inputs import LTSEInputsd

    inputs = LTSEInputsd(net, max_text_tokens=200)
    assert inputs(record | {"class_codes": [0, 1, 9]})
    with pytest.raises(DatasetError, match=r"m.png: record r.jsonl:3: class codes \[1\] are not in the class table"):
        inputs(record | {"class_codes": [0, 9]})


def test_a_grey_image_is_read_as_rgb(net, record, tmp_path):
    from PIL import Image

    from bundles.ltse.scripts.inputs import LTSEInputsd

    grey = tmp_path / "grey.png"
    Image.open(record["image"]).convert("L").save(grey)
    item = LTSEInputsd(net, max_text_tokens=200)(record | {"image": str(grey)})
    assert item["sam_image"].shape[0] == 3 and item["original_size"].tolist() == [40, 50]
