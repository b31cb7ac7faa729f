"""GSVA's evaluation protocol (the paper's): teacher-forced slots read at their own positions, and an absent
target's gIoU is 1 only when its slot is answered with [REJ]; reported before the generated-answer protocol."""

import numpy as np
import pytest
import torch

from bundles.ltse.scripts.evaluation import LTSERecorder, forced_rows, scores, target_rows
from common.data.seg_answers import REJ_TOKEN, SEG_TOKEN, build_answer


def _m(a):
    return torch.as_tensor(np.asarray(a, bool))


A = np.zeros((4, 4), bool); A[:2] = True            # truth of target 0: 8 px
B = np.zeros((4, 4), bool)                           # target 1 absent
C = np.zeros((4, 4), bool); C[:, :1] = True          # target 2: 4 px
P0 = np.zeros((4, 4), bool); P0[:1] = True           # 4 px inside A: IoU 4/8
P2 = np.zeros((4, 4), bool); P2[:, :2] = True        # 8 px over C: IoU 4/8
EMPTY = np.zeros((4, 4), bool)
TRUTH = torch.as_tensor(np.stack([A, B, C]))


def forced(tokens, masks):
    return {"tokens": tokens, "truth_tokens": [SEG_TOKEN, REJ_TOKEN, SEG_TOKEN], "masks": [_m(m) for m in masks]}


def test_gsva_scores_an_absent_target_one_only_when_rejected():
    # teacher forcing gives one slot per target; each mask is that slot's own
    rows = forced_rows(forced([SEG_TOKEN, REJ_TOKEN, SEG_TOKEN], [P0, P0, P2]), TRUTH, [True, False, True])
    s = scores(rows, "gsva")
    assert s["giou"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert s["ciou"] == pytest.approx((4 + 0 + 4) / (8 + 0 + 8))  # the rejected slot's mask is not used
    assert s["nacc"] == 1.0
    # the absent target answered [SEG] with an EMPTY mask: GSVA 0, the generated-answer rule would give 1
    rows = forced_rows(forced([SEG_TOKEN, SEG_TOKEN, SEG_TOKEN], [P0, EMPTY, P2]), TRUTH, [True, False, True])
    assert scores(rows, "gsva")["giou"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert scores(rows, "generated")["giou"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert scores(rows, "gsva")["nacc"] == 0.0
    # a present target answered [REJ]: predicted empty, IoU 0, nothing added to the union but its truth
    rows = forced_rows(forced([REJ_TOKEN, REJ_TOKEN, "other"], [P0, P0, P2]), TRUTH, [True, False, True])
    s = scores(rows, "gsva")
    assert s["giou"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert s["ciou"] == pytest.approx((0 + 0 + 4) / (8 + 0 + 8))


def test_teacher_forced_slots_do_not_shift_when_generation_drops_one():
    # the generated answer drops target 0's slot: position matching gives target 0 the mask meant for target 2
    generated = {"tokens": [REJ_TOKEN, SEG_TOKEN], "masks": [_m(P2)], "answer": ""}
    old = scores(target_rows(generated, TRUTH, [True, False, True]), "generated")
    # target 0 gets [REJ] (0), absent target 1 gets the [SEG] mask P2 (0), target 2 no slot (0)
    assert old["giou"] == 0.0
    new = scores(forced_rows(forced([SEG_TOKEN, REJ_TOKEN, SEG_TOKEN], [P0, P0, P2]), TRUTH, [True, False, True]),
                 "gsva")
    assert new["giou"] == pytest.approx(2 / 3)


def test_the_report_gives_gsva_first_then_the_generated_answers(tmp_path):
    rec = LTSERecorder()

    class Engine:
        class state:
            output = {"pred": {"generated": [{"tokens": [SEG_TOKEN, SEG_TOKEN, SEG_TOKEN],
                                              "masks": [_m(P0), _m(EMPTY), _m(P2)], "answer": "a", "cut": False}],
                               "forced": [forced([SEG_TOKEN, SEG_TOKEN, SEG_TOKEN], [P0, EMPTY, P2])]},
                      "label": {"target_masks": [TRUTH], "present": [[True, False, True]], "magnification": ["40x"],
                                "targets": ["tumor|fat|stroma"], "instruction": ["x"], "image_path": ["i.png"]}}

    rec(Engine)
    rec.write(tmp_path)
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "protocol,magnification,giou,ciou,nacc,targets,absent"
    assert [line.split(",")[:2] for line in lines[1:]] == [["gsva", "40x"], ["gsva", "overall"],
                                                             ["generated", "40x"], ["generated", "overall"]]
    import json
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["gsva"]["overall"]["giou"] == pytest.approx(1 / 3)
    assert summary["generated"]["overall"]["giou"] == pytest.approx(2 / 3)


def test_the_network_reads_each_ground_truth_slot_at_its_own_position(llava_dir):
    from test_ltse_network import make_ltse
    from common.networks.llava import tokenize_conversation
    from common.networks.sam import sam_preprocess

    net = make_ltse(llava_dir).eval()
    image = torch.randint(0, 256, (3, 40, 50)).float()
    answer, _ = build_answer(["tumor", "fat", "stroma"], [True, False, True])
    rgb = image.to(torch.uint8).permute(1, 2, 0).numpy()
    batch = tokenize_conversation(net.llava.processor, [rgb], ["segment tumor, fat and stroma"], [answer],
                                  template=net.llava.prompt_template)
    prompt_length = int((batch["labels"][0] == -100).sum())
    sam_image, resize = sam_preprocess(image, net.sam.image_size)
    out = net.teacher_forced_slots(batch["input_ids"], batch["pixel_values"], sam_image, resize, (40, 50),
                                   prompt_length)
    assert out["truth_tokens"] == [SEG_TOKEN, REJ_TOKEN, SEG_TOKEN]
    assert len(out["tokens"]) == 3 and len(out["masks"]) == 3 and out["masks"][0].shape == (40, 50)
    # the predicted token of each slot is the argmax of the logits one position before it
    ids = batch["input_ids"][0]
    positions = [p for p in range(prompt_length, len(ids)) if int(ids[p]) in net.llava.token_ids.values()]
    _, logits = net.llava(batch["input_ids"], torch.ones_like(batch["input_ids"]), batch["pixel_values"])
    names = {v: k for k, v in net.llava.token_ids.items()}
    expected = [names.get(int(logits[0, p - 1].argmax()), "other") for p in positions]
    assert out["tokens"] == expected


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from common.networks.llava import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))
