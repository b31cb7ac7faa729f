"""Bad inputs to the repository's command-line tools (scripts/), each with the error a user sees.

A tool refuses a mistyped flag or a value out of range before it does any work; a dataset it builds appears
whole or not at all, and an existing one is replaced only when asked (issue 22, "Trust a stranger's files").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transforms.base.errors import ConfigurationError, DatasetError
from common.data.bcss.referring import build_referring_records
from common.data.bcss.synthetic import write_sample_bcss
from common.data.datalist import file_datalist
from common.data.prompt_json import prompt_json_datalist
from common.data.referring_ct.builder import build_referring_dataset, find_pairs
from common.data.referring_ct.synthetic import write_sample_ct

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import _repo  # noqa: E402
import build_bcss_ref  # noqa: E402
import build_referring_ct  # noqa: E402
import make_prompts  # noqa: E402
import make_sample_data  # noqa: E402
import prepare_kvasir  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def ct_pairs(tmp_path):
    volumes = write_sample_ct(tmp_path / "volumes", n_cases=3, size=32, depth=4, seed=0)
    return find_pairs(volumes / "ct", volumes / "labels")


def _kvasir_checkouts(root: Path, count: int = 3) -> tuple[Path, Path]:
    """A Kvasir-SEG checkout (images/, masks/) and a prompt checkout (anns/{train,val,test}.json), tiny."""
    kvasir, anns = root / "kvasir", root / "prompts" / "anns"
    for folder in (kvasir / "images", kvasir / "masks", anns):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        records = []
        for i in range(count):
            name = f"{split}{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(kvasir / "images" / name)
            mask = np.zeros((30, 40), np.uint8)
            mask[5:20, 10:30] = 255
            Image.fromarray(mask).save(kvasir / "masks" / name)
            records.append({"img_name": name, "mask_name": name, "prompts": {"p6": "one polyp"}})
        (anns / f"{split}.json").write_text(json.dumps(records))
    return kvasir, root / "prompts"


def _mask_dataset(root: Path, value: int, n: int = 4) -> Path:
    """images/ + masks/ whose PNG masks hold ``value`` on a square (0 everywhere for value 0)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = np.full((48, 48, 3), 100, np.uint8)
        mask = np.zeros((48, 48), np.uint8)
        mask[8 + i:24 + i, 10:26] = value
        image[mask > 0] = (220, 140, 130)
        Image.fromarray(image).save(root / "images" / f"img_{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"img_{i}.png")
    return root


# ---------------------------------------------------------------------------------------------
# outputs: refused when they exist, written whole or not at all (issue 22, item 5)
# ---------------------------------------------------------------------------------------------
def test_a_rerun_of_build_referring_ct_refuses_the_existing_dataset_and_changes_nothing(tmp_path, ct_pairs):
    out = tmp_path / "refct"
    build_referring_dataset(ct_pairs, out, lesion_values="all", progress=False)
    before = _snapshot(out)
    with pytest.raises(DatasetError, match=r"refct: exists; pass --overwrite true to replace it, or choose a new "
                                           r"--out_dir \(it is not an empty folder; nothing was written\)"):
        build_referring_dataset(ct_pairs, out, lesion_values="all", seed=1, progress=False)
    assert _snapshot(out) == before


def test_overwrite_replaces_an_earlier_dataset_but_never_a_folder_of_other_files(tmp_path, ct_pairs):
    out = tmp_path / "refct"
    build_referring_dataset(ct_pairs, out, lesion_values="all", progress=False)
    (out / "stale.txt").write_text("from the earlier run")
    build_referring_dataset(ct_pairs, out, lesion_values="all", overwrite=True, progress=False)
    assert not (out / "stale.txt").exists() and (out / "dataset.json").is_file()
    other = tmp_path / "my_data"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"my_data: holds files this tool did not write \(it has no dataset.json\), "
                                           r"so --overwrite does not replace it"):
        build_referring_dataset(ct_pairs, other, lesion_values="all", overwrite=True, progress=False)
    assert _snapshot(other) == {"notes.txt": b"mine"} and _leftovers(tmp_path) == []


def test_a_failed_build_referring_ct_leaves_no_half_written_dataset(tmp_path, ct_pairs):
    broken = tmp_path / "broken_label.nii.gz"
    broken.write_bytes(b"not a volume")
    pairs = [*ct_pairs, ("case_x", ct_pairs[0][1], str(broken))]
    with pytest.raises(DatasetError, match="broken_label.nii.gz"):
        build_referring_dataset(pairs, tmp_path / "refct", lesion_values="all", progress=False)
    assert not (tmp_path / "refct").exists() and _leftovers(tmp_path) == []


def test_a_failed_build_bcss_ref_leaves_no_half_written_dataset(tmp_path):
    bcss = write_sample_bcss(tmp_path / "data", n=3, size=64, seed=0)
    last_mask = sorted((bcss / "masks").iterdir())[-1]
    mask = np.asarray(Image.open(last_mask)).copy()
    mask[0, 0] = 77
    Image.fromarray(mask).save(last_mask)
    with pytest.raises(DatasetError, match=rf"{last_mask.name}: class codes \[77\] are not in the class table"):
        build_referring_records(bcss, tmp_path / "ref", patch_size=32, progress=False)
    assert not (tmp_path / "ref").exists() and _leftovers(tmp_path) == []


