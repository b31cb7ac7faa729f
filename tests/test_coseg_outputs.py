"""Co-Seg's post-processing: nuclei instances from the probability and HV maps (MONAI's HoVer-Net steps),
their GeoJSON features, and the tissue map."""

import numpy as np
import pytest
import torch
from monai.transforms import ComputeHoVerMaps

from bundles.coseg.scripts.outputs import Instancesd, NucleiFeaturesd


def _pred(instances: np.ndarray, tissue_classes: int = 6) -> dict:
    """Perfect network outputs for an instance map: logits +-8 for the nuclei, HV maps from the truth."""
    hv = ComputeHoVerMaps()(torch.as_tensor(instances[None]))
    tissue = torch.full((tissue_classes, *instances.shape), -8.0)
    tissue[2] = 8.0
    return {"tissue": tissue, "nuclei": torch.where(torch.as_tensor(instances[None]) > 0, 8.0, -8.0), "hv": hv.float()}


def test_touching_and_separate_nuclei_come_back_as_their_instances():
    truth = np.zeros((48, 48), np.int32)
    truth[5:15, 5:15] = 1
    truth[5:15, 15:25] = 2  # touches nucleus 1: only the HV maps separate them
    truth[30:40, 30:42] = 3
    out = Instancesd(min_object_size=5, size_key=None)({"pred": _pred(truth)})
    found = out["nuclei_map"].numpy().reshape(truth.shape)
    assert len(np.unique(found)) - 1 == 3
    for i in (1, 2, 3):  # each true nucleus is mostly one found instance
        ids, counts = np.unique(found[truth == i], return_counts=True)
        assert ids[np.argmax(counts)] > 0 and counts.max() / (truth == i).sum() > 0.8
    assert out["tissue_map"].shape == (1, 48, 48) and int(out["tissue_map"].max()) == 2


def test_a_nucleus_one_pixel_thin_does_not_stop_evaluation():
    """MONAI squeezes a 1 x n crop to 1-D before find_contours (IndexError); the crop is padded first."""
    truth = np.zeros((32, 32), np.int32)
    truth[10, 4:12] = 1
    truth[20:26, 20:26] = 2
    out = Instancesd(min_object_size=3, marker_radius=0, size_key=None)({"pred": _pred(truth)})
    features = NucleiFeaturesd()(out)["nuclei_features"]
    assert len(features) == len(out["nuclei_info"]) >= 1
    for f in features:  # contours in image coordinates (pixel corners): inside the image, around the nucleus
        ring = np.asarray(f["geometry"]["coordinates"][0])
        assert ring.min() >= 0 and ring.max() <= 32


def test_a_nucleus_takes_its_majority_type_even_when_it_is_the_first_type():
    """MONAI's vote treats type index 0 as background; the first nucleus type (tumour in PUMA's tables) must
    still win where it is the majority, and types come out 1..n."""
    truth = np.zeros((32, 32), np.int32)
    truth[8:20, 8:20] = 1
    pred = _pred(truth)
    logits = torch.full((3, 32, 32), -5.0)
    logits[0] = 5.0                     # tumour (type 1) over most of the nucleus
    logits[1, 8:11, 8:20] = 10.0        # TIL (type 2) on a strip of it
    pred["nuclei_type"] = logits
    out = Instancesd(min_object_size=5, size_key=None)({"pred": pred})
    (info,) = out["nuclei_info"].values()
    assert info["type"] == 1
    types = out["nuclei_types"].numpy().reshape(truth.shape)
    assert set(np.unique(types[truth == 1])) == {1} and types[truth == 0].max() == 0
    feature = NucleiFeaturesd(type_names=("tumor", "TIL", "other"))(out)["nuclei_features"][0]
    assert feature["properties"]["classification"]["name"] == "nuclei_tumor"


def _stack(tissue: np.ndarray, nuclei: np.ndarray, classes: int = 3) -> torch.Tensor:
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(tissue).long(), classes).permute(2, 0, 1).float()
    return torch.cat([one_hot, torch.as_tensor(nuclei)[None].float()])[None]


def test_validation_dice_scores_a_class_predicted_where_the_truth_has_none_as_zero():
    from bundles.coseg.scripts.outputs import CoSegDice

    truth = np.zeros((4, 4), int)
    truth[0:2] = 1                      # class 1: 8 px; class 2: none
    pred = truth.copy()
    pred[0, 0] = 2                      # 1 px of class 2 where the truth has none: Dice 0, not skipped
    no_nuclei, one_nucleus = np.zeros((4, 4)), np.zeros((4, 4))
    one_nucleus[3, 3] = 1
    metrics = {part: CoSegDice(3, part) for part in ("tissue", "nuclei", "both")}
    for m in metrics.values():
        m(y_pred=_stack(pred, one_nucleus), y=_stack(truth, no_nuclei))       # nuclei predicted, none true: 0
        m(y_pred=_stack(np.ones((4, 4), int), one_nucleus), y=_stack(np.ones((4, 4), int), one_nucleus))  # perfect
    # class 1: (2*7/15 + 1) / 2 = 29/30; class 2: image 1 scores 0, image 2 (in neither map) is skipped
    assert metrics["tissue"].aggregate().item() == pytest.approx((29 / 30 + 0) / 2)
    assert metrics["nuclei"].aggregate().item() == pytest.approx((0 + 1) / 2)
    assert metrics["both"].aggregate().item() == pytest.approx(((29 / 30) / 2 + 0.5) / 2)
