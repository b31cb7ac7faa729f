"""MONCH inference at the trained magnification: the image is not resized; the network sees windows of its trained
size (a larger tile is slid over, a smaller one padded) and the class map comes back at the image's own pixels."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bundle_runner import bundle_parser
from bundles.monch.scripts.inference import inference_records
from common.networks.clip_encoders import CLIP_MEAN, CLIP_STD

MONCH = Path(__file__).resolve().parents[1] / "bundles" / "monch"
TRAINED = 32  # the side the (pretend) checkpoint was trained at


class PixelNet(nn.Module):
    """A tiny per-pixel model (a fixed 1x1 conv, 3 -> 6 logits) that records the size of every input it is given."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return self.conv(x)


def inference_parts():
    parser = bundle_parser(MONCH, "inference", overrides={
        "processor": {"image_size": TRAINED, "include_background": True}})
    return (parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
            parser.get_parsed_content("postprocessing"))


@pytest.mark.parametrize("height, width", [(40, 72), (20, 24)])  # larger than the trained size; smaller
def test_inference_runs_windows_of_the_trained_size_on_the_unresized_image(tmp_path, height, width):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    png = tmp_path / "tile.png"
    Image.fromarray(rgb).save(png)
    preprocessing, inferer, postprocessing = inference_parts()
    (record,) = inference_records(str(png))
    item = preprocessing(record)
    image = torch.as_tensor(item["image"])
    assert image.shape == (3, height, width)  # not resized to 32x32
    net = PixelNet().eval()
    with torch.no_grad():
        logits = inferer(image[None], net)
    assert set(net.seen) == {(TRAINED, TRAINED)}  # every window is of the trained size (a smaller tile is padded)
    assert len(net.seen) >= (2 if width > TRAINED else 1)
    # per-pixel model: the blended windows give exactly its logits on the image's own pixels, CLIP-normalised
    mean = torch.tensor(CLIP_MEAN).reshape(3, 1, 1)
    std = torch.tensor(CLIP_STD).reshape(3, 1, 1)
    normalised = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - mean) / std
    with torch.no_grad():
        expected = net.conv(normalised[None])
    assert logits.shape == (1, 6, height, width)
    assert torch.allclose(torch.as_tensor(logits), expected, atol=1e-4)
    classes = postprocessing({**item, "pred": torch.as_tensor(logits)[0]})["pred"]
    assert classes.shape == (1, height, width)
    assert torch.equal(classes[0].long(), expected[0].argmax(0))


def test_a_tiny_monch_infers_a_larger_tile_in_windows(tmp_path):
    from bundles.monch.scripts.network import MONCH as MONCHNet
    from common.networks.clip_encoders import OpenClipBackbone, tiny_clip_config

    torch.manual_seed(0)
    backbone = OpenClipBackbone(model_cfg=tiny_clip_config(image_size=TRAINED, patch_size=4))
    net = MONCHNet(backbone, feature_channels=32, attention_heads=4, head_channels=8).eval()
    sizes = []
    net.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    npy = tmp_path / "tiles.npy"
    np.save(npy, np.random.default_rng(1).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8))
    preprocessing, inferer, postprocessing = inference_parts()
    (record,) = inference_records(str(npy))
    item = preprocessing(record)
    with torch.no_grad():
        logits = inferer(torch.as_tensor(item["image"])[None], net)
    assert set(sizes) == {(TRAINED, TRAINED)} and len(sizes) >= 1
    assert logits.shape == (1, 6, 50, 70)  # the tile's own pixels
    classes = postprocessing({**item, "pred": torch.as_tensor(logits)[0]})["pred"]
    assert classes.shape == (1, 50, 70) and int(classes.max()) <= 5
