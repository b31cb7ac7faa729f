"""The repo-level command-line tools run as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_runner import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")


def run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.bundle
def test_make_sample_data_cli(tmp_path):
    proc = run("scripts/make_sample_data.py", "--out_dir", str(tmp_path), "--datasets", "['qata','bkai']", "--n", "10",
               "--size", "64")
    assert "qata: 10 images" in proc.stdout and "bkai: 10 images" in proc.stdout
    assert (tmp_path / "QaTa-COV19" / "prompt" / "train.csv").is_file()
    entries = json.loads((tmp_path / "BKAI-IGH" / "anns" / "train.json").read_text())
    assert {"img_name", "mask_name", "bbox", "prompts"} <= set(entries[0])
    assert [f"p{i}" for i in range(10)] == list(entries[0]["prompts"])


@pytest.mark.bundle
def test_make_sample_data_writes_puma_rois_with_their_geojson(tmp_path):
    from common.data.puma.reader import puma_cases

    proc = run("scripts/make_sample_data.py", "--out_dir", str(tmp_path), "--datasets", "puma", "--n", "3", "--size", "64")
    assert "puma: 3 H&E ROIs" in proc.stdout
    assert len(puma_cases(tmp_path / "PUMA")) == 3  # the reader finds each ROI with both annotation files


@pytest.mark.bundle
def test_benchmark_times_a_bundle_with_several_outputs_and_targets(tmp_path):
    out = tmp_path / "bench.json"
    run("scripts/benchmark.py", "--bundle", "coseg", "--device", "cpu", "--settings", "['fp32']", "--batch_size", "2",
        "--steps", "1", "--warmup", "0", "--image_size", "64", "--json_out", str(out), "--override",
        str(tiny_overrides("coseg")))
    row = json.loads(out.read_text())["rows"][0]
    assert row["train_img_s"] > 0 and row["gflops"] > 0 and 0 < row["trainable_m"] < row["params_m"]


@pytest.mark.bundle
def test_benchmark_prints_a_markdown_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = run("scripts/benchmark.py", "--device", "cpu", "--batch_size", "2", "--steps", "1", "--warmup", "0",
               "--image_size", "64", "--override", str(tiny_overrides("tmca")), "--json_out", str(out))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    assert lines[0].startswith("| setting | train images/s")
    assert lines[2].startswith("| fp32 |")
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["params_m"] > rows[0]["trainable_m"] > 0 and rows[0]["gflops"] > 0
    assert rows[0]["text_rows_read_back"] == 0   # the timed steps look the frozen text up on the host


@pytest.mark.bundle
def test_build_referring_ct_cli(tmp_path):
    from common.data.referring_ct.synthetic import write_sample_ct

    volumes = write_sample_ct(tmp_path / "vol", n_cases=3, size=64, depth=6, seed=0)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("ct,label,case\n" + "".join(f"vol/ct/case_{i:03d}.nii.gz,vol/labels/case_{i:03d}.nii.gz,p{i}\n"
                                                 for i in range(3)))
    proc = run("scripts/build_referring_ct.py", "--pairs", str(pairs), "--out_dir", str(tmp_path / "ds"),
               "--output_format", "volume", "--val_fraction", "0.34", "--test_fraction", "0.34", "--lesion_values", "all")
    assert "records:" in proc.stdout and "[3/3] p2" in proc.stdout
    records = [json.loads(l) for split in ("train", "val", "test") for l in (tmp_path / "ds" / f"{split}.jsonl").read_text().splitlines()]
    assert records and {r["case"] for r in records} <= {"p0", "p1", "p2"}
    assert all(r["image"].endswith(".nii.gz") and isinstance(r["slice"], int) for r in records)
    assert volumes.is_dir()


@pytest.mark.bundle
def test_benchmark_lsms_reports_the_image_branch(tmp_path):
    out = tmp_path / "bench.json"
    run("scripts/benchmark.py", "--bundle", "lsms", "--device", "cpu", "--batch_size", "2", "--steps", "1", "--warmup", "0",
        "--image_size", "64", "--override", str(tiny_overrides("lsms")), "--json_out", str(out))
    row = json.loads(out.read_text())["rows"][0]
    assert row["params_m"] > row["image_params_m"] > 0  # MiniLM is part of params, not of the image branch
    assert row["gflops"] > row["image_gflops"] > 0


@pytest.mark.bundle
def test_benchmark_monch_takes_images_only(tmp_path):
    out = tmp_path / "bench.json"
    run("scripts/benchmark.py", "--bundle", "monch", "--device", "cpu", "--batch_size", "2", "--steps", "1", "--warmup", "0",
        "--image_size", "32", "--override", str(tiny_overrides("monch")), "--json_out", str(out))
    row = json.loads(out.read_text())["rows"][0]
    assert row["params_m"] == row["image_params_m"] > 0  # the text tower is gone once the prompts are encoded
    assert row["gflops"] > 0 and row["train_img_s"] > 0


@pytest.mark.bundle
def test_benchmark_ltse_counts_the_7b_configuration_and_times_the_tiny_model(tmp_path):
    """The paper-size network is counted on the meta device (nothing allocated); the trained parts match
    hand counts: LoRA r=8 on q and v of 32 layers of width 4096, two new-token rows in the embedding and the
    untied lm_head, the [SEG] projector 4096 -> 4096 -> 256. The tiny model runs the timed path."""
    out = tmp_path / "big.json"
    proc = run("scripts/benchmark.py", "--bundle", "ltse", "--device", "cpu", "--size", "7b", "--settings", "[]",
               "--json_out", str(out))
    parts = {p["part"]: p for p in json.loads(out.read_text())["parts"]}
    assert parts["LoRA (LLM)"]["trainable_m"] * 1e6 == 32 * 2 * (4096 * 8 + 8 * 4096)
    assert parts["new-token rows ([SEG], [REJ])"]["trainable_m"] * 1e6 == 2 * 2 * 4096
    assert parts["[SEG] projector"]["trainable_m"] * 1e6 == 4096 * 4096 + 4096 + 4096 * 256 + 256
    assert parts["LLM (Vicuna/Llama)"]["trainable_m"] == 0 and 6700 < parts["LLM (Vicuna/Llama)"]["params_m"] < 6800
    assert parts["SAM image encoder"]["trainable_m"] == 0 and 630 < parts["SAM image encoder"]["params_m"] < 640
    assert "| **all** | **7740.05** | **39.06** (0.50 %) |" in proc.stdout
    out = tmp_path / "tiny.json"
    run("scripts/benchmark.py", "--bundle", "ltse", "--device", "cpu", "--size", "tiny", "--settings", "['fp32']",
        "--steps", "1", "--warmup", "0", "--new_tokens", "4", "--json_out", str(out))
    row = json.loads(out.read_text())["rows"][0]
    assert row["setting"] == "fp32" and row["train_s_per_step"] > 0 and row["answer_s"] > 0


@pytest.mark.bundle
def test_a_flag_written_false_on_the_command_line_is_false(tmp_path):
    """fire hands '--overwrite false' over as the text 'false', which Python reads as true: records were replaced."""
    from common.data.bcss.synthetic import write_sample_bcss

    bcss = write_sample_bcss(tmp_path / "data", n=2, size=64, seed=0)
    args = ("scripts/build_bcss_ref.py", "--bcss_dir", str(bcss), "--out_dir", str(tmp_path / "ref"), "--patch_size", "32")
    run(*args)
    records = tmp_path / "ref" / "records.jsonl"
    before = records.stat().st_mtime_ns
    proc = subprocess.run([sys.executable, *args, "--overwrite", "false"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "exists; pass --overwrite true" in proc.stderr
    assert records.stat().st_mtime_ns == before
    proc = subprocess.run([sys.executable, *args, "--overwrite", "maybe"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert "argument 'overwrite' = 'maybe' is not true/false" in proc.stderr


def test_every_command_line_reads_its_arguments_by_their_annotations():
    import ast

    for path in sorted((ROOT / "scripts").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                decorators = [d.id for d in node.decorator_list if isinstance(d, ast.Name)]
                assert "typed" in decorators, f"{path.name}: main is not @typed"
