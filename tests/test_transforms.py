import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.datalist import mask_threshold
from transforms import (
    BinarizeMaskd,
    CheckSameSized,
    ColorMaskToLabeld,
    EnsureChannelsd,
    LoadImageSafed,
    SelectTextd,
    ShuffleTexts,
    TokenizeTextd,
)


def test_load_keeps_row_major_orientation_and_names_bad_files(tmp_path):
    arr = np.zeros((20, 30), dtype=np.uint8)
    arr[:5, :10] = 255  # bright block at the top left
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = LoadImageSafed(keys="image")({"image": str(tmp_path / "a.png")})["image"]
    assert tuple(img.shape) == (1, 20, 30)
    assert img[0, :5, :10].min() == 255 and img[0, 10:, :].max() == 0
    with pytest.raises(DatasetError, match="missing.png.*does not exist"):
        LoadImageSafed(keys="image")({"image": str(tmp_path / "missing.png")})
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="broken.png.*cannot read"):
        LoadImageSafed(keys="image")({"image": str(tmp_path / "broken.png")})


def test_binarize_thresholds_lossy_and_unit_masks():
    jpeg_like = torch.tensor([[[0, 30, 126, 128, 255]]], dtype=torch.float32).repeat(3, 1, 1)
    out = BinarizeMaskd(keys="label", threshold=127)({"label": jpeg_like})["label"]
    assert out.shape == (1, 1, 5)
    assert out.flatten().tolist() == [0, 0, 0, 1, 1]
    unit = torch.tensor([[[0.0, 0.4, 0.6, 1.0]]])
    assert BinarizeMaskd(keys="label", threshold=0.5)({"label": unit})["label"].flatten().tolist() == [0, 0, 1, 1]
    # an RGB colour mask (BKAI) counts red or green as foreground
    rgb = torch.tensor([[[250, 0, 0]], [[0, 250, 0]], [[0, 0, 0]]], dtype=torch.float32)
    assert BinarizeMaskd(keys="label", threshold=127)({"label": rgb})["label"].flatten().tolist() == [1, 1, 0]


def test_label_masks_above_one_are_kept_or_refused_never_emptied(tmp_path):
    """A 0/3 mask (labels above 1, below the 8-bit threshold) used to come out empty without a word."""
    path = tmp_path / "mask_03.png"
    Image.fromarray(np.array([[0, 3], [3, 0]], np.uint8)).save(path)
    mask = LoadImageSafed(keys="label")({"label": str(path)})
    datalist_rule = BinarizeMaskd(keys="label", threshold=mask_threshold("datalist"))(mask)["label"]
    assert datalist_rule.flatten().tolist() == [0, 1, 1, 0]  # any non-zero value is the target
    with pytest.raises(DatasetError, match=r"mask_03.png.*values up to 3.*none above the threshold 127"):
        BinarizeMaskd(keys="label", threshold=mask_threshold("kvasir"))(mask)
    empty = torch.zeros(1, 2, 2)
    assert BinarizeMaskd(keys="label", threshold=127)({"label": empty})["label"].sum() == 0  # truly empty is fine
    assert mask_threshold("qata") == 0 and mask_threshold("bkai") == 127
    with pytest.raises(ValueError, match="dataset_format"):
        mask_threshold("nifti")


def test_color_mask_to_labels_bkai_code():
    # red (with JPEG noise), green, black, dark noise
    rgb = torch.tensor([[[240, 10, 0, 30]], [[12, 230, 0, 20]], [[8, 14, 0, 25]]], dtype=torch.float32)
    out = ColorMaskToLabeld(keys="label", colors={1: [255, 0, 0], 2: [0, 255, 0]})({"label": rgb})["label"]
    assert out.flatten().tolist() == [1, 2, 0, 0]
    with pytest.raises(ValueError, match="3 channels"):
        ColorMaskToLabeld(keys="label", colors={1: [255, 0, 0]})({"label": torch.zeros(1, 2, 2)})


def test_ensure_channels():
    grey = torch.rand(1, 4, 4)
    assert EnsureChannelsd(keys="image")({"image": grey})["image"].shape == (3, 4, 4)
    rgba = torch.rand(4, 4, 4)
    assert EnsureChannelsd(keys="image")({"image": rgba})["image"].shape == (3, 4, 4)
    assert EnsureChannelsd(keys="image", channels=1)({"image": torch.rand(3, 4, 4)})["image"].shape == (1, 4, 4)


def test_size_mismatch_names_both_files():
    image = MetaTensor(torch.zeros(3, 8, 8), meta={"filename_or_obj": "/d/img.png"})
    label = MetaTensor(torch.zeros(1, 8, 9), meta={"filename_or_obj": "/d/mask.png"})
    with pytest.raises(DatasetError, match=r"/d/mask\.png.*\(8, 9\).*\(8, 8\).*/d/img\.png"):
        CheckSameSized(keys=["image", "label"])({"image": image, "label": label})
    CheckSameSized(keys=["image", "label"])({"image": image, "label": MetaTensor(torch.zeros(1, 8, 8))})


def test_select_text():
    rec = {"image": "x.png", "text": ["first", "second", "third"]}
    assert SelectTextd()(rec)["text"] == "first"
    sampler = SelectTextd(random=True)
    sampler.set_random_state(0)
    seen = {sampler(rec)["text"] for _ in range(30)}
    assert seen == {"first", "second", "third"}
    with pytest.raises(DatasetError, match="x.png.*empty 'text'"):
        SelectTextd()({"image": "x.png", "text": "   "})
    with pytest.raises(DatasetError, match="x.png"):
        SelectTextd()({"image": "x.png", "text": [""]})
    assert SelectTextd(allow_empty=True)({"image": "x.png", "text": None})["text"] == ""


def test_tokenize(tokenizer):
    out = tokenizer({"text": "one small polyp"})
    assert out["text_ids"].shape == (16,) and out["text_ids"].dtype == torch.long
    assert out["text_mask"].sum().item() == len(tokenizer.tokenizer.tokenize("one small polyp")) + 2  # [CLS] ... [SEP]
    long = tokenizer({"text": "word " * 100})
    assert long["text_mask"].sum().item() == 16
    with pytest.raises(TypeError, match="SelectTextd"):
        tokenizer({"text": ["a", "b"]})


def test_shuffle_texts_modes():
    records = [{"image": f"{i}.png", "text": f"text {i}"} for i in range(6)]
    shuffled = ShuffleTexts("shuffled", seed=3)(records)
    assert sorted(r["text"] for r in shuffled) == sorted(r["text"] for r in records)
    assert all(s["text"] != r["text"] for s, r in zip(shuffled, records))  # nobody keeps its own
    assert ShuffleTexts("shuffled", seed=3)(records) == shuffled  # seeded
    assert all(r["text"] == "" for r in ShuffleTexts("empty")(records))
    assert ShuffleTexts("own")(records) == records
    assert records[0]["text"] == "text 0"  # input untouched
    with pytest.raises(ValueError):
        ShuffleTexts("true")
