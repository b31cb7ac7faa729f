"""Prompts written from masks (scripts/make_prompts.py, common/data/mask_prompts.py): each attribute on hand-made
masks, the p0..p9 structure, determinism, splits, and the errors a user meets."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.mask_prompts import PromptSettings, attributes, prompts, record_rng
from common.data.prompt_json import prompt_json_datalist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_prompts  # noqa: E402

S = PromptSettings()
GREY = np.full((120, 120, 3), 128, np.uint8)


def disk(cy, cx, r, size=120, ry=None):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) / (ry or r)) ** 2 + ((xx - cx) / r) ** 2 <= 1


def test_count_location_and_size_from_the_mask():
    one = attributes(GREY, disk(60, 60, 14), S)  # 617 px: 4.3 % of the image, between 2.5 % and 6 %
    assert one["count"] == 1 and one["location"] == ["center"] and one["size"] == "medium"
    assert attributes(GREY, disk(60, 60, 10), S)["size"] == "small"  # 317 px: 2.2 %
    two = attributes(GREY, disk(20, 20, 5) | disk(100, 100, 5), S)
    assert two["count"] == 2 and two["location"] == ["top left", "bottom right"] and two["size"] == "small"
    assert attributes(GREY, disk(60, 60, 30), S)["size"] == "large"
    assert len(two["bbox"]) == 2 and two["bbox"][0] == [15, 15, 25, 25]


def test_shape_round_oval_irregular():
    assert attributes(GREY, disk(60, 60, 20), S)["shape"] == "round"
    assert attributes(GREY, disk(60, 60, 30, ry=12), S)["shape"] == "oval"
    cross = np.zeros((120, 120), bool)
    cross[50:70, 20:100] = cross[20:100, 50:70] = True
    assert attributes(GREY, cross, S)["shape"] == "irregular"


def test_colour_is_the_nearest_palette_name_of_the_mean_colour_inside():
    image = GREY.copy()
    mask = disk(60, 60, 15)
    image[mask] = (200, 30, 35)
    assert attributes(image, mask, S)["color"] == "red"
    image[mask] = (240, 238, 230)
    assert attributes(image, mask, S)["color"] == "white"
    image[mask] = (200, 130, 120)  # a shaded polyp
    assert attributes(image, mask, S)["color"] == "pink"


def test_levels_p0_to_p9_as_the_published_files_and_seeded_rephrasings():
    attrs = attributes(GREY, disk(20, 20, 5) | disk(20, 100, 5), S)
    p = prompts("polyp", attrs, S, record_rng(0, "a"))
    assert [f"p{i}" for i in range(10)] == list(p)
    assert (p["p0"], p["p1"], p["p2"], p["p3"], p["p4"]) == ("", "polyp", "round polyp", "grey round polyp",
                                                              "small grey round polyp")
    assert p["p5"] == "two small grey round polyps"
    assert p["p6"] == "two small grey round polyps, located in top left, top right of the image"
    assert all(isinstance(p[k], list) and len(p[k]) == 2 for k in ("p7", "p8", "p9"))
    assert p == prompts("polyp", attrs, S, record_rng(0, "a"))  # the same record, the same prompts
    assert p != prompts("polyp", attrs, S, record_rng(0, "b"))  # another record draws its own rephrasings
    defined = PromptSettings(definitions={"polyp": ["a projecting growth of tissue"]})
    d = prompts("polyp", attrs, defined, record_rng(0, "a"))
    assert d["p7"] == ["polyp which is a projecting growth of tissue"]
    assert d["p9"] == ["two small grey round polyps which is a projecting growth of tissue located in top left, "
                       "top right of the image"]
    negative = prompts("polyp", {"count": 0}, S, record_rng(0, "a"))
    assert negative["p5"] == "no polyp" and negative["p6"] == "no polyp in the image"


def _dataset(root: Path, n=6, size=64, empty=(), mismatch=None, missing=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        stem = f"img_{i:02d}"
        image = np.full((size, size, 3), 100, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        if i not in empty:
            mask[disk(12 + i % 3, 12, 7, size=size)] = 255
        image[mask > 0] = (220, 140, 130)
        Image.fromarray(image).save(root / "images" / f"{stem}.jpg")
        if i != missing:
            m = mask if i != mismatch else mask[:-4]
            Image.fromarray(m).save(root / "masks" / f"{stem}.png")
    return root


def test_a_folder_becomes_prompt_files_the_kvasir_reader_trains_from(tmp_path):
    data = _dataset(tmp_path / "mine", n=10)
    make_prompts.main(data_dir=str(data), class_name="polyp", progress_bar=False)
    records = [r for s in ("train", "val", "test") for r in prompt_json_datalist(data, s, "p6")]
    assert len(records) == 10 and all(Path(r["image"]).is_file() and Path(r["label"]).is_file() for r in records)
    assert all(r["text"].startswith("one ") and r["text"].endswith(" polyp, located in top left of the image")
               for r in records)
    first = (data / "anns" / "train.json").read_text()
    with pytest.raises(FileExistsError, match="anns/train.json exists"):
        make_prompts.main(data_dir=str(data), class_name="polyp", progress_bar=False)
    make_prompts.main(data_dir=str(data), class_name="polyp", progress_bar=False, overwrite=True)
    assert (data / "anns" / "train.json").read_text() == first  # deterministic
    elsewhere = tmp_path / "prompts_only"
    make_prompts.main(data_dir=str(data), out_dir=str(elsewhere), class_name="polyp", progress_bar=False,
                      split_file=None)
    assert len([r for s in ("train", "val", "test") for r in prompt_json_datalist(elsewhere, s, "p6")]) == 10


def test_split_file_and_fractions(tmp_path):
    data = _dataset(tmp_path / "mine", n=10)
    stems = [f"img_{i:02d}" for i in range(10)]
    (tmp_path / "split.json").write_text(json.dumps({"train": stems[:8], "val": stems[8:9], "test": stems[9:]}))
    make_prompts.main(data_dir=str(data), split_file=str(tmp_path / "split.json"), progress_bar=False)
    report = json.loads((data / "anns" / "prompts_report.json").read_text())
    assert report["records"] == {"train": 8, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="three fractions"):
        make_prompts.main(data_dir=str(data), split=[0.5, 0.2], overwrite=True, progress_bar=False)


def test_empty_masks_are_counted_and_dropped_or_kept(tmp_path):
    data = _dataset(tmp_path / "mine", n=6, empty=(2, 4))
    make_prompts.main(data_dir=str(data), progress_bar=False, split=[1.0, 0.0, 0.0])
    report = json.loads((data / "anns" / "prompts_report.json").read_text())
    assert report["empty_masks"] == ["img_02", "img_04"] and report["dropped"] == 2 and report["records"]["train"] == 4
    make_prompts.main(data_dir=str(data), progress_bar=False, split=[1.0, 0.0, 0.0], empty="keep", overwrite=True)
    kept = json.loads((data / "anns" / "train.json").read_text())
    assert len(kept) == 6 and sum(r["prompts"]["p5"] == "no lesion" for r in kept) == 2


def test_label_masks_give_a_record_per_class_and_negatives(tmp_path):
    data = tmp_path / "labels"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    mask = np.zeros((64, 64), np.uint8)
    mask[disk(16, 16, 6, size=64)] = 1
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(data / "images" / "a.png")
    Image.fromarray(mask).save(data / "masks" / "a.png")
    make_prompts.main(data_dir=str(data), classes={1: "tumor", 2: "stroma"}, negatives=True, split=[1.0, 0.0, 0.0],
                      progress_bar=False)
    records = json.loads((data / "anns" / "train.json").read_text())
    assert [(r["attributes"]["class"], r["prompts"]["p5"].split()[0]) for r in records] == [("tumor", "one"), ("stroma", "no")]
    tumour = prompt_json_datalist(data, "train", "p6")[0]
    assert np.asarray(Image.open(tumour["label"])).max() == 255 and Path(tumour["label"]).parent.name == "class_masks"
    Image.fromarray(mask * 3).save(data / "masks" / "a.png")
    with pytest.raises(DatasetError, match=r"a.png: label values \[3\] are not in --classes"):
        make_prompts.main(data_dir=str(data), classes={1: "tumor", 2: "stroma"}, overwrite=True, progress_bar=False)


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"img_03.jpg: no mask for this image: looked for .*masks/img_03\.\*"):
        make_prompts.main(data_dir=str(_dataset(tmp_path / "a", n=5, missing=3)), progress_bar=False)
    with pytest.raises(DatasetError, match=r"img_01.png: mask is 64x60 but its image img_01.jpg is 64x64"):
        make_prompts.main(data_dir=str(_dataset(tmp_path / "b", n=5, mismatch=1)), progress_bar=False)


@pytest.mark.bundle
def test_the_command_line_prints_what_it_wrote(tmp_path):
    data = _dataset(tmp_path / "cli", n=5)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_prompts.py"), "--data_dir", str(data),
                           "--class_name", "polyp", "--progress_bar", "false"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "5 images:" in proc.stdout and "--dataset_format kvasir" in proc.stdout
