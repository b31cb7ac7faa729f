"""Co-Seg's nuclei GeoJSON, written as inference writes it, under the class names PUMA's evaluation reads
(track 1: nuclei_tumor, nuclei_lymphocyte, nuclei_other), and read back by the PUMA reader: correct the
nuclei in QuPath, then fine-tune on them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.transforms import ComputeHoVerMaps
from PIL import Image

from bundles.coseg.scripts.inference import CoSegWriter
from bundles.coseg.scripts.outputs import Instancesd
from common.evaluation.instances import instance_counts
from transforms.base.errors import DatasetError
from transforms.puma import NUCLEI_TYPE_NAMES, TISSUE_CLASSES, TISSUE_COLORS, read_nuclei


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """Three separate nuclei of track 1's types 1 (tumour), 2 (TIL), 3 (other)."""
    instances = np.zeros((48, 48), np.int32)
    instances[4:14, 4:14] = 1
    instances[20:30, 24:36] = 2
    instances[34:44, 6:16] = 3
    return instances, instances.astype(np.uint8)  # nucleus i has type i


def _write(tmp_path, type_names) -> tuple[list[str], object]:
    """Perfect network outputs through Co-Seg's post-processing and its inference writer; the GeoJSON path."""
    instances, types = _truth()
    hv = ComputeHoVerMaps()(torch.as_tensor(instances[None])).float()
    tissue = torch.full((6, 48, 48), -8.0)
    tissue[1] = 8.0
    pred = {"tissue": tissue, "nuclei": torch.where(torch.as_tensor(instances[None]) > 0, 8.0, -8.0), "hv": hv}
    if type_names:
        pred["nuclei_type"] = torch.stack([torch.where(torch.as_tensor(types) == t, 6.0, -6.0) for t in (1, 2, 3)])
    item = Instancesd(min_object_size=5, size_key=None)({"pred": pred})
    image = tmp_path / "roi.png"
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(image)
    writer = CoSegWriter(str(tmp_path / "out"), TISSUE_CLASSES, TISSUE_COLORS, type_names=type_names)
    writer(SimpleNamespace(state=SimpleNamespace(batch=[{"image": str(image), "source": str(image), "name": "roi"}], output=[item])))
    path = tmp_path / "out" / "roi_nuclei.geojson"
    names = [f["properties"]["classification"]["name"] for f in json.loads(path.read_text())["features"]]
    return names, path


def test_track1_nuclei_are_written_under_pumas_names_and_read_back_with_their_types(tmp_path):
    names, path = _write(tmp_path, NUCLEI_TYPE_NAMES["track1"])
    assert sorted(names) == ["nuclei_lymphocyte", "nuclei_other", "nuclei_tumor"]
    truth, truth_types = _truth()
    instances, types, vanished = read_nuclei(path, (48, 48), "track1")
    assert vanished == 0
    tp, fp, fn, _ = instance_counts(truth, instances)
    assert (tp, fp, fn) == (3, 0, 0)  # the contours give back the nuclei (IoU > 0.5 each)
    for i in (1, 2, 3):  # and each its type: tumour 1, TIL (written nuclei_lymphocyte) 2, other 3
        read_type = np.unique(types[instances == np.bincount(instances[truth == i]).argmax()])
        assert read_type.tolist() == [i]


def test_class_agnostic_nuclei_are_written_as_nuclei_and_read_back_without_a_type(tmp_path):
    names, path = _write(tmp_path, ())
    assert names == ["nuclei"] * 3
    for table in ("none", "track1", "track2"):
        instances, types, _ = read_nuclei(path, (48, 48), table)
        assert instances.max() == 3 and not types.any()  # untyped: the type loss skips them


def test_track2_refuses_track1s_merged_class(tmp_path):
    _, path = _write(tmp_path, NUCLEI_TYPE_NAMES["track1"])
    feature = [f["properties"]["classification"]["name"] for f in json.loads(path.read_text())["features"]].index(
        "nuclei_other")
    message = (f"feature {feature} has class 'nuclei_other' (track 1's merged class), which nuclei_classes track2 "
               f"cannot split into its types: read the file with nuclei_classes track1 or none")
    with pytest.raises(DatasetError, match=r"roi_nuclei\.geojson: " + message.replace("(", r"\(").replace(")", r"\)")):
        read_nuclei(path, (48, 48), "track2")
