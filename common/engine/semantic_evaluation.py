"""Evaluation of a multi-class semantic segmentation network: per-image recording with MONAI's
``SupervisedEvaluator``, then ``per_class.{csv,md}``, ``per_<group>.{csv,md}`` (per organ),
``summary.json``, ``<group>_f1.png`` (bar chart) and ``overlays/*.png`` (image | ground truth |
prediction in class colours)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from common.core.describe import configurable
from common.evaluation.reports import write_reports
from common.evaluation.semantic import ConfusionAccumulator
from common.evaluation.visualize import class_overlay_panel

from .checkpoints import load_model_weights
from .trainer import ProgressBar

logger = logging.getLogger(__name__)

class SemanticRecorder:
    """Handler: argmax of each decollated ``pred`` (K, H, W) vs ``label`` (1, H, W) into a
    :class:`ConfusionAccumulator` (overall and by the record's ``group_key``), plus overlay PNGs."""

    def __init__(self, num_classes: int, class_names: Sequence[str], colors: Mapping[int, Sequence[int]],
                 group_key: str = "organ", overlay_dir: str | Path | None = None, num_overlays: int = 0,
                 image_denormalize: Callable | None = None):
        self.acc = ConfusionAccumulator(num_classes)
        self.class_names, self.colors = list(class_names), dict(colors)
        self.group_key = group_key
        self.overlay_dir = Path(overlay_dir) if overlay_dir else None
        self.num_overlays = int(num_overlays)
        self.denormalize = image_denormalize
        self.seen = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        for record, item in zip(engine.state.batch, engine.state.output):
            pred = torch.as_tensor(item["pred"]).detach()
            pred = pred.argmax(dim=0) if pred.ndim == 3 else pred
            label = torch.as_tensor(item["label"]).detach()
            label = label[0] if label.ndim == 3 else label
            group = record.get(self.group_key)
            self.acc.update(pred, label, None if group is None else str(group))
            self.seen += 1
            if self.overlay_dir is not None and self.seen <= self.num_overlays:
                image = torch.as_tensor(item["image"]).detach().float().cpu()
                if self.denormalize is not None:
                    image = self.denormalize(image)
                name = str(record.get("name", f"sample_{self.seen:04d}"))
                path = self.overlay_dir / f"{self.seen:03d}_{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                class_overlay_panel(image.numpy(), pred.cpu().numpy(), label.cpu().numpy(), self.colors,
                                    self.class_names, title=f"{name} ({group})").save(path)


@configurable
class SemanticEvaluation:
    """Score a multi-class segmentation network on a datalist and write tables, a chart and overlays.

    Args:
        network: outputs (B, K, H, W) logits for (B, C, H, W) images.
        datalist: records (``image``, ``label`` after ``transform``; ``group_key`` e.g. ``organ``; ``name``).
        transform: evaluation preprocessing.
        output_dir: where ``per_class.*``, ``per_<group>.*``, ``<group>_f1.png``, ``summary.json``,
            ``overlays/`` go.
        class_names: K names, class 0 first (background).
        colors: class index -> RGB for overlays.
        device, checkpoint, batch_size, num_workers, amp, progress: as usual.
        num_overlays: overlay PNGs to write.
        image_denormalize: maps a network-input image back to displayable values (optional).
    """

    def __init__(self, network: torch.nn.Module, datalist: Sequence[Mapping], transform: Callable, output_dir: str,
                 class_names: Sequence[str], colors: Mapping[int, Sequence[int]], device="cpu",
                 checkpoint: str | None = None, group_key: str = "organ", batch_size: int = 8, num_workers: int = 0,
                 num_overlays: int = 8, amp: bool = False, progress: bool = True,
                 image_denormalize: Callable | None = None, prepare_batch: Callable | None = None,
                 postprocessing: Callable | None = None):
        if not datalist:
            raise ValueError("the evaluation datalist is empty")
        self.network, self.datalist, self.transform = network, list(datalist), transform
        self.output_dir = Path(output_dir)
        self.class_names, self.colors = list(class_names), dict(colors)
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.group_key = group_key
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.num_overlays = int(num_overlays)
        self.amp, self.progress = amp, progress
        self.denormalize = image_denormalize
        self.prepare_batch = prepare_batch
        self.postprocessing = postprocessing

    def run(self) -> dict:
        from monai.data import DataLoader, Dataset
        from monai.engines import SupervisedEvaluator
        from monai.engines.utils import default_prepare_batch

        if self.checkpoint is not None:
            load_model_weights(self.network, self.checkpoint, map_location=self.device)
        loader = DataLoader(Dataset(self.datalist, self.transform), batch_size=self.batch_size,
                            num_workers=self.num_workers, shuffle=False)
        recorder = SemanticRecorder(len(self.class_names), self.class_names, self.colors, self.group_key,
                                    self.output_dir / "overlays", self.num_overlays, self.denormalize)
        handlers = [recorder]
        if self.progress:
            handlers.append(ProgressBar(output_transform=None, desc="evaluate"))
        evaluator = SupervisedEvaluator(
            device=self.device, val_data_loader=loader, network=self.network,
            prepare_batch=self.prepare_batch or default_prepare_batch, postprocessing=self.postprocessing,
            val_handlers=handlers,
            amp=self.amp and self.device.type == "cuda", amp_kwargs={"dtype": torch.bfloat16} if self.amp else None,
        )
        evaluator.run()
        report = write_reports(recorder.acc, self.class_names, self.output_dir, self.group_key)
        logger.info("pixel accuracy %.4f, FWIoU %.4f, mean cell IoU %.4f, mean cell F1 %.4f (%d images)",
                    report["overall"]["pa"], report["overall"]["fwiou"], report["overall"]["iou"],
                    report["overall"]["f1"], recorder.seen)
        report["images"] = recorder.seen
        return report

