"""LSMS inference on the builder's PNG records: the NIfTI mask of a 2-D slice file (no volume to place it in)."""

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from bundle_runner import bundle_parser
from common.data.referring_ct.builder import build_referring_dataset, find_pairs
from common.data.referring_ct.synthetic import write_sample_ct
from common.engine.inference import PredictionWriter

FOLDER = Path(__file__).resolve().parents[1] / "bundles" / "lsms"


def test_png_records_with_nifti_masks_write_the_slice_mask(tmp_path):
    volumes = write_sample_ct(tmp_path / "vol", n_cases=1, size=64, depth=6, seed=3)
    build_referring_dataset(find_pairs(volumes / "ct", volumes / "labels"), tmp_path / "ds", lesion_values="all",
                            val_fraction=0, test_fraction=0, progress=False)
    first = json.loads((tmp_path / "ds" / "train.jsonl").read_text().splitlines()[0])
    assert first["image"].endswith(".png") and first["slice"] is not None  # the builder keeps the volume's index
    parser = bundle_parser(FOLDER, "inference", overrides={"datalist": str(tmp_path / "ds" / "train.jsonl")})
    record = parser.get_parsed_content("records")[0]
    assert record.get("slice") is None and record["volume_slice"] == first["slice"]
    writer = PredictionWriter(str(tmp_path / "out"), mask_ext=".nii.gz", overlay=False)
    pred = torch.zeros(1, 64, 64)
    pred[0, 10:20, 30:34] = 1
    image = MetaTensor(torch.zeros(3, 64, 64), meta={"filename_or_obj": record["image"]})
    writer(SimpleNamespace(state=SimpleNamespace(batch=[record], output=[{"image": image, "pred": pred}])))
    written = nib.load(writer.written[0]["mask"])
    assert written.shape == (64, 64) and np.asarray(written.dataobj).sum() == 40
    assert Path(writer.written[0]["mask"]).name == f"{Path(first['image']).stem}_lesion{first['lesion_id']}_mask.nii.gz"
