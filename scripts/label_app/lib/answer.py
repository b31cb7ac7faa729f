"""The inference task of a bundle that answers an instruction in words (LTSE): ``infer_task: answer``.

A request sends an H&E patch and ``{"instruction": "Please segment the tumor and the necrosis."}``. The
model answers with text holding one [SEG] per region it segments and a [REJ] per target it finds absent;
the task returns

* the label file: one label map at the image's size, value k where the k-th [SEG]'s mask is (where two
  masks overlap, the one with the higher logit; :func:`lib.serving.segment_label_map`), all 0 for an
  answer without [SEG];
* the JSON answer: ``instruction``, ``answer`` (the text), ``segments`` (per [SEG]: ``label`` value,
  ``phrase``, the words before it in the answer, e.g. "tumor", and ``pixels``), ``rejected`` (the phrases
  before each [REJ]).

There is no MONAI pre/post-processing chain to reuse: the bundle's network reads the image and the
instruction itself (``network.generate``: LLaVA's processor, SAM's resize and padding), as its
``inferring`` command does, so the served answer is the command's answer. The network is built from the
served ``models/model.pt`` by the bundle's checkpoint reader, and built again when that file changes.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import uuid
from typing import Any, Dict

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from transforms.base.describe import bundle_package
from common.data.seg_answers import REJ_TOKEN, SEG_TOKEN, slot_phrases

from .serving import Serving, segment_label_map, write_prediction

logger = logging.getLogger(__name__)


class AnswerInferTask(BasicInferTask):
    """Serve one answering bundle folder (``models/model.pt``) described by ``serving``."""

    def __init__(self, serving: Serving, conf: Dict[str, str]):
        self.serving = serving
        self.package = bundle_package(serving.bundle)  # the bundle's scripts, under a name of its own (lib/infer.py)
        super().__init__(path=str(serving.bundle / "models" / "model.pt"), network=None, type=InferType.SEGMENTATION,
                         labels=dict(serving.label_names), dimension=2, config=dict(serving.infer_options),
                         description=f"An instruction in; the answer text and one mask per [SEG] out "
                                     f"(serves {serving.bundle})")
        self._loaded: dict = {}  # device -> (network, settings, mtime of model.pt)

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["inputs"] = ["image", *self.serving.infer_options]
        return info

    def pre_transforms(self, data=None):
        return []

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None):
        return []

    def _model(self, device: str):
        from common.engine.checkpoints import load_model

        path = self.get_path()
        mtime = os.stat(path).st_mtime
        cached = self._loaded.get(device)
        if cached is None or cached[2] != mtime:
            logger.info("%s: loading %s", self.serving.name, path)
            loaded = load_model(path, str(self.serving.bundle), device=str(device),
                                pretrained_sources=self.serving.pretrained_sources)
            self._loaded[device] = cached = (loaded.network, loaded.settings, mtime)
        return cached[0], cached[1]

    def run_inferer(self, data: Dict[str, Any], convert_to_batch=True, device="cuda"):
        network, settings = self._model(device)
        # the bundle's own reader, as its inferring command uses
        read_rgb = importlib.import_module(f"{self.package.__name__}.inference").read_rgb
        rgb = read_rgb(str(data["image"]))
        instruction = str(data["instruction"])
        logger.info("%s: image %s, instruction %r", self.serving.name, rgb.shape, instruction)
        with torch.no_grad():
            result = network.generate(torch.as_tensor(rgb).permute(2, 0, 1), instruction,
                                      max_new_tokens=int(settings.get("max_new_tokens", 64)),
                                      threshold=float(data.get("threshold", 0.0)))
        data["answer"] = result
        data["image_size"] = rgb.shape[:2]
        return data

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        result = data["answer"]
        threshold = float(data.get("threshold", 0.0))
        if result["mask_logits"]:
            label = segment_label_map(result["mask_logits"], threshold)
        else:
            label = np.zeros(data["image_size"], np.uint8)
        path = write_prediction(label, str(data.get("image_path") or data["image"]), tempfile.gettempdir(),
                                extension=extension or data.get("result_extension"),
                                name=f"{self.serving.name}_{uuid.uuid4().hex[:12]}")
        phrases = slot_phrases(result["answer"])
        seg_phrases = [p for p, t in phrases if t == SEG_TOKEN]
        segments = []
        for k in range(len(result["mask_logits"])):
            segments.append({"label": k + 1, "phrase": seg_phrases[k] if k < len(seg_phrases) else "",
                             "pixels": int((label == k + 1).sum())})
        answer = {"model": self.serving.name, "instruction": data["instruction"], "answer": result["answer"],
                  "segments": segments, "rejected": [p for p, t in phrases if t == REJ_TOKEN]}
        return str(path), answer
