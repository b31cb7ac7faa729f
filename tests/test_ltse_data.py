"""LTSE's data and scores: BCSS reading, the referring-record builder on generated BCSS files and on bad ones,
the record -> tensors transform, gIoU / cIoU / N-Acc on hand-made cases; the engine's gradient accumulation
and warm-up/decay schedule that LTSE trains with."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from transforms.base.errors import DatasetError
from common.data.bcss.reader import read_code_table
from common.data.bcss.referring import build_referring_records, read_referring_records, referring_datalist
from common.data.bcss.synthetic import write_sample_bcss
from common.data.seg_answers import REJ_TOKEN, SEG_TOKEN


@pytest.fixture(scope="module")
def bcss(tmp_path_factory):
    return write_sample_bcss(tmp_path_factory.mktemp("data"), n=10, size=128, seed=0)


@pytest.fixture(scope="module")
def records(bcss, tmp_path_factory):
    return build_referring_records(bcss, tmp_path_factory.mktemp("ref"), patch_size=64, seed=0, progress=False)


def _copy(records, tmp_path):
    folder = tmp_path / "ref"
    shutil.copytree(records.parent, folder)
    return folder / "records.jsonl"


def test_records_ask_for_present_classes_and_reject_absent_ones(records):
    table = read_code_table(records.parent / "gtruth_codes.tsv")
    code_of = {n: c for c, n in table.items()}
    lines = [json.loads(l) for l in records.read_text().splitlines()]
    assert {r["magnification"] for r in lines} == {"20x", "40x"}
    rejected = 0
    for r in lines:
        mask = np.asarray(Image.open(records.parent / r["mask"]))
        assert np.asarray(Image.open(records.parent / r["image"])).shape[:2] == mask.shape == (64, 64)
        slots = [t for t in r["answer"].replace(",", " ").replace(".", " ").split() if t in (SEG_TOKEN, REJ_TOKEN)]
        assert slots == [SEG_TOKEN if (mask == code_of[t]).any() else REJ_TOKEN for t in r["targets"]]
        rejected += slots.count(REJ_TOKEN)
    assert rejected > 0 and len(lines) > 40
    # the WSI-level split: every record of a slide in one fold, five folds
    folds = {}
    for r in lines:
        assert folds.setdefault(r["slide"], r["fold"]) == r["fold"]
    assert set(folds.values()) == {0, 1, 2, 3, 4}
    train, test = referring_datalist(records, "train", test_fold=0), referring_datalist(records, "test", test_fold=0)
    assert len(train) + len(test) == len(lines) and not {r["slide"] for r in train} & {r["slide"] for r in test}


def test_instructions_read_as_sentences(bcss, tmp_path):
    """Described targets carry a comma of their own; the list must not double it or hang 'and' on it."""
    out = build_referring_records(bcss, tmp_path / "ref", patch_size=64, seed=3, describe_prob=1.0, max_targets=3,
                                  progress=False)
    instructions = [json.loads(l)["instruction"] for l in out.read_text().splitlines()]
    assert any(i.count(",") >= 3 for i in instructions)   # several described targets were joined
    for text in instructions:
        assert ",," not in text and ",." not in text and ",?" not in text, text
        if "patch" in text.split(" and ")[0] and " and " in text and text.count(",") > 1:
            assert ", and " in text, text


def test_choosing_the_model_on_the_test_fold_is_refused(records):
    with pytest.raises(ValueError, match="val_fold and test_fold are both 2"):
        referring_datalist(records, "val", test_fold=2, val_fold=2)


def test_20x_patches_are_the_roi_downsampled_by_two(bcss, tmp_path):
    out = build_referring_records(bcss, tmp_path / "ref", patch_size=64, seed=0, progress=False)
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    r20 = next(r for r in lines if r["magnification"] == "20x")
    roi = next(p for p in (bcss / "masks").iterdir() if p.stem in r20["mask"])
    full = np.asarray(Image.open(roi))
    assert np.array_equal(np.asarray(Image.open(out.parent / r20["mask"])), full[::2, ::2][:64, :64]) or \
        (np.asarray(Image.open(out.parent / r20["mask"])) == full[1::2, 1::2][:64, :64]).mean() > 0.9


def test_building_twice_refuses_to_overwrite(bcss, records):
    with pytest.raises(DatasetError, match="exists; pass --overwrite true"):
        build_referring_records(bcss, records.parent, patch_size=64, progress=False)


def test_a_mask_with_an_unknown_class_code_names_the_file(bcss, tmp_path):
    broken = tmp_path / "BCSS"
    shutil.copytree(bcss, broken)
    mask_file = sorted((broken / "masks").iterdir())[0]
    mask = np.asarray(Image.open(mask_file)).copy()
    mask[0, 0] = 77
    Image.fromarray(mask).save(mask_file)
    with pytest.raises(DatasetError, match=rf"{mask_file.name}: class codes \[77\] are not in the class table"):
        build_referring_records(broken, tmp_path / "ref", patch_size=64, progress=False)


def test_a_malformed_class_table_names_the_line(bcss, tmp_path):
    broken = tmp_path / "BCSS"
    shutil.copytree(bcss, broken)
    table = broken / "meta" / "gtruth_codes.tsv"
    table.write_text(table.read_text().replace("stroma\t2", "stroma\ttwo"))
    with pytest.raises(DatasetError, match="line 4: expected '<label><TAB><integer code>'"):
        build_referring_records(broken, tmp_path / "ref", patch_size=64, progress=False)


@pytest.mark.parametrize("change, message", [
    (lambda r: r | {"targets": ["tumor", "glitter"]}, r"record 1: targets \['glitter'\] are not classes"),
    (lambda r: r | {"targets": ["tumor"] * 11}, "record 1: 11 targets, more than the 10 \\[SEG\\] tokens"),
    (lambda r: {k: v for k, v in r.items() if k != "instruction"}, r"record 1: lacks \['instruction'\]"),
    (lambda r: r | {"image": "40x/images/missing.png"}, "record 1: image file .*missing.png not found"),
    (lambda r: r | {"instruction": None}, "record 1: instruction must be a non-empty text, got None"),
    (lambda r: r | {"instruction": "  "}, "record 1: instruction must be a non-empty text, got '  '"),
])
def test_bad_records_raise_naming_the_file_and_record(records, tmp_path, change, message):
    path = _copy(records, tmp_path)
    lines = path.read_text().splitlines()
    lines[0] = json.dumps(change(json.loads(lines[0])))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message) as err:
        read_referring_records(path)
    assert str(path) in str(err.value)


def test_an_image_and_mask_of_different_sizes_name_both(records, tmp_path):
    path = _copy(records, tmp_path)
    first = json.loads(path.read_text().splitlines()[0])
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(path.parent / first["mask"])
    with pytest.raises(DatasetError, match=r"record 1: image .* is 64x64 but mask .* is 48x32"):
        read_referring_records(path)


# ---------------------------------------------------------------------------- scores
def _generated(tokens, masks):
    return {"tokens": tokens, "masks": [torch.as_tensor(m, dtype=torch.bool) for m in masks], "answer": ""}


def test_scores_on_a_hand_made_case():
    from bundles.ltse.scripts.evaluation import scores, target_rows

    a = np.zeros((4, 4), bool); a[:2] = True          # truth of target 0: 8 px
    b = np.zeros((4, 4), bool)                        # target 1 absent
    c = np.zeros((4, 4), bool); c[:, :1] = True       # target 2: 4 px
    pred0 = np.zeros((4, 4), bool); pred0[:1] = True  # 4 px inside a: IoU 4/8
    pred2 = np.zeros((4, 4), bool); pred2[:, :2] = True  # 8 px over c: IoU 4/8
    truth = torch.as_tensor(np.stack([a, b, c]))
    rows = target_rows(_generated([SEG_TOKEN, REJ_TOKEN, SEG_TOKEN], [pred0, pred2]), truth, [True, False, True])
    s = scores(rows)
    assert s["giou"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)     # the rejected absent target counts 1
    assert s["ciou"] == pytest.approx((4 + 0 + 4) / (8 + 0 + 8))
    assert s["nacc"] == 1.0
    # the absent target answered with a non-empty [SEG] mask: IoU 0, not rejected, its area joins the union
    rows = target_rows(_generated([SEG_TOKEN, SEG_TOKEN, SEG_TOKEN], [pred0, pred0, pred2]), truth, [True, False, True])
    s = scores(rows)
    assert s["giou"] == pytest.approx((0.5 + 0.0 + 0.5) / 3) and s["nacc"] == 0.0
    assert s["ciou"] == pytest.approx(8 / (8 + 4 + 8))
    # an answer without any slot: every target predicted empty
    s = scores(target_rows(_generated([], []), truth, [True, False, True]))
    assert s["giou"] == pytest.approx(1 / 3) and s["ciou"] == 0.0 and s["nacc"] == 0.0


def test_single_seg_answers_share_one_mask_for_all_targets():
    from bundles.ltse.scripts.evaluation import scores, target_rows

    truth = torch.zeros(2, 2, 2, dtype=torch.bool)
    truth[0, 0] = True
    rows = target_rows(_generated([SEG_TOKEN], [np.array([[1, 1], [0, 0]], bool)]), truth, [True, False], multi_seg=False)
    assert [r["intersection"] for r in rows] == [2, 0] and [r["predicted"] for r in rows] == [2, 2]
    assert scores(rows)["nacc"] == 0.0


_GATHER_WORKER = """
import json, os, sys
import torch
import torch.distributed as dist
sys.path.insert(0, {root!r})
from bundles.ltse.scripts.evaluation import MaskIoU, ReferringScore