def test_prepare_kvasir_that_fails_midway_leaves_nothing_that_blocks_the_rerun(tmp_path, monkeypatch):
    kvasir, prompts = _kvasir_checkouts(tmp_path)
    real_place, placed = prepare_kvasir._place, []

    def disk_full_on_the_fifth_file(source, target):
        placed.append(target)
        if len(placed) == 5:
            raise OSError(28, "No space left on device")
        real_place(source, target)

    monkeypatch.setattr(prepare_kvasir, "_place", disk_full_on_the_fifth_file)
    with pytest.raises(OSError, match="No space left on device"):
        prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "out"), progress_bar=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    monkeypatch.setattr(prepare_kvasir, "_place", real_place)
    prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "out"), progress_bar=False)
    assert len(prompt_json_datalist(tmp_path / "out", "test", "p6")) == 3


# ---------------------------------------------------------------------------------------------
# a mistyped flag is refused before any work, with the bundles' "did you mean" (issue 22, item 9)
# ---------------------------------------------------------------------------------------------
def test_every_script_runs_its_command_line_through_run_cli():
    tools = [p for p in sorted((ROOT / "scripts").glob("*.py")) if '__name__ == "__main__"' in p.read_text()]
    assert len(tools) >= 9
    for path in tools:
        source = path.read_text()
        assert "_repo.run_cli(main)" in source and "fire.Fire" not in source, f"{path.name} does not use run_cli"


@pytest.mark.parametrize("script, typo, message", [
    ("make_prompts.py", ["--class_nam", "polyp"],
     r"error: --class_nam is not a flag of scripts/make_prompts.py, so it would be ignored. Did you mean "
     r"--class_name or --classes\? Nothing was run."),
    ("build_referring_ct.py", ["--lesion_value", "all"],
     r"error: --lesion_value is not a flag of scripts/build_referring_ct.py, so it would be ignored. Did you mean "
     r"--lesion_values\? Nothing was run."),
])
@pytest.mark.bundle
def test_a_mistyped_flag_stops_a_script_before_it_writes_anything(tmp_path, script, typo, message):
    """make_prompts ran with the default class name 'lesion' and wrote its prompt files; build_referring_ct made
    out_dir and failed only when it read the first label volume (no --lesion_values)."""
    out = tmp_path / "out"
    if script == "make_prompts.py":
        inputs = ["--data_dir", str(_mask_dataset(tmp_path / "data", value=255))]
    else:
        volumes = write_sample_ct(tmp_path / "volumes", n_cases=1, size=32, depth=4, seed=0)
        inputs = ["--ct", str(volumes / "ct"), "--labels", str(volumes / "labels")]
    proc = subprocess.run([sys.executable, f"scripts/{script}", *inputs, "--out_dir", str(out), *typo],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--modle", "x"], r"--modle is not a flag of .*, so it would be ignored. Did you mean --model\? Nothing was run."),
    (["--zzz"], r"--zzz is not a flag of .*, so it would be ignored. Its flags: --bundle, --model, --out_dir, "
                r"--overwrite. Nothing was run."),
    (["tmca", "m.pt", "dist", "true", "extra"], r"takes no value 'extra': every argument is already given"),
])
def test_check_flags_refuses_what_fire_would_drop(args, message):
    def main(bundle: str, model: str | None = None, out_dir: str = "dist", overwrite: bool = False):
        pass

    with pytest.raises(ConfigurationError, match=message):
        _repo.check_flags(main, args)


@pytest.mark.parametrize("args", [
    ["tmca", "--model", "m.pt"], ["--bundle=tmca", "--out-dir", "x"], ["tmca", "--overwrite"],
    ["tmca", "--nooverwrite"], ["-b", "tmca"], ["--help"], ["-h"], ["tmca", "--", "--trace"],
])
def test_check_flags_lets_every_form_fire_reads_pass(args):
    def main(bundle: str, model: str | None = None, out_dir: str = "dist", overwrite: bool = False):
        pass

    _repo.check_flags(main, args)


def test_a_mistyped_bundle_name_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"no bundle 'tmc'; Did you mean tmca\?"):
        _repo.bundle_folder("tmc")


