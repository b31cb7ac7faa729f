"""Evaluation of a multi-class semantic segmentation network: :class:`SemanticRecorder` records each
image of a ``SupervisedEvaluator`` (the bundle's own ``validate#evaluator``) into confusion matrices and
draws overlays; :func:`common.evaluation.reports.write_reports` then writes ``per_class.{csv,md}``,
``per_<group>.{csv,md}`` (per organ), ``summary.json`` and ``<group>_f1.png``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from common.evaluation.semantic import ConfusionAccumulator
from common.evaluation.visualize import class_overlay_panel

logger = logging.getLogger(__name__)


class SemanticRecorder:
    """Handler: each decollated ``pred`` and ``label`` (class maps (1, H, W) or one-hot / logits (K, H, W),
    argmax'ed) into a :class:`ConfusionAccumulator` (overall and by the record's ``group_key``), plus
    overlay PNGs."""

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
            pred, label = _class_map(item["pred"]), _class_map(item["label"])
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


def _class_map(value) -> torch.Tensor:
    """(1, H, W) or (H, W) class indices, or (K, H, W) one-hot/logits -> (H, W) class indices."""
    value = torch.as_tensor(value).detach()
    if value.ndim == 3:
        return value[0].long() if value.shape[0] == 1 else value.argmax(dim=0)
    return value.long()
