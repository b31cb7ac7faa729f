"""The MONAI Label app's data rules (scripts/label_app/lib/serving.py), without the server: what a bundle
serves, where texts come from, what a request must carry, and the label file a client gets back."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("label_app_serving", ROOT / "scripts" / "label_app" / "lib" / "serving.py")
serving = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = serving  # (dataclasses look their module up)
_spec.loader.exec_module(serving)


@pytest.fixture(params=sorted(p.parent.parent.name for p in ROOT.glob("bundles/*/configs/train.yaml")))
def declared(request):
    return serving.read_serving(ROOT / "bundles" / request.param)


def test_every_bundle_declares_labels_from_1_and_its_request_fields(declared):
    assert declared.label_names and min(declared.label_names.values()) == 1
    assert declared.needs_text == (declared.name not in ("monch", "coseg", "ltse"))
    assert declared.prompt_fields == {"tmca": ["text"], "lsms": ["text"], "ltse": ["instruction"]}.get(declared.name, [])
    assert declared.infer_task == ("answer" if declared.name == "ltse" else "bundle")
    assert declared.takes_slice == (declared.name == "lsms")
    # Co-Seg answers with its tissue map as the label and the nuclei in the JSON; it is not trained from here
    assert declared.label_key == ("tissue_map" if declared.name == "coseg" else "pred")
    assert declared.result_keys == ({"nuclei": "nuclei_features"} if declared.name == "coseg" else {})
    assert (declared.training is None) == (declared.name not in ("coseg", "ltse"))


def test_a_bad_declaration_names_the_file_and_field(tmp_path):
    (tmp_path / "b" / "configs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no configs/monailabel.yaml"):
        serving.read_serving(tmp_path / "b")
    (tmp_path / "b" / "configs" / "monailabel.yaml").write_text("label_names: {target: 0}\n")
    with pytest.raises(ValueError, match=r"monailabel.yaml: label_names .*integers from 1"):
        serving.read_serving(tmp_path / "b")
    (tmp_path / "b" / "configs" / "monailabel.yaml").write_text("label_names: {t: 1}\ninfer_options: {prompt: ''}\n")
    with pytest.raises(ValueError, match=r"infer_options may hold text, instruction and slice, not \['prompt'\]"):
        serving.read_serving(tmp_path / "b")
    (tmp_path / "b" / "configs" / "monailabel.yaml").write_text("label_names: {t: 1}\ninfer_task: chat\n")
    with pytest.raises(ValueError, match=r"infer_task must be one of \['bundle', 'answer'\], got 'chat'"):
        serving.read_serving(tmp_path / "b")
    (tmp_path / "b" / "configs" / "monailabel.yaml").write_text("label_names: {t: 1}\ninfer_task: answer\n"
                                                                 "infer_options: {text: ''}\n")
    with pytest.raises(ValueError, match="infer_task answer takes an instruction"):
        serving.read_serving(tmp_path / "b")


def test_stored_texts_in_every_accepted_shape(tmp_path):
    (tmp_path / "texts.json").write_text(json.dumps({
        "a": "one polyp", "b": ["one polyp", "a polyp"], "c": {"text": "x", "slice": 3},
        "d": [{"text": "x", "slice": 3, "lesion_id": 2}, {"text": "y", "slice": 5}]}))
    texts = serving.read_texts(tmp_path)
    assert texts == {"a": [{"text": "one polyp"}], "b": [{"text": ["one polyp", "a polyp"]}],
                     "c": [{"text": "x", "slice": 3}],
                     "d": [{"text": "x", "slice": 3, "lesion_id": 2}, {"text": "y", "slice": 5}]}
    (tmp_path / "texts.json").write_text(json.dumps({"a": 3}))
    with pytest.raises(ValueError, match=r"texts.json \['a'\]: expected a text"):
        serving.read_texts(tmp_path)
    (tmp_path / "texts.json").write_text("{not json")
    with pytest.raises(ValueError, match="texts.json is not JSON"):
        serving.read_texts(tmp_path)
    assert serving.read_texts(tmp_path / "nowhere") == {}


def test_image_info_wins_over_the_texts_file():
    lsms = serving.read_serving(ROOT / "bundles" / "lsms")
    texts = {"case": [{"text": "from the file", "slice": 1}]}
    info = {"text": "from the client", "slice": 7, "user": "admin", "ts": 1}
    assert serving.stored_entries("case", info, texts, lsms) == [{"text": "from the client", "slice": 7}]
    assert serving.stored_entries("case", {"records": [{"text": "r", "slice": 2}]}, texts, lsms) == [{"text": "r", "slice": 2}]
    assert serving.stored_entries("case", {}, texts, lsms) == texts["case"]


def test_a_request_gets_its_text_and_slice_or_says_what_to_send():
    tmca, lsms, monch = (serving.read_serving(ROOT / "bundles" / n) for n in ("tmca", "lsms", "monch"))
    assert serving.request_fields({"text": "a polyp"}, tmca, []) == {"text": "a polyp"}
    assert serving.request_fields({"text": ""}, tmca, [{"text": ["stored", "other"]}]) == {"text": "stored"}
    with pytest.raises(serving.RequestError, match="tmca needs a text"):
        serving.request_fields({"text": "  "}, tmca, [])
    assert serving.request_fields({}, monch, []) == {}
    volume = {"image": "/data/ct.nii.gz", "text": "the lesion"}
    assert serving.request_fields({**volume, "slice": "57"}, lsms, [])["slice"] == 57
    assert serving.request_fields({**volume, "slice": ""}, lsms, [{"text": "t", "slice": 4}])["slice"] == 4
    with pytest.raises(serving.RequestError, match="send its index"):
        serving.request_fields({**volume, "slice": -1}, lsms, [])
    with pytest.raises(serving.RequestError, match="slice must be an axial slice index"):
        serving.request_fields({**volume, "slice": "middle"}, lsms, [])
    assert serving.request_fields({"image": "/data/slice.png", "text": "t"}, lsms, [])["slice"] is None  # a 2-D slice
    ltse = serving.read_serving(ROOT / "bundles" / "ltse")
    assert serving.request_fields({"instruction": "Segment the tumor."}, ltse, []) == {"instruction": "Segment the tumor."}
    assert serving.request_fields({}, ltse, [{"text": "stored words"}]) == {"instruction": "stored words"}
    assert serving.request_fields({}, ltse, [{"instruction": "theirs", "text": "t"}]) == {"instruction": "theirs"}
    with pytest.raises(serving.RequestError, match=r"ltse needs an instruction: send -F 'params=\{\"instruction\""):
        serving.request_fields({"text": "wrong field"}, ltse, [])


def test_an_answers_masks_become_one_label_map_with_the_higher_logit_where_they_overlap():
    logits = np.full((3, 2, 4), -5.0, np.float32)
    logits[0, 0, :3] = [1.0, 2.0, 3.0]     # [SEG] 1: top-left three pixels
    logits[1, 0, 1:] = [4.0, 1.0, 0.5]     # [SEG] 2 overlaps it in the middle two
    logits[2, 1, 3] = 0.2                  # [SEG] 3: one pixel
    label = serving.segment_label_map(list(logits))
    assert label.tolist() == [[1, 2, 1, 2], [0, 0, 0, 3]]
    assert serving.segment_label_map(logits, threshold=0.3).tolist() == [[1, 2, 1, 2], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="no masks"):
        serving.segment_label_map([])


def test_training_records_leave_out_and_name_what_is_missing():
    tmca, lsms, monch = (serving.read_serving(ROOT / "bundles" / n) for n in ("tmca", "lsms", "monch"))
    labelled = [("a", "/s/a.png", "/s/labels/final/a.png", {}), ("b", "/s/b.png", "/s/labels/final/b.png", None)]
    records, left_out = serving.training_records(labelled, {"a": [{"text": "one polyp"}]}, tmca)
    assert records == [{"text": "one polyp", "image": "/s/a.png", "label": "/s/labels/final/a.png", "name": "a"}]
    assert left_out == {"b": "no text stored for it"}
    records, left_out = serving.training_records(labelled, {}, monch)  # MONCH needs nothing but the label
    assert [r["name"] for r in records] == ["a", "b"] and not left_out
    volumes = [("ct", "/s/ct.nii.gz", "/s/labels/final/ct.nii.gz", {})]
    texts = {"ct": [{"text": "t1", "slice": "3"}, {"text": "t2", "slice": 5, "lesion_id": 2}, {"text": "t3"}]}
    records, left_out = serving.training_records(volumes, texts, lsms)
    assert [(r["slice"], r["lesion_id"], r["name"]) for r in records] == [(3, 1, "ct_0"), (5, 2, "ct_1")]
    assert left_out == {"ct[2]": "its record has no ['slice']"}


def test_a_2d_prediction_comes_back_as_label_values_at_the_input_size(tmp_path):
    pred = np.zeros((1, 5, 7), np.float32)
    pred[0, 1:3, 2:6] = 1
    path = serving.write_prediction(pred, str(tmp_path / "in.jpg"), tmp_path / "out")
    assert path.name == "in_label.png"
    assert np.array_equal(np.asarray(Image.open(path)), pred[0].astype(np.uint8))  # 1, not 255
    classes = np.arange(35).reshape(1, 5, 7) % 6
    path = serving.write_prediction(classes, str(tmp_path / "patch.png"), tmp_path / "out", name="x")
    assert path.name == "x_label.png" and np.array_equal(np.asarray(Image.open(path)), classes[0])
    assert serving.label_summary(classes, {"a": 1, "e": 5}) == {"a": 6, "e": 5}


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_a_slice_of_a_volume_goes_back_into_a_label_volume_of_its_geometry(tmp_path, ext):
    import itk

    from transforms.volumes import to_display

    affine = np.array([[0.7, 0, 0, -40.0], [0, 0.7, 0, 12.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    ct = np.random.default_rng(0).normal(size=(6, 8, 4)).astype(np.float32)  # (x, y, z), RAS
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, affine), str(source))
    if ext == ".nrrd":  # the same volume in another format
        image = itk.imread(str(source))
        source = tmp_path / "ct.nrrd"
        itk.imwrite(image, str(source))
    slice_xy = np.zeros((6, 8), np.uint8)
    slice_xy[1:3, 2:5] = 1
    path = serving.write_prediction(to_display(slice_xy)[None], str(source), tmp_path / "out", slice_index=2)
    assert path.name == f"ct_label{ext}"
    if ext == ".nii.gz":
        label = nib.load(str(path))
        assert np.allclose(label.affine, affine)
        values = np.asarray(label.dataobj)
    else:
        label, reference = itk.imread(str(path)), itk.imread(str(source))
        assert np.allclose(np.asarray(label.GetSpacing()), np.asarray(reference.GetSpacing()))
        assert np.allclose(np.asarray(label.GetOrigin()), np.asarray(reference.GetOrigin()))
        values = np.transpose(itk.array_from_image(label), (2, 1, 0))  # ITK arrays are (z, y, x)
    assert values.shape == ct.shape
    assert np.array_equal(values[:, :, 2], slice_xy) and not np.delete(values, 2, axis=2).any()


def test_the_apps_documented_start_command_runs_monai_labels_own_python():
    """``.venv-label/bin/monailabel`` is a shell script running the first ``python`` on PATH (not MONAI Label's
    environment unless it is activated): the app's docstring starts the server with the environment's Python,
    and names the bare ``monailabel`` only for an activated environment."""
    import ast
    import re

    doc = ast.get_docstring(ast.parse((ROOT / "scripts" / "label_app" / "main.py").read_text()))
    commands = [line.strip() for line in doc.splitlines() if re.search(r"\bstart_server\b", line)]
    assert commands and commands[0].startswith(".venv-label/bin/python -m monailabel.main start_server --app "
                                               "scripts/label_app "), commands
    assert not re.search(r"\.venv-label/bin/monailabel start_server", doc)
    bare = doc.find("``monailabel start_server``")
    assert bare == -1 or "source .venv-label/bin/activate" in doc[:bare]
    # the module it runs is MONAI Label's entry point (where its environment is there to look)
    installed = list((ROOT / ".venv-label").glob("lib/python3*/site-packages/monailabel/main.py"))
    if installed:
        assert 'if __name__ == "__main__":' in installed[0].read_text()
