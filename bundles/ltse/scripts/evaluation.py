"""LTSE's scores (Table 1) and the evaluation report, under two protocols.

The paper follows GSVA's evaluation (Xia et al., CVPR 2024), reported first (``gsva``):

* teacher-forced slots: one pass over prompt + ground-truth answer; each target's slot is read at its own
  position ("Sure, tumor [SEG], fat [REJ]."): the token the model predicts there ([SEG] / [REJ] / other) and
  the mask decoded from the hidden state there (``LTSE.teacher_forced_slots``). A target whose predicted slot
  token is [REJ] is predicted empty; otherwise its prediction is the slot's mask.
* gIoU: an absent target scores 1 only when its slot is answered with [REJ], else 0; a present one its IoU.

The second protocol (``generated``, this bundle's earlier one) scores the model's own greedy answer: slot k of
the generated answer is matched to target k by position (``common.data.seg_answers.masks_for_targets``), so a
dropped or added slot shifts every later target; a target whose slot is [REJ] or missing is predicted empty,
and an absent target scores 1 for any empty prediction (a [REJ], no slot, or an empty [SEG] mask).

With I and U the intersection and union of prediction and truth (pixels), under either protocol:

* gIoU: the mean over targets of I / U (absent targets as above).
* cIoU: sum of I over sum of U, over all targets (absent targets add their predicted area to U).
* N-Acc: absent targets answered with [REJ], over all absent targets (0 without a [REJ] token: the
  paper's "-" in Tables 1 and 2).

Each score is reported per magnification and overall (Table 1's 20x / 40x / overall columns). Under torchrun
every process scores its own share of the records; the metrics gather all processes' rows before they
aggregate, so each process (and the best-model choice on rank 0) sees the score of the whole set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Events
from monai.metrics import Cumulative

from transforms.base.describe import configurable
from common.data.seg_answers import REJ_TOKEN, SEG_TOKEN, masks_for_targets
from common.evaluation.reports import write_table

SCORES = ("giou", "ciou", "nacc")
PROTOCOLS = ("gsva", "generated")   # reported in this order
# one colour per [SEG] mask of an answer, in order
SEG_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
              (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def target_rows(generated: Mapping, target_masks: torch.Tensor, present: Sequence[bool],
                multi_seg: bool = True) -> list[dict]:
    """One row per target: ``intersection``, ``union``, ``absent`` (truth empty), ``rejected`` ([REJ] or no slot),
    ``predicted`` (pixels), ``slot`` ([SEG] / [REJ] / none)."""
    index = masks_for_targets(generated["tokens"], len(present), multi_seg)
    rows = []
    for t, (truth, idx) in enumerate(zip(target_masks, index)):
        truth = truth.bool()
        pred = generated["masks"][idx].to(truth.device).bool() if idx is not None else torch.zeros_like(truth)
        slot = generated["tokens"][t] if multi_seg and t < len(generated["tokens"]) else (
            generated["tokens"][0] if not multi_seg and generated["tokens"] else "none")
        rows.append({"intersection": int((pred & truth).sum()), "union": int((pred | truth).sum()),
                     "absent": not bool(present[t]), "rejected": idx is None and slot == REJ_TOKEN,
                     "predicted": int(pred.sum()), "slot": slot})
    return rows


def forced_rows(forced: Mapping, target_masks: torch.Tensor, present: Sequence[bool],
                multi_seg: bool = True) -> list[dict]:
    """GSVA's protocol (module doc): one row per target from ``LTSE.teacher_forced_slots``; slot k is target k's
    (multi_seg) or every target shares the one slot. Same fields as :func:`target_rows`."""
    rows = []
    for t, truth in enumerate(target_masks):
        truth = truth.bool()
        k = t if multi_seg else 0
        slot = forced["tokens"][k] if k < len(forced["tokens"]) else "none"
        rejected = slot == REJ_TOKEN
        pred = (forced["masks"][k].to(truth.device).bool() if slot != "none" and not rejected
                else torch.zeros_like(truth))
        rows.append({"intersection": int((pred & truth).sum()), "union": int((pred | truth).sum()),
                     "absent": not bool(present[t]), "rejected": rejected, "predicted": int(pred.sum()),
                     "slot": slot})
    return rows


def scores(rows: Sequence[Mapping], protocol: str = "generated") -> dict[str, float]:
    """gIoU, cIoU and N-Acc of a set of target rows under ``protocol`` (module doc); NaN where there is nothing
    to score. The protocols differ only in the gIoU of absent targets: ``gsva`` 1 when rejected with [REJ],
    ``generated`` 1 for any empty prediction."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not rows:
        return {k: float("nan") for k in SCORES} | {"targets": 0, "absent": 0}
    absent_score = (lambda r: float(r["rejected"])) if protocol == "gsva" else (  # noqa: E731
        lambda r: 1.0 if r["predicted"] == 0 else 0.0)
    # a present target whose truth vanished (a tiny region lost to resizing) and was not predicted: union 0
    per = [absent_score(r) if r["absent"] else
           r["intersection"] / r["union"] if r["union"] else 0.0 for r in rows]
    union = sum(r["union"] for r in rows)
    absent = [r for r in rows if r["absent"]]
    return {"giou": float(np.mean(per)),
            "ciou": sum(r["intersection"] for r in rows) / union if union else float("nan"),
            "nacc": sum(r["rejected"] for r in absent) / len(absent) if absent else float("nan"),
            "targets": len(rows), "absent": len(absent)}


