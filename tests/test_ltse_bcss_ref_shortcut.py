"""The generated BCSS-Ref must not let the text alone answer [SEG] / [REJ].

A text-only classifier (bag of words -> logistic regression, numpy) is fitted on half of the builder's targets
and scored on the other half. Features per target: the words of its own phrase (class name and, if any, its
position / area description), the number of targets in the instruction, its slot, and every word of the
instruction. On the balanced builder its held-out accuracy must stay within TOLERANCE of the majority-class
rate (what answering the commoner label always scores) and its balanced accuracy within TOLERANCE of 0.5. On
the earlier builder (``balanced=False``: only present targets described, negatives mostly rare classes) the
same classifier beats chance by far: that is the shortcut this guards against.

TOLERANCE = 0.04: the held-out half holds ~1,000 targets, so a classifier without signal has accuracy within
about one standard error sqrt(0.7 * 0.3 / 1000) ~ 0.015 of the majority rate (it learns only noise); 0.04 is
~2.7 standard errors, while the earlier builder's shortcut is worth ~+0.14 accuracy and ~+0.4 balanced accuracy.
"""

import json

import numpy as np
import pytest

from common.data.bcss.reader import phrase
from common.data.bcss.referring import NegativeBalance, build_referring_records, instructions_for_patch
from common.data.bcss.synthetic import write_sample_bcss

TOLERANCE = 0.04


def _words(text):
    return text.lower().replace(",", " ").replace("?", " ").replace(".", " ").replace("%", " pct").split()


def target_examples(lines):
    """(feature words, present?) per target of every record."""
    out = []
    for r in lines:
        text = r["instruction"].lower()
        starts, at = [], 0
        for t in r["targets"]:
            at = text.index(phrase(t).lower(), at)
            starts.append(at)
            at += len(phrase(t))
        slots = [w for w in r["answer"].replace(",", " ").replace(".", " ").split() if w in ("[SEG]", "[REJ]")]
        for k, name in enumerate(r["targets"]):
            own = text[starts[k]: starts[k + 1] if k + 1 < len(starts) else len(text)]
            feats = ["w_" + w for w in _words(own)] + [f"n_{len(r['targets'])}", f"slot_{k}"]
            feats += ["i_" + w for w in _words(text)]
            out.append((feats, slots[k] == "[SEG]"))
    return out


def logistic_regression(x, y, steps=800, lr=0.5, l2=1e-3):
    """Full-batch gradient descent on the mean log loss; x (n, d) counts, y (n,) 0/1."""
    x = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        w -= lr * (x.T @ (p - y) / len(y) + l2 * w)
    return lambda z: (np.hstack([z, np.ones((len(z), 1))]) @ w) > 0


def text_only_scores(records_file):
    examples = target_examples([json.loads(l) for l in records_file.read_text().splitlines()])
    half = len(examples) // 2
    vocab = sorted({f for feats, _ in examples[:half] for f in feats})
    index = {f: i for i, f in enumerate(vocab)}
    x = np.zeros((len(examples), len(vocab)))
    for n, (feats, _) in enumerate(examples):
        for f in feats:
            if f in index:
                x[n, index[f]] += 1
    x = x / np.maximum(x.max(0), 1)  # counts scaled to [0, 1] per word
    y = np.array([p for _, p in examples], float)
    predict = logistic_regression(x[:half], y[:half])
    pred, truth = predict(x[half:]), y[half:].astype(bool)
    accuracy = float((pred == truth).mean())
    majority = float(max(truth.mean(), 1 - truth.mean()))
    balanced = 0.5 * float(pred[truth].mean() + (~pred[~truth]).mean())
    return accuracy, majority, balanced, len(truth)


@pytest.fixture(scope="module")
def bcss(tmp_path_factory):
    return write_sample_bcss(tmp_path_factory.mktemp("bcss"), n=40, size=128, seed=0)


def test_a_text_only_classifier_cannot_beat_chance_on_the_builder(bcss, tmp_path):
    records = build_referring_records(bcss, tmp_path / "ref", patch_size=32, seed=0, progress=False)
    accuracy, majority, balanced, n = text_only_scores(records)
    assert n > 800
    assert accuracy <= majority + TOLERANCE, (accuracy, majority)
    assert abs(balanced - 0.5) <= TOLERANCE, balanced


def test_the_earlier_builder_had_the_shortcut(bcss, tmp_path):
    records = build_referring_records(bcss, tmp_path / "ref", patch_size=32, seed=0, progress=False, balanced=False)
    accuracy, majority, balanced, n = text_only_scores(records)
    assert accuracy > majority + 2 * TOLERANCE and balanced > 0.5 + 4 * TOLERANCE, (accuracy, majority, balanced)


def test_absent_targets_are_described_and_every_class_is_rejected_alike(bcss, tmp_path):
    records = build_referring_records(bcss, tmp_path / "ref", patch_size=32, seed=0, progress=False)
    present, absent, described = {}, {}, {True: 0, False: 0}
    for r in (json.loads(l) for l in records.read_text().splitlines()):
        slots = [w for w in r["answer"].replace(",", " ").replace(".", " ").split() if w in ("[SEG]", "[REJ]")]
        for name, slot in zip(r["targets"], slots):
            (present if slot == "[SEG]" else absent)[name] = (present if slot == "[SEG]" else absent).get(name, 0) + 1
            after = r["instruction"].split(phrase(name), 1)[1]
            described[slot == "[SEG]"] += after.startswith((" in the", " on the"))
    assert set(absent) <= set(present)          # no class is only ever rejected
    rates = [absent.get(c, 0) / (absent.get(c, 0) + present[c]) for c in present]
    assert max(rates) - min(rates) < 0.05, rates
    assert described[False] > 0 and described[True] > 0


def test_negative_balance_picks_the_least_rejected_class_and_reuses_its_descriptions():
    rng = np.random.default_rng(0)
    balance = NegativeBalance()
    for _ in range(4):
        balance.saw_present("tumor", "in the centre, covering about 40% of the patch", rng)
    balance.saw_present("fat", "on the left, covering a small area", rng)
    balance.absent["tumor"] = 1                   # tumor: 4 / (1 + 1) = 2; fat: 1 / (0 + 1) = 1
    assert balance.pick_absent(["tumor", "fat", "nerve"], rng) == "tumor"   # nerve never present: never asked
    assert balance.pick_absent(["nerve"], rng) is None
    assert balance.description("fat", rng) == "on the left, covering a small area"
    mask = np.zeros((8, 8), int)
    mask[:4] = 1
    items = instructions_for_patch(mask, {1: "tumor", 9: "fat"}, rng, count=20, absent_prob=1.0, describe_prob=1.0,
                                   balance=balance)
    fat = [i for i in items if "fat" in i["targets"]]
    assert fat and all("on the left, covering a small area" in i["instruction"] for i in fat)
    assert all(i["answer"] == "Sure, fat [REJ]." for i in fat)   # an instruction may hold only absent targets