# ---------------------------------------------------------------------------------------------
# values out of range and unknown names, refused before any work (issue 22, item 11)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda d: build_bcss_ref.main(str(write_sample_bcss(d / "in", n=2, size=64)), str(d / "out"), patch_size=0),
     r"--patch_size must be at least 1, got 0. Nothing was run."),
    (lambda d: build_bcss_ref.main(str(write_sample_bcss(d / "in", n=2, size=64)), str(d / "out"), patch_size=32,
                                   absent_prob=2.0),
     r"--absent_prob must be from 0 to 1, got 2.0. Nothing was run."),
    (lambda d: build_referring_ct.main(str(d / "out"), ct=str(d / "ct"), labels=str(d / "labels"),
                                       val_fraction=1.5, lesion_values="all"),
     r"--val_fraction must be at least 0 and below 1, got 1.5. Nothing was run."),
    (lambda d: build_referring_ct.main(str(d / "out"), ct=str(d / "ct"), labels=str(d / "labels"),
                                       val_fraction=0.5, test_fraction=0.5, lesion_values="all"),
     r"--val_fraction 0.5 and --test_fraction 0.5 leave no case to train on"),
    (lambda d: make_sample_data.main(out_dir=str(d / "out"), datasets="kvasir", n=6, size=7),
     r"--size must be at least 32, got 7. Nothing was run."),
    (lambda d: make_sample_data.main(out_dir=str(d / "out"), datasets=["qata", "kvasr"], n=6, size=32),
     r"--datasets 'kvasr' is not a dataset this tool writes; one of qata, mosmed, kvasir, bkai, refct, pannuke, "
     r"puma, bcss. Did you mean kvasir\? Nothing was run."),
    (lambda d: prepare_kvasir.main(*map(str, _kvasir_checkouts(d)), str(d / "out"), size=0, progress_bar=False),
     r"--size must be at least 1, got 0. Nothing was run."),
    (lambda d: make_prompts.main(data_dir=str(_mask_dataset(d / "data", 255)), out_dir=str(d / "out"),
                                 round_ratio=1.5, progress_bar=False),
     r"--round_ratio must be from 0 to 1, got 1.5. Nothing was run."),
])
def test_a_value_out_of_range_is_refused_before_any_work(tmp_path, call, message):
    with pytest.raises(ConfigurationError, match=message):
        call(tmp_path)
    assert not (tmp_path / "out").exists()


def test_make_prompts_reads_a_mask_whose_target_is_stored_as_2(tmp_path):
    """The 8-bit rule 'above 127 once the mask holds a value over 1' dropped 0/2 masks as empty: 0 records."""
    data = _mask_dataset(tmp_path / "data", value=2)
    make_prompts.main(data_dir=str(data), class_name="polyp", split=[1.0, 0.0, 0.0], progress_bar=False)
    records = prompt_json_datalist(data, "train", "p6")
    assert len(records) == 4 and all(r["text"].startswith("one ") for r in records)
    for record in records:  # the kvasir reader (threshold 127) sees the target in the mask the record names
        assert (np.asarray(Image.open(record["label"])) > 127).sum() == 16 * 16


def test_make_prompts_fails_when_it_would_write_no_record(tmp_path):
    data = _mask_dataset(tmp_path / "data", value=0)
    with pytest.raises(DatasetError, match=r"data: none of its 4 masks holds a target \(empty, e.g. img_0, img_1, "
                                           r"img_2\), so there is no record to write; nothing was written"):
        make_prompts.main(data_dir=str(data), progress_bar=False)
    assert not (data / "anns").exists()


def test_a_truncated_roi_in_build_bcss_ref_is_named(tmp_path):
    bcss = write_sample_bcss(tmp_path / "data", n=2, size=64, seed=0)
    roi = sorted((bcss / "rgbs_colorNormalized").iterdir())[1]
    _truncate(roi)
    with pytest.raises(DatasetError, match=rf"{roi.name}: cannot read image file \(OSError: .*truncated"):
        build_bcss_ref.main(str(bcss), str(tmp_path / "ref"), patch_size=32)
    assert not (tmp_path / "ref").exists()


def test_a_truncated_mask_in_prepare_kvasir_with_size_is_named(tmp_path):
    kvasir, prompts = _kvasir_checkouts(tmp_path)
    mask = kvasir / "masks" / "val1.jpg"
    _truncate(mask)
    with pytest.raises(DatasetError, match=r"masks/val1.jpg: cannot read image file \(OSError: (?i:.*truncated)"):
        prepare_kvasir.main(str(kvasir), str(prompts), str(tmp_path / "out"), size=20, progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_a_bad_jsonl_line_names_the_file_and_its_line(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    good = json.dumps({"image": "a.png", "label": "a.png", "text": "a lesion"})
    (tmp_path / "train.jsonl").write_text(f"{good}\n\n{good}\n{{'image': 'a.png'}}\n")
    with pytest.raises(DatasetError, match=r"train.jsonl: line 4: not valid JSON \(Expecting property name enclosed "
                                           r"in double quotes at column 2\)"):
        file_datalist(tmp_path / "train.jsonl")


def test_a_bad_split_file_names_the_file_and_its_line(tmp_path):
    data = _mask_dataset(tmp_path / "data", value=255)
    split_file = tmp_path / "split.json"
    split_file.write_text('{"train": ["img_0", "img_1"],\n "val": ["img_2"]\n "test": ["img_3"]}')
    with pytest.raises(DatasetError, match=r"split.json: line 3 column 2: not valid JSON \(Expecting ',' delimiter\)"):
        make_prompts.main(data_dir=str(data), split_file=str(split_file), progress_bar=False)
    assert not (data / "anns").exists()
