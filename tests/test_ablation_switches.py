"""Every ablation switch of the papers' tables, built from the bundle's own train.yaml as a user sets it:
the switched-off part is absent (no parameter without a gradient, so DDP keeps working), every remaining
trainable parameter gets a gradient, and the switch changes what the network does."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from bundle_runner import bundle_parser

ROOT = Path(__file__).resolve().parents[1]
# the networks are each bundle's tiny model size (configs/tiny.yaml); these are input settings of the small test batch
SMALL = {
    "tmca": {"image_size": 64},
    "lsms": {"image_size": 64},
    "monch": {"image_size": 32},
    "coseg": {"image_size": 64, "nuclei_classes": "track1"},
}

# (bundle, overrides, parameter-name fragments that must be gone, must the eval output change?)
SWITCHES = [
    ("tmca", {"use_ltem": False}, [], True),
    ("tmca", {"alignment_levels": []}, ["global_norm", "global_text_proj"], False),
    ("tmca", {"alignment_weight": 0.0}, ["global_norm", "global_text_proj"], False),
    ("lsms", {"use_text": False}, ["language", "text_projection", "text_encoder"], True),
    ("lsms", {"pixel_map": False}, ["w_v2"], True),
    ("lsms", {"kernels": [7]}, ["units.1", "units.2"], True),
    ("lsms", {"decoder_stages": [4]}, [], True),
    ("monch", {"use_mgfe": False}, ["mgfe."], True),
    ("monch", {"use_topology": False}, ["mgfe.topo.reduce", "mgfe.topo.project"], True),
    ("monch", {"use_ppd": False}, ["decoder.", "text_proj"], True),
    ("monch", {"query_stages": [True, True, False, True]}, ["decoder.stages.2.", "text_proj"], True),
    # Table 4: P (region-aware attention), D (cross-guidance: the other task's logits prompt), C (two passes)
    ("coseg", {"rp_encoder": False}, [".region_attention."], True),
    ("coseg", {"cross_guidance": False}, ["tissue_to_nuclei", "nuclei_to_tissue"], True),
    ("coseg", {"co_segmentation": False}, ["prompt_encoders."], True),
]


def build(bundle: str, overrides: dict):
    folder = ROOT / "bundles" / bundle
    parser = bundle_parser(folder, "train", "tiny", "demo", overrides={**SMALL[bundle], "dataset_dir": "unused", **overrides})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", lazy=False)
    loss = parser.get_parsed_content("loss", lazy=False)
    return parser, net, loss


@functools.lru_cache(maxsize=None)
def full_model(bundle: str):
    return build(bundle, {})[1].eval()


def batch(parser, bundle: str):
    g = torch.Generator().manual_seed(0)
    size = parser["image_size"]
    image = torch.randn(2, 3, size, size, generator=g)
    if bundle == "monch":
        label = torch.randint(0, 6, (2, 1, size, size), generator=g)
        return (image,), label
    if bundle == "coseg":
        nuclei = torch.zeros(2, 1, size, size, dtype=torch.long)
        nuclei[:, :, 10:20, 10:20], nuclei[:, :, 30:40, 35:50] = 1, 2
        return (image,), {"tissue": torch.randint(0, 6, (2, 1, size, size), generator=g), "nuclei": nuclei,
                          "hv": torch.rand(2, 2, size, size, generator=g) * 2 - 1,
                          "nuclei_type": torch.where(nuclei > 0, nuclei, 0)}
    label = torch.zeros(2, 1, size, size)
    label[0, :, 8:30, 8:30] = 1
    label[1, :, 30:60, 20:50] = 1
    from transforms.text import TokenizeTextd

    tokens = TokenizeTextd(tokenizer=parser["text_encoder"], max_length=16)
    ids, mask = tokens.tokenize(["one small polyp, top left", "a large lesion, on the right side"])
    return (image, ids, mask), label


@pytest.mark.parametrize("bundle, overrides, gone, changes_output", SWITCHES,
                         ids=[f"{b}-{'-'.join(o)}" for b, o, _, _ in SWITCHES])
def test_switch_builds_only_what_it_uses(bundle, overrides, gone, changes_output):
    parser, net, loss = build(bundle, overrides)
    names = [n for n, _ in net.named_parameters()]
    for fragment in gone:
        assert not any(fragment in n for n in names), f"{overrides}: {fragment} is still built"
    inputs, label = batch(parser, bundle)
    net.train()
    terms = loss(net(*inputs), label)
    terms["loss"].backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{overrides}: parameters without a gradient (DDP would stop): {unused[:5]}"
    if changes_output:
        full = full_model(bundle)
        net.eval()
        with torch.no_grad():
            a, b = full(*inputs), net(*inputs)
            if isinstance(a, dict):  # Co-Seg's named outputs
                a, b = full.pack(a), net.pack(b)
            assert not torch.allclose(a, b, atol=1e-4), f"{overrides} changed nothing"
    else:  # TMCA's alignment switches act on the training loss, not on the mask
        net.train()
        out = net(*inputs)
        assert out["alignment"] == {} and float(loss(out, label)["align"]) == 0.0


def test_full_models_leave_no_parameter_without_a_gradient():
    for bundle in SMALL:
        parser, net, loss = build(bundle, {})
        inputs, label = batch(parser, bundle)
        net.train()
        loss(net(*inputs), label)["loss"].backward()
        unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, f"{bundle}: {unused[:5]}"
