"""A flip that keeps the prompt true: the image, the mask and the words of the flipped axis change together."""

import numpy as np
import pytest
import torch

from transforms.flip import RandFlipWithTextd, mirror_words


def test_words_of_the_flipped_axis_swap_and_keep_their_case():
    p6 = "one small pink round polyp, located in top left of the image"
    assert mirror_words(p6, 1) == "one small pink round polyp, located in top right of the image"
    assert mirror_words(p6, 0) == "one small pink round polyp, located in bottom left of the image"
    assert mirror_words("Left lobe, RIGHT of the upper lesion", 1) == "Right lobe, LEFT of the upper lesion"
    assert mirror_words("the upper lesion above the lower one", 0) == "the lower lesion below the upper one"
    assert mirror_words("leftover bright spot", 1) == "leftover bright spot"  # whole words only
    assert mirror_words(["in left", "in right"], 1) == ["in right", "in left"]


def test_a_flip_moves_the_mask_and_the_words_together():
    image = torch.zeros(3, 4, 6)
    image[:, 0, 0] = 1.0  # top left
    label = (image[:1] > 0).float()
    record = {"image": image, "label": label.numpy(), "text": ["polyp located in top left of the image", "a polyp"]}
    flip = RandFlipWithTextd(["image", "label"], prob=1.0, spatial_axes=(0, 1))
    out = flip(record)
    assert out["image"][0, 3, 5] == 1 and out["image"].sum() == 3  # now bottom right
    assert isinstance(out["label"], np.ndarray) and out["label"][0, 3, 5] == 1
    assert out["text"] == ["polyp located in bottom right of the image", "a polyp"]
    assert record["text"][0].endswith("top left of the image")  # the input record is not changed
    never = RandFlipWithTextd(["image", "label"], prob=0.0)(record)
    assert torch.equal(never["image"], image) and never["text"] == record["text"]
    with pytest.raises(ValueError, match="spatial_axes must be 0 .* and/or 1"):
        RandFlipWithTextd(["image"], spatial_axes=2)
