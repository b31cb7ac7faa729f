import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common.data.datalist import build_datalist
from common.data.lvit import read_text_table
from transforms.base.errors import DatasetError
from common.data.synthetic.sample_datasets import write_sample_dataset


def _copy(sample_root: Path, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(sample_root / name, dst)
    return dst


def _check(records, n):
    assert len(records) == n
    for r in records:
        assert Path(r["image"]).is_file() and Path(r["label"]).is_file()
        assert r["text"]


def test_qata_ariadne_csv_layout(sample_root):
    root = sample_root / "QaTa-COV19"
    train = build_datalist("qata", root, "train")
    val = build_datalist("qata", root, "val")
    test = build_datalist("qata", root, "test")
    # 16 training rows: validation is the last 20 % of them (as Ariadne splits)
    _check(train, 13), _check(val, 3), _check(test, 4)
    rows = read_text_table(root / "prompt" / "train.csv")
    assert [Path(r["label"]).name for r in val] == [name for name, _ in rows[-3:]]
    assert Path(train[0]["label"]).name == "mask_" + Path(train[0]["image"]).name
    assert "lung" in train[0]["text"]


def test_qata_lvit_xlsx_layout(sample_root, tmp_path):
    root = _copy(sample_root, "QaTa-COV19", tmp_path)
    # LViT keeps the text next to the images as Train_text.xlsx / Test_text.xlsx
    for split, folder in (("train", "Train Set"), ("test", "Test Set")):
        frame = pd.read_csv(root / "prompt" / f"{split}.csv")
        frame.to_excel(root / folder / f"{split.capitalize()}_text.xlsx", index=False)
    shutil.rmtree(root / "prompt")
    assert len(build_datalist("qata", root, "train")) == 13
    assert len(build_datalist("qata", root, "test", val_fraction=0.5)) == 4


def test_mosmed_lvit_layout(sample_root):
    root = sample_root / "MosMedData+"
    counts = {s: len(build_datalist("mosmed", root, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 2, "test": 4}
    rec = build_datalist("mosmed", root, "val")[0]
    assert Path(rec["image"]).name == Path(rec["label"]).name  # labelcol/ uses the image's name


@pytest.mark.parametrize("fmt,folder", [("kvasir", "Kvasir-SEG"), ("bkai", "BKAI-IGH")])
def test_poudel_prompt_json(sample_root, fmt, folder):
    root = sample_root / folder
    p6 = build_datalist(fmt, root, "train", prompt_level="p6")
    _check(p6, 14)
    assert "located in" in p6[0]["text"]
    p0 = build_datalist(fmt, root, "test", prompt_level="p0")
    assert p0[0]["text"] == "polyp"
    lists = build_datalist(fmt, root, "val", prompt_level="p8")
    assert isinstance(lists[0]["text"], list) and len(lists[0]["text"]) == 2
    with pytest.raises(DatasetError, match=r"train\.json.*no prompt 'p11'"):
        build_datalist(fmt, root, "train", prompt_level="p11")


def test_file_datalist(tmp_path, sample_root):
    src = sample_root / "Kvasir-SEG"
    rows = [{"image": str(src / "images" / "sample_train_0000.jpg"), "label": str(src / "masks" / "sample_train_0000.jpg"),
             "text": "one polyp"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with open(tmp_path / "test.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "label", "text"])
        w.writeheader()
        w.writerows(rows)
    assert build_datalist("datalist", tmp_path, "train")[0]["text"] == "one polyp"
    assert len(build_datalist("datalist", tmp_path, "test")) == 1


# ---- bad input: every error names the file ---------------------------------------------------


def test_text_row_whose_image_does_not_exist(sample_root, tmp_path):
    root = _copy(sample_root, "QaTa-COV19", tmp_path)
    victim = sorted((root / "Train Set" / "Images").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"train\.csv.*{victim.name}.*does not exist"):
        build_datalist("qata", root, "train")


def test_missing_mask(sample_root, tmp_path):
    root = _copy(sample_root, "MosMedData+", tmp_path)
    victim = sorted((root / "Test Set" / "labelcol").iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"Test_text\.xlsx.*mask .*{victim.name}"):
        build_datalist("mosmed", root, "test")


def test_empty_text(sample_root, tmp_path):
    root = _copy(sample_root, "QaTa-COV19", tmp_path)
    csv_path = root / "prompt" / "test.csv"
    frame = pd.read_csv(csv_path)
    frame.loc[2, "Description"] = " "
    frame.to_csv(csv_path, index=False)
    with pytest.raises(DatasetError, match=r"test\.csv.*row 4.*empty Description"):
        build_datalist("qata", root, "test")
    kv = _copy(sample_root, "Kvasir-SEG", tmp_path)
    entries = json.loads((kv / "anns" / "val.json").read_text())
    entries[0]["prompts"]["p6"] = ""
    (kv / "anns" / "val.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"val\.json.*empty prompt 'p6'"):
        build_datalist("kvasir", kv, "val")


def test_wrong_columns_and_missing_text_file(sample_root, tmp_path):
    root = _copy(sample_root, "QaTa-COV19", tmp_path)
    (root / "prompt" / "test.csv").write_text("file,caption\nmask_a.png,hello\n")
    with pytest.raises(DatasetError, match=r"test\.csv.*'Image' and 'Description'"):
        build_datalist("qata", root, "test")
    (root / "prompt" / "test.csv").unlink()
    with pytest.raises(DatasetError, match="no text file for the test split"):
        build_datalist("qata", root, "test")
    with pytest.raises(DatasetError, match="does not exist"):
        build_datalist("qata", tmp_path / "nowhere", "test")


def test_unreadable_image_and_size_mismatch(sample_root, tmp_path):
    root = _copy(sample_root, "Kvasir-SEG", tmp_path)
    entries = json.loads((root / "anns" / "test.json").read_text())
    broken = root / "images" / entries[0]["img_name"]
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(DatasetError, match=rf"{broken.name}.*cannot read image"):
        build_datalist("kvasir", root, "test")
    build_datalist("kvasir", root, "test", check_files=False)  # the header check can be turned off
    mask = root / "masks" / entries[1]["mask_name"]
    Image.fromarray(np.zeros((10, 12), dtype=np.uint8)).save(mask, format="JPEG")
    entries = entries[1:]
    (root / "anns" / "test.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=rf"{mask.name}.*\(12, 10\) differs from image size"):
        build_datalist("kvasir", root, "test")


def test_generator_makes_text_decide_the_target(tmp_path):
    root = write_sample_dataset("kvasir", tmp_path, n=12, size=64, seed=5)
    from common.data.synthetic.scenes import endoscopy_scene

    scene = endoscopy_scene(np.random.default_rng(0), 64)
    masks = [b.mask(64) for b in scene.blobs]
    assert len(masks) >= 2 and not np.any(masks[0] & masks[1])  # distinct objects
    assert len({b.where for b in scene.blobs}) == len(scene.blobs)  # each named by a different position
    assert (root / "kavsir_bboxes.json").is_file()
    with pytest.raises(ValueError):
        write_sample_dataset("pannuke", tmp_path)
