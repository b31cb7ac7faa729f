"""The inference task: MONAI Label's ``BundleInferTask`` for networks called with an image and a text.

What changes from the stock task, and why:

* ``run_inferer``: the stock task calls ``inferer(image, network)``; these networks take
  ``network(image, text_ids=..., text_mask=...)``. The tokens come from the bundle's own preprocessing
  (``TokenizeTextd`` on the request's ``text``); MONAI's inferers pass keyword arguments on to the network.
* ``config()``: ``text`` (and ``slice`` for LSMS) are options of the model, so clients that show a model's
  options (3D Slicer's options table) show them as fields to type into, and send them with each request.
* post-processing: the bundle's own (``Invertd`` back to the input's size, threshold or class decoding),
  without the stock ``Restored`` (the bundle already restores the size).
* ``writer``: the label file as :func:`lib.serving.write_prediction` writes it (label values, not 0/255;
  a slice of a CT volume goes back into a label volume of the CT's geometry), from the post-processed key
  ``monailabel.yaml`` names (``label_key``: Co-Seg's tissue map), with its ``result_keys`` (Co-Seg's nuclei
  as GeoJSON features) in the JSON answer.
* a network with several outputs (a dict of batches) has each output's batch dimension dropped.
* the network: built from the served ``models/model.pt`` by the bundle's own checkpoint reader (its
  description says what to build), and built again when training replaces that file.
* ``labels``: from ``configs/monailabel.yaml`` (the target is value 1; background is never a label).
* several bundles in one server: each bundle's ``scripts`` package is imported once under a name of its own
  (:func:`transforms.base.describe.bundle_package`), and the task's parsed config names that package wherever
  the bundle's ``inference.json`` says ``scripts`` (:func:`transforms.base.describe.bundle_config`), so the
  stock task's parser builds this bundle's transforms and network; no module is swapped (the stock task's
  ``unload_module("scripts")`` finds none of them).
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from typing import Any, Dict

import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from transforms.base.describe import bundle_config, bundle_package

from .serving import Serving, label_summary, write_prediction

logger = logging.getLogger(__name__)

TEXT_INPUTS = ("text_ids", "text_mask")


class TextBundleInferTask(BundleInferTask):
    """Serve one bundle folder (``models/model.pt`` + ``configs/inference``) described by ``serving``."""

    def __init__(self, serving: Serving, conf: Dict[str, str]):
        self.serving = serving
        # the bundle's package, imported under its own name before the stock task puts the bundle's folder on
        # sys.path (where it would be found as a plain `scripts`, which the stock task unloads again)
        self.package = bundle_package(serving.bundle)
        super().__init__(str(serving.bundle), conf, type=InferType.SEGMENTATION, add_post_restore=False,
                         load_strict=True)
        if not self.is_valid():
            return
        self.labels = dict(serving.label_names)
        self._config.update(serving.infer_options)
        self._model_mtime = os.stat(self.path[0]).st_mtime if self.path and os.path.exists(self.path[0]) else None
        self.description = f"{self.description} (serves {serving.bundle})"

    def _load_bundle_config(self, path, config):
        """The bundle's inference config naming the bundle's own package where it says ``scripts`` (every part
        the stock task builds from it: network, transforms, inferer), told where this machine keeps the
        model's left-out pretrained parts."""
        parser = super()._load_bundle_config(path, config)
        parser.set(bundle_config(parser.get(), self.serving.bundle))
        if self.serving.pretrained_sources:
            parser["pretrained_sources"] = dict(self.serving.pretrained_sources)
        return parser

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["inputs"] = ["image", *self.serving.infer_options]
        return info

    def _get_network(self, device, data):
        """The served model, built by the bundle's checkpoint reader; again when ``model.pt`` changes."""
        from common.engine.checkpoints import load_model
        from common.engine.export import named_outputs

        path = self.path[0]
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == mtime:
            return cached[0]
        if self.network is not None and mtime == self._model_mtime:
            network = self.network.to(torch.device(device)).eval()  # built at start from this very file
        else:
            logger.info("%s: loading %s (changed since it was last loaded)", self.serving.name, path)
            network = load_model(path, str(self.serving.bundle), device=str(device),
                                 pretrained_sources=self.serving.pretrained_sources).network
        network = named_outputs(network)  # a packaged Co-Seg's network_def packs its outputs for the zoo's tools
        self._networks[device] = (network, mtime)
        return network

    def run_inferer(self, data: Dict[str, Any], convert_to_batch=True, device="cuda"):
        inferer = self.inferer(data)
        network = self._get_network(device, data)
        dev = torch.device(device)

        def batch(value):
            value = torch.as_tensor(value)
            return (value[None] if convert_to_batch else value).to(dev)

        kwargs = {k: batch(data[k]) for k in TEXT_INPUTS if k in data}
        image = batch(data[self.input_key])
        logger.info("%s: image %s, text %r", self.serving.name, tuple(image.shape), data.get("text"))
        with torch.no_grad():
            outputs = inferer(image, network, **kwargs)
        if convert_to_batch:  # a network with several outputs (Co-Seg) returns a dict of batches
            outputs = {k: v[0] for k, v in outputs.items()} if isinstance(outputs, dict) else outputs[0]
        data[self.output_label_key] = outputs
        return data

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        key = self.output_label_key if self.serving.label_key == "pred" else self.serving.label_key
        pred = data[key]
        image = data.get("image_path") or data.get("image")
        # the endpoint sends the file and then deletes it
        path = write_prediction(pred, image, tempfile.gettempdir(), slice_index=data.get("slice"),
                                extension=extension or data.get("result_extension"),
                                name=f"{self.serving.name}_{uuid.uuid4().hex[:12]}")
        result = {"model": self.serving.name, "pixels": label_summary(pred, self.labels)}
        for key in self.serving.infer_options:
            result[key] = data.get(key)
        for field, key in self.serving.result_keys.items():  # e.g. Co-Seg's nuclei instances as GeoJSON
            result[field] = data.get(key)
        return str(path), result
