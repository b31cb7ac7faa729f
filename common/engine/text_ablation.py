"""Evaluation of a text-guided segmentation model, with a text ablation.

:class:`TextAblation` runs the bundle's own validation evaluator (``validate#evaluator`` of
``train.yaml``: its preprocessing, post-processing and metrics, declared once) over a datalist once
per text mode (:class:`transforms.text.ShuffleTexts`): with each image's own text (``own``), the
texts shuffled across the set, empty text, or part of each text (LSMS's 1/2 and 1/4 rows). A model
that uses its prompt scores clearly lower without it. :class:`PerImageRecorder`, attached to the
same evaluator, scores each image and draws overlays. Under ``output_dir``:

* ``per_image.csv``: mode, image, label, text, dice, iou, accuracy;
* ``summary.csv`` and ``summary.md``: the evaluator's metrics and the mean accuracy per mode;
* ``overlays/<mode>/*.png``: image | ground truth | prediction with the prompt.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ignite.engine import Events
from monai.data import DataLoader, Dataset

from transforms.base.describe import configurable
from common.evaluation.metrics import binary_scores
from common.evaluation.visualize import save_overlay
from transforms.text import ShuffleTexts

logger = logging.getLogger(__name__)


def _filename(meta_source) -> str:
    meta = getattr(meta_source, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class PerImageRecorder:
    """Handler: per-image scores and overlays from a ``SupervisedEvaluator``'s decollated output.

    Reads the image file name from the image's metadata, the prompt from the batch's ``text`` and the
    mask file from its ``label_path``. ``mode`` names the text mode of the current run (set by
    :class:`TextAblation`); overlays go to ``<overlay_dir>/<mode>/``, ``num_overlays`` per mode.
    """

    def __init__(self, overlay_dir: str | Path | None = None, num_overlays: int = 0, mode: str = "own"):
        self.mode = mode
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.num_overlays = num_overlays
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        # MONAI engines decollate: state.batch and state.output are lists of per-sample dicts
        for record, item in zip(engine.state.batch, engine.state.output):
            text = record.get("text", "")
            pred, label = item["pred"], item["label"]
            image_file = _filename(record.get("image")) or _filename(item["image"])
            scores = binary_scores(pred, label)
            row = {"mode": self.mode, "image": image_file, "label": record.get("label_path", ""), "text": text, **scores}
            self.rows.append(row)
            in_mode = sum(r["mode"] == self.mode for r in self.rows)
            if self.overlay_dir is not None and in_mode <= self.num_overlays:
                stem = Path(image_file).stem or f"sample_{in_mode:04d}"
                save_overlay(
                    self.overlay_dir / self.mode / f"{in_mode:03d}_{stem}.png",
                    item["image"].detach().float().cpu().numpy(),
                    pred.detach().float().cpu().numpy()[0],
                    label.detach().float().cpu().numpy()[0],
                    title=f"[{self.mode} text] {text or '(empty)'}",
                    caption=f"Dice {scores['dice']:.3f}  IoU {scores['iou']:.3f}   green: ground truth, red: prediction",
                )


@configurable
class TextAblation:
    """Score the bundle's evaluator on ``datalist`` once per text mode and write the tables.

    Args:
        evaluator: the bundle's ``validate#evaluator`` (network, post-processing, metrics); its
            handlers should include ``recorder``.
        datalist: records with ``image``, ``label``, ``text``.
        transform: the evaluation preprocessing (loading ... tokenising; empty text allowed).
        recorder: the :class:`PerImageRecorder` attached to ``evaluator``.
        output_dir: where CSVs and Markdown go.
        text_modes: any of ``own``, ``shuffled``, ``empty``, ``half``, ``quarter`` (``own`` always runs first).
        batch_size, num_workers: data loading.
        seed: seed of the text shuffle.
    """

    def __init__(self, evaluator, datalist: Sequence[Mapping], transform: Callable, recorder: PerImageRecorder,
                 output_dir: str, text_modes: Sequence[str] = ("own", "shuffled", "empty"), batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0):
        if not datalist:
            raise ValueError("the evaluation datalist is empty")
        modes = ["own", *[m for m in text_modes if m != "own"]]
        for mode in modes:
            ShuffleTexts(mode)  # validates
        self.evaluator, self.datalist, self.transform = evaluator, list(datalist), transform
        self.recorder, self.output_dir, self.text_modes = recorder, Path(output_dir), modes
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def _run_mode(self, mode: str) -> dict:
        records = ShuffleTexts(mode, seed=self.seed)(self.datalist)
        loader = DataLoader(Dataset(records, self.transform), batch_size=self.batch_size,
                            num_workers=self.num_workers, shuffle=False)
        self.recorder.mode = mode
        first = len(self.recorder.rows)
        self.evaluator.data_loader = loader
        self.evaluator.state.epoch_length = len(loader)
        self.evaluator.run()
        rows = self.recorder.rows[first:]
        metrics = {name.removeprefix("val_"): float(value) for name, value in self.evaluator.state.metrics.items()
                   if isinstance(value, (int, float))}
        return {"n": len(rows), **metrics, "accuracy": sum(r["accuracy"] for r in rows) / max(len(rows), 1)}

    def run(self) -> dict[str, dict[str, float]]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary = {}
        for mode in self.text_modes:
            summary[mode] = self._run_mode(mode)
            logger.info("%s text: %s", mode, ", ".join(f"{k} {v:.4f}" for k, v in summary[mode].items() if k != "n"))
        self._write(self.recorder.rows, summary)
        return summary

    def _write(self, rows: list[dict], summary: dict[str, dict[str, float]]) -> None:
        fields = ["mode", "image", "label", "text", "dice", "iou", "accuracy"]
        with open(self.output_dir / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        columns = [c for c in next(iter(summary.values())) if c != "n"]
        with open(self.output_dir / "summary.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "n", *columns])
            for mode, s in summary.items():
                writer.writerow([mode, s["n"], *(f"{s[c]:.4f}" for c in columns)])
        (self.output_dir / "summary.md").write_text(summary_markdown(summary))


TEXT_MODE_NAMES = {
    "own": "its own",
    "shuffled": "another image's (shuffled)",
    "empty": "empty",
    "half": "its own, partial (1/2): the record's text_half (LSMS: size rank and side), else the first 1/2 of the words (rounded up)",
    "quarter": "its own, partial (1/4): the record's text_quarter (LSMS: the side), else the first 1/4 of the words (rounded up)",
}


def summary_markdown(summary: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of the per-mode means; the Dice change from the own-text row is in the last column."""
    own_dice = summary.get("own", {}).get("dice")
    lines = [
        "| text given | images | Dice (%) | mIoU (%) | accuracy (%) | Dice change vs own text (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, s in summary.items():
        delta = "" if mode == "own" or own_dice is None else f"{100 * (s['dice'] - own_dice):+.2f}"
        lines.append(
            f"| {TEXT_MODE_NAMES.get(mode, mode)} | {s['n']} | {100 * s['dice']:.2f} | {100 * s['miou']:.2f} | "
            f"{100 * s['accuracy']:.2f} | {delta} |"
        )
    return "\n".join(lines) + "\n"