def protocol_rows(pred: Mapping, b: int, target_masks, present, multi_seg: bool, protocol: str) -> list[dict]:
    """The target rows of sample ``b`` of an evaluation output under ``protocol``."""
    if protocol == "generated":
        return target_rows(pred["generated"][b], target_masks, present, multi_seg)
    if pred.get("forced") is None:
        raise ValueError("GSVA's protocol scores teacher-forced slots, but this output has none: the evaluation "
                         "transforms must keep the ground-truth answer (LTSEInputsd with_answer=true) and "
                         "LTSEInferer teacher_forced=true (or score with protocol='generated')")
    return forced_rows(pred["forced"][b], target_masks, present, multi_seg)


def _rows_of_batch(pred: Mapping, label: Mapping, multi_seg: bool, protocol: str = "generated") -> list[dict]:
    rows = []
    for b in range(len(pred["generated"])):
        for row in protocol_rows(pred, b, label["target_masks"][b], label["present"][b], multi_seg, protocol):
            rows.append(row | {"magnification": label["magnification"][b]})
    return rows


def gathered(value) -> list:
    """``[value]`` of every process under ``torch.distributed`` (rank order), ``[value]`` alone otherwise.
    Every process must call it (the metrics aggregate on all ranks at the end of each validation)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


@configurable
class ReferringScore(Cumulative):
    """One of gIoU / cIoU / N-Acc as a MONAI cumulative metric (``IgniteMetricHandler``'s ``metric_fn``).

    Args:
        score: ``giou``, ``ciou`` or ``nacc``.
        magnification: only targets of this magnification (None: all).
        multi_seg: how answer slots map to targets (the network's switch).
        protocol: ``gsva`` (teacher-forced slots, the paper's) or ``generated`` (module doc).
    """

    def __init__(self, score: str = "giou", magnification: str | None = None, multi_seg: bool = True,
                 protocol: str = "gsva"):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.score, self.magnification, self.multi_seg, self.protocol = score, magnification, multi_seg, protocol
        self.rows: list[dict] = []

    def reset(self):
        super().reset()
        self.rows = []

    def __call__(self, y_pred, y):
        rows = _rows_of_batch(y_pred, y, self.multi_seg, self.protocol)
        self.rows += [r for r in rows if self.magnification in (None, r["magnification"])]

    def aggregate(self):
        return scores([row for rows in gathered(self.rows) for row in rows], self.protocol)[self.score]


@configurable
class MaskIoU(Cumulative):
    """Training metric: IoU of the teacher-forced [SEG] masks with their truth, cumulative over the epoch."""

    def __init__(self, threshold: float = 0.0):
        super().__init__()
        self.threshold = threshold
        self.inter = self.union = 0

    def reset(self):
        super().reset()
        self.inter = self.union = 0

    def __call__(self, y_pred, y):
        for pred, truth in zip(y_pred["masks"], y["seg_masks"]):
            p, t = pred.detach() > self.threshold, truth.to(pred.device) > 0.5
            self.inter += int((p & t).sum())
            self.union += int((p | t).sum())

    def aggregate(self):
        counts = gathered((self.inter, self.union))
        inter, union = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return inter / union if union else float("nan")


def referring_output(output):
    """``output_transform`` of the metrics: (network output, targets) of an engine step."""
    first = output[0] if isinstance(output, (list, tuple)) else output
    return first["pred"], first["label"]


def answer_overlay(image: np.ndarray, masks: Sequence[np.ndarray], tokens: Sequence[str], instruction: str,
                   answer: str, truth: Sequence[np.ndarray] | None = None, target_names: Sequence[str] = (),
                   min_side: int = 256):
    """A picture: image | each [SEG] mask in its own colour (| the truth of each target), the instruction
    and the answer below, the answer's slots as a colour legend."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    from common.evaluation.visualize import blend_mask

    rgb = np.asarray(image, np.uint8)
    scale = max(1, int(np.ceil(min_side / min(rgb.shape[:2]))))
    up = lambda a: np.kron(np.asarray(a, np.uint8), np.ones((scale, scale), np.uint8)) if scale > 1 else np.asarray(a)  # noqa: E731
    big = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.BILINEAR))
    pred = big.copy()
    for k, mask in enumerate(masks):
        pred = blend_mask(pred, up(mask), SEG_COLORS[k % len(SEG_COLORS)])
    panels = [big, pred]
    if truth is not None:
        gt = big.copy()
        for k, mask in enumerate(truth):
            gt = blend_mask(gt, up(mask), SEG_COLORS[k % len(SEG_COLORS)])
        panels.append(gt)
    h, w, gap = big.shape[0], big.shape[1], 4
    width = len(panels) * w + (len(panels) - 1) * gap
    font = ImageFont.load_default()
    chars = max(20, width // 7)
    legend, k = [], 0
    for token in tokens:
        legend.append(f"[SEG] #{k + 1}" if token == SEG_TOKEN else token)
        k += token == SEG_TOKEN
    lines = textwrap.wrap("Instruction: " + instruction, chars) + textwrap.wrap("Answer: " + (answer or "(empty)"), chars)
    if truth is not None and target_names:
        lines += textwrap.wrap("Truth colours, in order: " + ", ".join(target_names), chars)
    canvas = Image.new("RGB", (width, h + 14 * (len(lines) + 1) + 8), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(Image.fromarray(panel), (i * (w + gap), 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((3, h + 3 + 14 * i), line, fill=(0, 0, 0), font=font)
    x, y = 3, h + 3 + 14 * len(lines)
    k = 0
    for text in legend:
        color = SEG_COLORS[k % len(SEG_COLORS)] if text.startswith("[SEG]") else (90, 90, 90)
        k += text.startswith("[SEG]")
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=color)
        draw.text((x + 13, y), text, fill=(0, 0, 0), font=font)
        x += 13 + 7 * len(text) + 10
    return canvas


@configurable
class LTSERecorder:
    """Evaluation handler: per-target rows, Table 1 (gIoU / cIoU / N-Acc per magnification and overall) as
    CSV + Markdown under both protocols (GSVA's first, when the output has teacher-forced slots; module doc),
    ``summary.json`` (``{"gsva": {...}, "generated": {...}, "answers_cut": n}``), and overlays of the first
    ``num_overlays`` instructions (the generated answers)."""

    def __init__(self, overlay_dir: str | None = None, num_overlays: int = 8, multi_seg: bool = True):
        self.overlay_dir, self.num_overlays, self.multi_seg = overlay_dir, num_overlays, multi_seg
        self.rows: list[dict] = []
        self.answers: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        pred, label = engine.state.output["pred"], engine.state.output["label"]
        for b, generated in enumerate(pred["generated"]):
            n = len(self.answers)
            names = label["targets"][b].split("|")
            for protocol in self.protocols(pred):
                rows = protocol_rows(pred, b, label["target_masks"][b], label["present"][b], self.multi_seg, protocol)
                for name, row in zip(names, rows):
                    self.rows.append({"protocol": protocol, "instruction_id": n, "target": name,
                                      "magnification": label["magnification"][b], **row,
                                      "iou": row["intersection"] / row["union"] if row["union"] else float("nan")})
            self.answers.append({"instruction_id": n, "image": label["image_path"][b],
                                 "instruction": label["instruction"][b], "answer": generated["answer"],
                                 "tokens": " ".join(generated["tokens"]), "cut": bool(generated.get("cut", False))})
            if self.overlay_dir and n < self.num_overlays:
                from PIL import Image

                with Image.open(label["image_path"][b]) as im:
                    image = np.asarray(im.convert("RGB"))
                truth = label["target_masks"][b].cpu().numpy()
                if truth.shape[-2:] != image.shape[:2]:
                    truth = None  # scored in the resized frame: show the prediction only
                masks = [np.asarray(m.cpu().numpy(), np.uint8) for m in generated["masks"]]
                if masks and masks[0].shape != image.shape[:2]:
                    masks = []
                Path(self.overlay_dir).mkdir(parents=True, exist_ok=True)
                answer_overlay(image, masks, generated["tokens"], label["instruction"][b], generated["answer"],
                               truth, [n_.replace("_", " ") for n_ in names]).save(
                    Path(self.overlay_dir) / f"{n:04d}_{Path(label['image_path'][b]).stem}.png")

    @staticmethod
    def protocols(pred: Mapping) -> list[str]:
        """GSVA's protocol first when the output has teacher-forced slots, then the generated answers'."""
        return [p for p in PROTOCOLS if p == "generated" or pred.get("forced") is not None]

    def table(self) -> list[dict]:
        out = []
        for protocol in PROTOCOLS:
            rows = [r for r in self.rows if r["protocol"] == protocol]
            if not rows:
                continue
            mags = sorted({r["magnification"] for r in rows if r["magnification"]})
            out += [{"protocol": protocol, "magnification": m,
                     **scores([r for r in rows if r["magnification"] == m], protocol)} for m in mags]
            out.append({"protocol": protocol, "magnification": "overall", **scores(rows, protocol)})
        return out

    def write(self, output_dir: str | Path) -> str:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        table = self.table()
        md = write_table(table, ["protocol", "magnification", "giou", "ciou", "nacc", "targets", "absent"],
                         out / "scores.csv", out / "scores.md",
                         ["protocol", "magnification", "gIoU", "cIoU", "N-Acc", "targets", "absent targets"],
                         title="Tissue referring segmentation (Table 1); gsva: GSVA's teacher-forced protocol (the "
                               "paper's), generated: the model's own greedy answers, slots matched by position")
        columns = ["protocol", "instruction_id", "target", "magnification", "slot", "absent", "rejected", "predicted",
                   "intersection", "union", "iou"]
        write_table(self.rows, columns, out / "targets.csv", out / "targets.md")
        write_table(self.answers, ["instruction_id", "image", "instruction", "answer", "tokens", "cut"],
                    out / "answers.csv", out / "answers.md")
        # answers that reached max_new_tokens before their end: their later targets scored as unanswered
        cut = sum(a["cut"] for a in self.answers)
        summary = {p: {r["magnification"]: r for r in table if r["protocol"] == p} for p in PROTOCOLS}
        (out / "summary.json").write_text(json.dumps({p: v for p, v in summary.items() if v} | {"answers_cut": cut},
                                                     indent=2))
        if cut:
            md += (f"\n{cut} of {len(self.answers)} answers reached max_new_tokens before their end; under the "
                   "'generated' protocol their later targets count as not answered (raise max_new_tokens).\n")
            (out / "scores.md").write_text(md)
        return md
