"""PUMA as published: GeoJSON polygons (QuPath's export format) rasterised to tissue, instance and type maps,
the errors a bad file gets, the seeded split, the synthetic writer, and nuclei written back as GeoJSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.puma.reader import IMAGES, NUCLEI, TISSUE, puma_cases, puma_datalist, puma_split
from common.data.puma.synthetic import write_sample_puma
from transforms.geojson import polygon_feature, read_features, write_features
from transforms.puma import NUCLEI_NAMES, TISSUE_NAMES, LoadPumaROId, nuclei_maps, tissue_map


def feature(name, rings, kind="Polygon", **extra):
    """A feature as QuPath exports it: objectType, a classification with name and colour."""
    coordinates = rings if kind == "Polygon" else rings
    return {"type": "Feature", "id": "7f0c", "geometry": {"type": kind, "coordinates": coordinates},
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": [0, 150, 0]}, **extra}}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write(path: Path, features) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_tissue_polygons_with_holes_multipolygons_and_nesting(tmp_path):
    # stroma over everything, a tumour with a hole (necrosis drawn in the hole), a two-part blood vessel
    path = write(tmp_path / "t.geojson", [
        feature("tissue_stroma", [square(0, 0, 12, 12)]),
        feature("tissue_tumor", [square(2, 2, 8, 8), square(4, 4, 6, 6)]),
        feature("tissue_blood_vessel", [[square(9, 0, 11, 2)], [square(9, 9, 11, 11)]], kind="MultiPolygon"),
        feature("tissue_necrosis", [square(4, 4, 6, 6)]),
    ])
    t = tissue_map(path, (12, 12))
    assert t[0, 0] == 1 and t[2, 2] == 3 and t[7, 7] == 3  # pixel centres (2.5, 2.5) and (7.5, 7.5) are inside
    assert (t[4:6, 4:6] == 5).all()  # the hole shows the necrosis, not tumour
    assert (t[0:2, 9:11] == 2).all() and (t[9:11, 9:11] == 2).all()
    assert (t[8, 2:8] == 1).all()  # y 8.5 is outside the tumour square (2..8)
    assert int((t == 3).sum()) == 36 - 4


def test_overlapping_nuclei_go_to_the_smaller_and_ids_follow_the_file(tmp_path):
    path = write(tmp_path / "n.geojson", [
        feature("nuclei_tumor", [square(0, 0, 6, 6)]),        # id 1, large
        feature("nuclei_lymphocyte", [square(4, 4, 7, 7)]),   # id 2, small: wins the overlap
        feature("nuclei_stroma", [square(8, 8, 10, 10)]),     # id 3
    ])
    instances, types = nuclei_maps(path, (10, 10), "track2")
    assert instances[5, 5] == 2 and instances[0, 0] == 1 and instances[9, 9] == 3
    assert types[0, 0] == NUCLEI_NAMES.index("nuclei_tumor") + 1 and types[5, 5] == 2 and types[9, 9] == 7
    _, track1 = nuclei_maps(path, (10, 10), "track1")
    assert track1[0, 0] == 1 and track1[5, 5] == 2 and track1[9, 9] == 3  # tumour / TIL / other
    none_instances, none_types = nuclei_maps(path, (10, 10), "none")
    assert np.array_equal(none_instances, instances) and not none_types.any()
    hidden = write(tmp_path / "h.geojson", [feature("nuclei_tumor", [square(0, 0, 2, 2)]),
                                            feature("nuclei_tumor", [square(0, 0, 2, 2)]),
                                            feature("nuclei_tumor", [square(5, 5, 7, 7)])])
    ids, _ = nuclei_maps(hidden, (8, 8))
    assert sorted(np.unique(ids)) == [0, 1, 2]  # a nucleus hidden entirely by another leaves no gap in the ids


@pytest.mark.parametrize("bad, message", [
    ({"type": "Feature"}, "must be a GeoJSON FeatureCollection, got 'Feature'"),
    ({"type": "FeatureCollection", "features": [feature("tissue_lake", [square(0, 0, 2, 2)])]},
     r"feature 0 has class 'tissue_lake', not one of"),
    ({"type": "FeatureCollection", "features": [feature("tissue_tumor", [[[0, 0], [4, 0], [4, 4], [0, 4]]])]},
     r"feature 0 \(tissue_tumor\), polygon 0, ring 0: the ring is not closed"),
    ({"type": "FeatureCollection", "features": [feature("tissue_tumor", [[[0, 0], [4, 0], [0, 0]]])]},
     "at least 4 positions"),
    ({"type": "FeatureCollection", "features": [feature("tissue_tumor", [square(0, 0, 40, 4)])]},
     r"lie outside the 16x16 image"),
    ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
                                                  "properties": {"classification": {"name": "tissue_tumor"}}}]},
     "is a 'Point'; only Polygon and MultiPolygon"),
])
def test_a_bad_geojson_names_the_file_and_the_feature(tmp_path, bad, message):
    path = tmp_path / "roi_tissue.geojson"
    path.write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=message) as err:
        tissue_map(path, (16, 16))
    assert "roi_tissue.geojson" in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "x.geojson").write_text("{not json")
    with pytest.raises(DatasetError, match="x.geojson: is not JSON"):
        read_features(tmp_path / "x.geojson", TISSUE_NAMES)
    with pytest.raises(DatasetError, match="missing.geojson: does not exist"):
        read_features(tmp_path / "missing.geojson", TISSUE_NAMES)
    # a slightly outside vertex (annotation tools snap to the border) is accepted
    ok = write(tmp_path / "edge.geojson", [feature("tissue_tumor", [square(-0.5, -0.5, 16.5, 16.5)])])
    assert (tissue_map(ok, (16, 16)) == 3).all()


def _layout(root: Path, names, size=16) -> Path:
    for folder in (IMAGES, TISSUE, NUCLEI):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((size, size, 4), np.uint8), mode="RGBA").save(root / IMAGES / f"{name}.tif")
        write(root / TISSUE / f"{name}_tissue.geojson", [feature("tissue_tumor", [square(0, 0, 8, 8)])])
        write(root / NUCLEI / f"{name}_nuclei.geojson", [feature("nuclei_tumor", [square(1, 1, 4, 4)])])
    return root


def test_cases_need_both_annotations_and_the_split_is_7_1_2_seeded_and_kept(tmp_path, caplog):
    names = [f"training_set_primary_roi_{i:03d}" for i in range(1, 21)]
    root = _layout(tmp_path / "PUMA", names)
    assert [c["name"] for c in puma_cases(root)] == names
    split_file = tmp_path / "split.json"
    split = puma_split(names, split_file, seed=3)
    assert [len(split[k]) for k in ("train", "val", "test")] == [14, 2, 4]
    assert sorted(sum(split.values(), [])) == names
    assert json.loads(split_file.read_text())["drawn"] == {"fractions": [0.7, 0.1, 0.2], "seed": 3}
    assert puma_split(names, split_file, seed=99) == split  # an existing file wins: training and evaluation agree
    assert [r["name"] for r in puma_datalist(root, "test", split_file)] == split["test"]
    with caplog.at_level(logging.WARNING):
        puma_split(names + ["training_set_primary_roi_099"], split_file)
    assert "leaves 1 of the dataset's 21 ROIs out of every split" in caplog.text
    with pytest.raises(DatasetError, match="names ROIs that the dataset does not have"):
        puma_split(names[:5], split_file)
    (root / NUCLEI / f"{names[0]}_nuclei.geojson").unlink()
    with pytest.raises(DatasetError, match=f"{names[0]}_nuclei.geojson: does not exist: the nuclei annotation"):
        puma_cases(root)
    with pytest.raises(DatasetError, match="has no 01_training_dataset_tif_ROIs/ folder"):
        puma_cases(tmp_path)


def test_the_loader_drops_alpha_and_returns_every_map(tmp_path):
    root = _layout(tmp_path / "PUMA", ["roi_a"])
    record = puma_cases(root)[0]
    d = LoadPumaROId("track1")(record)
    assert d["image"].shape == (3, 16, 16) and d["image"].meta["filename_or_obj"].endswith("roi_a.tif")
    assert d["tissue"].shape == d["nuclei"].shape == d["nuclei_type"].shape == (1, 16, 16)
    assert int(d["tissue"].max()) == 3 and int(d["nuclei"].max()) == 1 and int(d["nuclei_type"].max()) == 1
    assert d["orig_size"].tolist() == [16, 16]
    only_image = LoadPumaROId()({"image": record["image"]})
    assert "tissue" not in only_image and "nuclei" not in only_image


def test_synthetic_rois_in_the_published_layout_whose_nuclei_follow_the_tissue(tmp_path):
    root = write_sample_puma(tmp_path, n=4, size=96, seed=0)
    cases = puma_cases(root)
    assert len(cases) == 4 and all(c["name"].startswith("training_set_") for c in cases)
    with Image.open(cases[0]["image"]) as image:
        assert image.mode == "RGBA" and image.size == (96, 96)  # as the release's TIFFs
    tumour_in_tumour, total = 0, 0
    for case in cases:
        tissue = tissue_map(case["tissue"], (96, 96))
        instances, types = nuclei_maps(case["nuclei"], (96, 96), "track2")
        tumour = types == NUCLEI_NAMES.index("nuclei_tumor") + 1
        tumour_in_tumour += int((tumour & (tissue == 3)).sum())
        total += int(tumour.sum())
        assert instances.max() > 5
    assert total and tumour_in_tumour / total > 0.85  # tumour nuclei lie in tumour tissue (their edges may not)
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "PUMA").mkdir()
    (tmp_path / "real" / "PUMA" / "notes.txt").write_text("a real dataset")
    with pytest.raises(DatasetError, match="did not make"):
        write_sample_puma(tmp_path / "real", n=1)


def test_nuclei_written_as_geojson_read_back_as_the_same_instances(tmp_path):
    ring = np.array([[2, 2], [9, 2], [9, 7], [2, 7]], dtype=float)
    path = write_features(tmp_path / "out.geojson", [polygon_feature(ring, "nuclei_tumor", measurements={"area_px": 35})])
    content = json.loads(path.read_text())
    assert content["features"][0]["geometry"]["coordinates"][0][0] == content["features"][0]["geometry"]["coordinates"][0][-1]
    assert content["features"][0]["properties"]["objectType"] == "detection"
    instances, _ = nuclei_maps(path, (12, 12))
    assert int((instances == 1).sum()) == 35  # 7 x 5 pixel centres inside


def test_nuclei_that_vanish_when_rasterised_are_counted(tmp_path):
    from transforms.puma import read_nuclei

    path = write(tmp_path / "n.geojson", [
        feature("nuclei_tumor", [square(0, 0, 3, 3)]),
        feature("nuclei_tumor", [square(0.6, 0.6, 0.9, 0.9)]),  # covers no pixel centre
        feature("nuclei_lymphocyte", [square(5, 5, 7, 7)]),
        feature("nuclei_stroma", [square(5, 5, 7, 7)]),          # the same pixels: one of the two is hidden
    ])
    instances, types, vanished = read_nuclei(path, (8, 8), "track2")
    assert vanished == 2 and instances.max() == 2
    root = _layout(tmp_path / "PUMA", ["roi_a"], size=8)
    record = puma_cases(root)[0]
    (root / NUCLEI / "roi_a_nuclei.geojson").write_text(path.read_text())
    assert LoadPumaROId("track1")(record)["nuclei_vanished"] == 2
