"""Evaluation of a text-guided segmentation model, with a text ablation.

:class:`SegmentationEvaluation` scores one trained network on a datalist with
MONAI's ``SupervisedEvaluator`` several times, once per text mode (see
:class:`transforms.text.ShuffleTexts`): with each image's own text (``own``), with the
texts shuffled across the set, and with empty text. A model that uses its
prompt scores clearly lower without it. It writes, under ``output_dir``:

* ``per_image.csv``: mode, image, label, text, dice, iou, accuracy;
* ``summary.csv`` and ``summary.md``: mean Dice / mIoU / accuracy per mode;
* ``overlays/<mode>/*.png``: image | ground truth | prediction with the prompt.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric, MeanIoU
from monai.transforms import Activationsd, AsDiscreted, Compose
from ignite.engine import Events

from common.core.describe import configurable
from common.evaluation.metrics import binary_scores
from common.evaluation.visualize import save_overlay

from .checkpoints import load_model_weights
from .trainer import ProgressBar

logger = logging.getLogger(__name__)


def _filename(meta_source) -> str:
    meta = getattr(meta_source, "meta", None) or {}
    name = meta.get("filename_or_obj", "")
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class PerImageRecorder:
    """Handler: per-image scores and overlays from a ``SupervisedEvaluator``'s decollated output.

    Reads the image file name from the image's metadata, the prompt from the
    batch's ``text`` and the mask file from its ``label_path``.
    """

    def __init__(self, mode: str, overlay_dir: str | Path | None = None, num_overlays: int = 0):
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
            if self.overlay_dir is not None and len(self.rows) <= self.num_overlays:
                stem = Path(image_file).stem or f"sample_{len(self.rows):04d}"
                save_overlay(
                    self.overlay_dir / f"{len(self.rows):03d}_{stem}.png",
                    item["image"].detach().float().cpu().numpy(),
                    pred.detach().float().cpu().numpy()[0],
                    label.detach().float().cpu().numpy()[0],
                    title=f"[{self.mode} text] {text or '(empty)'}",
                    caption=f"Dice {scores['dice']:.3f}  IoU {scores['iou']:.3f}   green: ground truth, red: prediction",
                )


def _metric(metric_class) -> IgniteMetricHandler:
    """Foreground Dice/IoU; an empty prediction of an empty ground truth scores 1 (as :func:`binary_scores`)."""
    return IgniteMetricHandler(
        metric_fn=metric_class(include_background=True, ignore_empty=False),
        output_transform=from_engine(["pred", "label"]),
    )


@configurable
class SegmentationEvaluation:
    """Score a network on a datalist under several text modes and write tables and overlays.

    Args:
        network: the model (a checkpoint is loaded into it when ``checkpoint`` is set).
        datalist: records with ``image``, ``label``, ``text``.
        transform: the evaluation preprocessing (loading ... ``TokenizeTextd``).
        output_dir: where CSVs, Markdown and overlays go.
        prepare_batch: e.g. :class:`common.engine.trainer.TextPrepareBatch`.
        device: torch device.
        checkpoint: a model checkpoint file (``{"model": state_dict}``) or None.
        text_modes: any of ``own``, ``shuffled``, ``empty``, ``half``, ``quarter``.
        threshold: probability threshold on the sigmoid output.
        batch_size, num_workers: data loading.
        num_overlays: overlay PNGs written per mode.
        amp: bf16 autocast (CUDA).
        seed: seed of the text shuffle.
        progress: show a progress bar.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        datalist: Sequence[Mapping],
        transform: Callable,
        output_dir: str,
        prepare_batch: Callable,
        device: torch.device | str = "cpu",
        checkpoint: str | None = None,
        text_modes: Sequence[str] = ("own", "shuffled", "empty"),
        threshold: float = 0.5,
        batch_size: int = 8,
        num_workers: int = 0,
        num_overlays: int = 16,
        amp: bool = False,
        seed: int = 0,
        progress: bool = True,
    ):
        from transforms.text import ShuffleTexts

        if not datalist:
            raise ValueError("the evaluation datalist is empty")
        if "own" not in text_modes:
            text_modes = ["own", *text_modes]
        for mode in text_modes:
            ShuffleTexts(mode)  # validates
        self.network = network
        self.datalist = list(datalist)
        self.transform = transform
        self.output_dir = Path(output_dir)
        self.prepare_batch = prepare_batch
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.text_modes = list(text_modes)
        self.threshold = threshold
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_overlays = num_overlays
        self.amp = amp
        self.seed = seed
        self.progress = progress

    def _evaluator(self, mode: str) -> tuple[SupervisedEvaluator, PerImageRecorder]:
        from transforms.text import ShuffleTexts

        records = ShuffleTexts(mode, seed=self.seed)(self.datalist)
        loader = DataLoader(
            Dataset(records, self.transform), batch_size=self.batch_size, num_workers=self.num_workers, shuffle=False
        )
        recorder = PerImageRecorder(mode, self.output_dir / "overlays" / mode, self.num_overlays)
        handlers = [recorder]
        if self.progress:
            handlers.append(ProgressBar(output_transform=None, desc=f"evaluate ({mode} text)"))
        evaluator = SupervisedEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=self.network,
            prepare_batch=self.prepare_batch,
            postprocessing=Compose(
                [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=self.threshold)]
            ),
            key_val_metric={"dice": _metric(DiceMetric)},
            additional_metrics={"miou": _metric(MeanIoU)},
            val_handlers=handlers,
            amp=self.amp and self.device.type == "cuda",
            amp_kwargs={"dtype": torch.bfloat16} if self.amp else None,
        )
        return evaluator, recorder

    def load_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        load_model_weights(self.network, self.checkpoint, map_location=self.device)

    def run(self) -> dict[str, dict[str, float]]:
        self.load_checkpoint()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        summary: dict[str, dict[str, float]] = {}
        for mode in self.text_modes:
            evaluator, recorder = self._evaluator(mode)
            evaluator.run()
            rows.extend(recorder.rows)
            n = len(recorder.rows)
            summary[mode] = {
                "n": n,
                "dice": evaluator.state.metrics["dice"],
                "miou": evaluator.state.metrics["miou"],
                "accuracy": sum(r["accuracy"] for r in recorder.rows) / max(n, 1),
            }
            logger.info("%s text: Dice %.4f mIoU %.4f (%d images)", mode, summary[mode]["dice"], summary[mode]["miou"], n)
        self._write(rows, summary)
        return summary

    def _write(self, rows: list[dict], summary: dict[str, dict[str, float]]) -> None:
        fields = ["mode", "image", "label", "text", "dice", "iou", "accuracy"]
        with open(self.output_dir / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        with open(self.output_dir / "summary.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "n", "dice", "miou", "accuracy"])
            for mode, s in summary.items():
                writer.writerow([mode, s["n"], f"{s['dice']:.4f}", f"{s['miou']:.4f}", f"{s['accuracy']:.4f}"])
        (self.output_dir / "summary.md").write_text(summary_markdown(summary))


def summary_markdown(summary: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table of the per-mode means; the Dice change from the own-text row is in the last column."""
    descriptions = {
        "own": "its own",
        "shuffled": "another image's (shuffled)",
        "empty": "empty",
        "half": "its own, first 1/2 of the words (rounded up)",
        "quarter": "its own, first 1/4 of the words (rounded up)",
    }
    own_dice = summary.get("own", {}).get("dice")
    lines = [
        "| text given | images | Dice (%) | mIoU (%) | accuracy (%) | Dice change vs own text (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, s in summary.items():
        delta = "" if mode == "own" or own_dice is None else f"{100 * (s['dice'] - own_dice):+.2f}"
        lines.append(
            f"| {descriptions.get(mode, mode)} | {s['n']} | {100 * s['dice']:.2f} | {100 * s['miou']:.2f} | "
            f"{100 * s['accuracy']:.2f} | {delta} |"
        )
    return "\n".join(lines) + "\n"