rank = int(os.environ["RANK"])
dist.init_process_group("gloo", rank=rank, world_size=2)
rows = json.loads({rows!r})[rank]
out = {{}}
for score in ("giou", "ciou", "nacc"):
    metric = ReferringScore(score)
    metric.rows = list(rows)
    out[score] = metric.aggregate()
iou = MaskIoU()
iou.inter, iou.union = (3, 4) if rank == 0 else (1, 8)
out["mask_iou"] = iou.aggregate()
print(json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.bundle
def test_validation_scores_gather_every_process_share(root, tmp_path):
    """Under torchrun each process validates its own records; the score must be that of all of them."""
    import os
    import socket
    import subprocess
    import sys

    from bundles.ltse.scripts.evaluation import scores

    row = lambda i, u, absent=False, predicted=1: {"intersection": i, "union": u, "absent": absent,  # noqa: E731
                                                    "rejected": absent and predicted == 0, "predicted": predicted,
                                                    "slot": "[SEG]", "magnification": "40x"}
    shares = [[row(1, 2)], [row(3, 3), row(0, 0, absent=True, predicted=0), row(0, 4, absent=True, predicted=4)]]
    script = tmp_path / "worker.py"
    script.write_text(_GATHER_WORKER.format(root=str(root), rows=json.dumps(shares)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for r in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    whole = scores(shares[0] + shares[1])
    assert whole["giou"] == pytest.approx((0.5 + 1 + 1 + 0) / 4) and whole["nacc"] == pytest.approx(0.5)
    for result in results:  # both processes see the score of the whole set, not of their share
        assert result["giou"] == pytest.approx(whole["giou"]) and result["ciou"] == pytest.approx(whole["ciou"])
        assert result["nacc"] == pytest.approx(whole["nacc"])
        assert result["mask_iou"] == pytest.approx(4 / 12)
    assert scores(shares[0])["giou"] != pytest.approx(whole["giou"])


def test_a_present_target_whose_truth_vanished_scores_zero_not_a_division_error():
    from bundles.ltse.scripts.evaluation import scores

    assert scores([{"intersection": 0, "union": 0, "absent": False, "predicted": 0, "rejected": False}])["giou"] == 0.0


# ---------------------------------------------------------------------------- engine
def _trainer(accumulation, batches, lr=0.1):
    from monai.engines.utils import default_prepare_batch

    from common.engine.trainer import TextGuidedTrainer

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    trainer = TextGuidedTrainer(device="cpu", max_epochs=1, train_data_loader=batches, network=net, optimizer=opt,
                                loss_function=torch.nn.MSELoss(), prepare_batch=default_prepare_batch,
                                accumulation_steps=accumulation, decollate=False)
    trainer.run()
    return net, trainer


def test_gradient_accumulation_equals_one_step_on_the_joined_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)
    halves = [{"image": x[:2], "label": y[:2]}, {"image": x[2:], "label": y[2:]}]
    accumulated, _ = _trainer(2, halves)
    joined, _ = _trainer(1, [{"image": x, "label": y}])
    assert torch.allclose(accumulated.weight, joined.weight, atol=1e-6)
    stepped, _ = _trainer(1, halves)  # two separate steps differ
    assert not torch.allclose(stepped.weight, joined.weight, atol=1e-4)


def test_warmup_then_linear_decay_counts_optimiser_steps():
    from common.engine.schedules import warmup_decay

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_decay(opt, warmup_steps=2, total_steps=6, accumulation_steps=2)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25])
