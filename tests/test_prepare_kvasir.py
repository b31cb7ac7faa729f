"""scripts/prepare_kvasir.py on checkouts laid out as the two public repositories are (tiny stand-in images)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.prompt_json import prompt_json_datalist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import prepare_kvasir  # noqa: E402


def _checkouts(tmp_path: Path, per_split=(4, 2, 2), extra=1):
    kvasir = tmp_path / "Colo-Retal-Induscon2023" / "datasets" / "Kvasir-SEG"
    anns = tmp_path / "medvlsm" / "data" / "kvasir_polyp" / "anns"
    for d in (kvasir / "images", kvasir / "masks", anns):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 0
    for split, count in zip(("train", "val", "test"), per_split):
        records = []
        for _ in range(count + (extra if split == "train" else 0)):
            name = f"cju{n:05d}.jpg"
            n += 1
            Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(kvasir / "images" / name)
            mask = np.zeros((60, 80), np.uint8)
            mask[10:40, 20:50] = 255
            Image.fromarray(mask).convert("RGB").save(kvasir / "masks" / name)  # JPEG masks, as published
            records.append({"bbox": [20, 10, 49, 39], "img_name": name, "mask_name": name,
                            "prompts": {"p0": "", "p1": "polyp", "p6": "one medium pink round polyp, located in center of the image"}})
        if split == "train" and extra:
            records = records[:-extra]  # an image no split uses
        (anns / f"{split}.json").write_text(json.dumps(records))
    return tmp_path / "Colo-Retal-Induscon2023", tmp_path / "medvlsm"


def test_the_two_checkouts_become_the_readers_layout(tmp_path, capsys):
    kvasir, prompts = _checkouts(tmp_path)
    prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "out"), progress_bar=False)
    printed = capsys.readouterr().out
    assert "{'train': 4, 'val': 2, 'test': 2}" in printed and "1 image(s) of" in printed and "in no split" in printed
    counts = {s: len(prompt_json_datalist(tmp_path / "out", s, "p6")) for s in ("train", "val", "test")}
    assert counts == {"train": 4, "val": 2, "test": 2}
    with pytest.raises(DatasetError, match="is not an empty folder"):
        prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "out"), progress_bar=False)


def test_the_resized_copy_keeps_the_aspect_and_binary_masks(tmp_path):
    kvasir, prompts = _checkouts(tmp_path)
    prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "small"), size=40, progress_bar=False)
    record = prompt_json_datalist(tmp_path / "small", "test", "p6")[0]
    assert Image.open(record["image"]).size == (40, 30)
    mask = np.asarray(Image.open(record["label"]))
    assert Path(record["label"]).suffix == ".png" and mask.shape == (30, 40) and set(np.unique(mask)) == {0, 255}


def test_a_record_without_its_image_names_the_split_file_and_the_file(tmp_path):
    kvasir, prompts = _checkouts(tmp_path)
    (kvasir / "datasets" / "Kvasir-SEG" / "images" / "cju00005.jpg").unlink()
    with pytest.raises(DatasetError, match=r"val.json: record 0 \(cju00005.jpg\): .*cju00005.jpg does not exist"):
        prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "out"), progress_bar=False)
    assert not (tmp_path / "out").exists()  # nothing written
