"""From Co-Seg's output dict to what metrics, reports and files need.

* :class:`DiceInputsd` (training and validation): the tissue argmax one-hot and the nuclei mask, stacked
  for :class:`CoSegDice`, the validation score that picks ``model.pt``.
* :class:`Instancesd` (evaluation and inference): the tissue class map and the nuclei instances, found
  HoVer-Net's way with MONAI's post-processing (``HoVerNetInstanceMapPostProcessing``: the nuclei
  probability and the horizontal/vertical maps give markers and a marker-controlled watershed;
  ``HoVerNetNuclearTypePostProcessing``: each instance's type by majority vote), at the input's size.
"""

from __future__ import annotations

import warnings
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.metrics import DiceMetric
from monai.transforms import MapTransform

from transforms.base.describe import configurable
from transforms.geojson import polygon_feature


def _as_dict(value) -> Mapping:
    if not isinstance(value, Mapping):
        raise TypeError(f"Co-Seg outputs and targets are dicts of maps, got {type(value).__name__}")
    return value


@configurable
class DiceInputsd(MapTransform):
    """``pred`` and ``label`` dicts -> ``dice_pred`` / ``dice_label``: (num_tissue_classes + 1, H, W) binary
    maps, the tissue one-hot (argmax of the logits) and the nuclei mask (sigmoid above ``threshold``)."""

    def __init__(self, num_tissue_classes: int, threshold: float = 0.5, pred_key: str = "pred",
                 label_key: str = "label"):
        super().__init__([pred_key, label_key])
        self.num_classes, self.threshold = num_tissue_classes, threshold
        self.pred_key, self.label_key = pred_key, label_key

    def _stack(self, tissue: torch.Tensor, nuclei: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(tissue.long()[0], self.num_classes).permute(2, 0, 1).float()
        return torch.cat([one_hot, nuclei.float()], dim=0)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        pred, label = _as_dict(d[self.pred_key]), _as_dict(d[self.label_key])
        tissue = torch.as_tensor(pred["tissue"]).detach().argmax(dim=0, keepdim=True)
        nuclei = torch.sigmoid(torch.as_tensor(pred["nuclei"]).detach().float()) > self.threshold
        d["dice_pred"] = self._stack(tissue, nuclei)
        d["dice_label"] = self._stack(torch.as_tensor(label["tissue"]), torch.as_tensor(label["nuclei"]) > 0)
        return d


class CoSegDice(DiceMetric):
    """Dice of Co-Seg's two tasks from ``dice_pred`` / ``dice_label`` (:class:`DiceInputsd`).

    ``part``: ``tissue`` (the mean over the tissue classes other than background, each averaged over the
    images whose truth or prediction has it), ``nuclei`` (the nuclei mask's Dice, averaged over the images
    with nuclei in truth or prediction), or ``both``: their mean, the validation score that picks ``model.pt``.
    A class predicted where the truth has none scores 0 (MONAI's ``ignore_empty`` would skip the image and
    reward the false alarm); a class in neither map is skipped.
    """

    def __init__(self, num_tissue_classes: int, part: str = "both"):
        if part not in ("both", "tissue", "nuclei"):
            raise ValueError(f"part must be both, tissue or nuclei, got {part!r}")
        super().__init__(include_background=True, reduction="none", ignore_empty=True)
        self.num_tissue_classes, self.part = int(num_tissue_classes), part

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scores = super()._compute_tensor(y_pred, y)  # (images, channels), NaN where the truth is empty
        dims = tuple(range(2, y.ndim))
        false_alarm = (y.sum(dim=dims) == 0) & (y_pred.sum(dim=dims) > 0)
        return torch.where(false_alarm.to(scores.device), torch.zeros_like(scores), scores)

    def aggregate(self, reduction=None):
        scores = super().aggregate(reduction="none")  # (images, classes + 1), NaN where the truth is empty
        tissue = torch.nanmean(torch.nanmean(scores[:, 1:self.num_tissue_classes], dim=0))
        nuclei = torch.nanmean(scores[:, self.num_tissue_classes])
        if self.part == "tissue":
            return tissue
        if self.part == "nuclei":
            return nuclei
        return torch.nanmean(torch.stack([tissue, nuclei]))


class _ThinSafeContour:
    """MONAI's instance contour, for a nucleus one pixel thin too: its crop (a 1 x n box) is squeezed to 1-D
    inside MONAI and ``find_contours`` fails on it (IndexError). Such a crop is padded in its thin direction
    first; MONAI then finds no valid contour for it and leaves it out, as it does other line artifacts."""

    def __init__(self, contour):
        self.contour = contour

    def __call__(self, mask, offset):
        mask = np.asarray(mask)
        thin = [i for i in (-2, -1) if mask.shape[i] == 1]
        if not thin:
            return self.contour(mask, offset)
        pad = [(0, 0)] * mask.ndim
        for i in thin:
            pad[i] = (1, 1)
        return self.contour(np.pad(mask, pad), [offset[0] - (-1 in thin), offset[1] - (-2 in thin)])


@configurable
class Instancesd(MapTransform):
    """``pred`` (the network's output dict for one image) -> at the input image's size:

    * ``tissue_map`` (1, H, W) uint8 tissue classes;
    * ``nuclei_map`` (1, H, W) int32 nucleus instances (0 background);
    * ``nuclei_types`` (1, H, W) uint8 instance types (1..n; 0 without a type head);
    * ``nuclei_info``: {instance id: {"centroid", "bounding_box", "contour", "type", "type_prob"}} (MONAI's).

    Args:
        threshold: nuclei probability threshold of the foreground mask.
        marker_threshold, marker_radius, min_object_size, sobel_kernel_size: MONAI's HoVer-Net
            post-processing (markers from the HV gradients; objects below ``min_object_size`` pixels dropped).
        size_key: record key with the original (H, W) (the logits are resized to it first); None: as they are.
    """

    def __init__(self, threshold: float = 0.5, marker_threshold: float = 0.4, marker_radius: int = 2,
                 min_object_size: int = 10, sobel_kernel_size: int = 5, pred_key: str = "pred",
                 size_key: str | None = "orig_size"):
        super().__init__([pred_key])
        from monai.apps.pathology.transforms.post.array import (
            HoVerNetInstanceMapPostProcessing,
            HoVerNetNuclearTypePostProcessing,
        )

        self.instances = HoVerNetInstanceMapPostProcessing(
            activation="sigmoid", mask_threshold=threshold, min_object_size=min_object_size,
            sobel_kernel_size=sobel_kernel_size, marker_threshold=marker_threshold, marker_radius=marker_radius)
        self.instances.generate_instance_contour = _ThinSafeContour(self.instances.generate_instance_contour)
        self.types = HoVerNetNuclearTypePostProcessing(activation="softmax", return_type_map=True)
        self.pred_key, self.size_key = pred_key, size_key

    def _resized(self, logits: torch.Tensor, size) -> torch.Tensor:
        logits = torch.as_tensor(logits).detach().float().cpu()
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        return logits

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        pred = _as_dict(d[self.pred_key])
        size = None
        if self.size_key and self.size_key in d:
            size = [int(s) for s in torch.as_tensor(d[self.size_key]).tolist()]
        tissue = self._resized(pred["tissue"], size)
        d["tissue_map"] = tissue.argmax(dim=0, keepdim=True).to(torch.uint8)
        nuclei, hv = self._resized(pred["nuclei"], size), self._resized(pred["hv"], size)
        with warnings.catch_warnings():  # scikit-image's min_size deprecation, raised inside MONAI for every image
            warnings.filterwarnings("ignore", message=".*min_size.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*min_size.*", category=DeprecationWarning)
            info, instance_map = self.instances(nuclei, hv)
        instance_map = torch.as_tensor(np.asarray(instance_map)).to(torch.int32)
        # instances MONAI found no contour for (line artifacts) are not nuclei: out of the map too
        kept = torch.as_tensor(sorted(int(i) for i in info), dtype=torch.int32)
        instance_map = torch.where(torch.isin(instance_map, kept), instance_map, torch.zeros_like(instance_map))
        types = torch.zeros_like(instance_map, dtype=torch.uint8)
        if "nuclei_type" in pred and info:
            # MONAI's vote reads channel 0 as background (a nucleus voted 0 takes its runner-up type); the
            # type head has none, so a background channel that never wins goes first: types come out 1..n
            logits = self._resized(pred["nuclei_type"], size)
            logits = torch.cat([torch.full_like(logits[:1], -1.0e4), logits], dim=0)
            info, type_map = self.types(logits, info, instance_map)
            types = torch.as_tensor(np.asarray(type_map)).to(torch.uint8)
        d["nuclei_map"], d["nuclei_types"], d["nuclei_info"] = instance_map, types, info
        return d


def nuclei_features(instance_map: np.ndarray, info: Mapping, type_names: Sequence[str] = ()) -> list[dict]:
    """GeoJSON features of the instances MONAI's post-processing found: its contour of each (pixel centres,
    shifted by half a pixel to the GeoJSON pixel-corner convention), named as PUMA's evaluation reads them
    (:func:`transforms.puma.nuclei_output_names`: track 1 ``nuclei_tumor`` / ``nuclei_lymphocyte`` /
    ``nuclei_other``, track 2 the ten ``nuclei_*`` names), ``nuclei`` without a type; the PUMA reader reads
    them back."""
    from scipy import ndimage

    from transforms.puma import UNTYPED_NUCLEUS, nuclei_output_names

    class_names = nuclei_output_names(type_names)

    ids = np.asarray(instance_map).astype(np.int64)
    present = [int(i) for i in info if int(i) > 0]
    areas = ndimage.sum_labels(np.ones_like(ids), ids, present) if present else []
    centres = ndimage.center_of_mass(np.ones_like(ids), ids, present) if present else []
    features = []
    for i, area, (cy, cx) in zip(present, areas, centres):
        contour = np.asarray(info[i].get("contour", []), dtype=np.float64)
        if contour.ndim != 2 or len(contour) < 3:
            continue
        kind = info[i].get("type")
        name = class_names[int(kind) - 1] if class_names and kind else UNTYPED_NUCLEUS  # types are 1..n
        features.append(polygon_feature(contour + 0.5, name, measurements={
            "id": i, "area_px": float(area), "centroid_x": float(cx) + 0.5, "centroid_y": float(cy) + 0.5}))
    return features


class NucleiFeaturesd(MapTransform):
    """``nuclei_map`` + ``nuclei_info`` (:class:`Instancesd`) -> ``nuclei_features``: the nuclei as GeoJSON
    features (what the inference writer saves and the MONAI Label app returns)."""

    def __init__(self, type_names: Sequence[str] = (), map_key: str = "nuclei_map", info_key: str = "nuclei_info",
                 out_key: str = "nuclei_features"):
        super().__init__([map_key])
        self.type_names, self.map_key, self.info_key, self.out_key = list(type_names), map_key, info_key, out_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        instances = np.asarray(d[self.map_key])
        d[self.out_key] = nuclei_features(instances.reshape(instances.shape[-2:]), d.get(self.info_key) or {},
                                          self.type_names)
        return d
