"""A MONAI Label app that serves the text-guided segmentation bundles (README, "Serve with MONAI Label").

Started with the Python of MONAI Label's environment (``make label-env``), from the repository root, with no
environment activated::

    .venv-label/bin/python -m monailabel.main start_server --app scripts/label_app --studies <images folder> \\
        --conf bundles "served/tmca,served/lsms,served/monch" --host 127.0.0.1 --port 8000

or, with the environment activated (``source .venv-label/bin/activate``), ``monailabel start_server`` and the
same arguments. Not ``.venv-label/bin/monailabel`` without activating it: that is a shell script which runs
``python -m monailabel.main`` with the first ``python`` on ``PATH``, another Python without MONAI Label
("No module named 'monailabel'").

``--conf`` keys:

* ``bundles``: comma-separated bundle folders (a model-zoo zip of scripts/package.py unpacked, or a copy of
  ``bundles/<name>`` with ``models/model.pt``). Each is served as the model named after its folder:
  ``POST /infer/<name>`` and ``POST /train/<name>``. A bundle joins by being named here: its
  ``configs/monailabel.yaml`` says what it serves.
* ``texts``: the texts file in the studies folder (default ``texts.json``; format in ``lib/serving.py``).

An inference request sends the image (``-F file=@...``, or ``?image=<datastore id>``) and, in the ``params``
form field, the model's options: ``{"text": "..."}`` (LSMS also ``"slice": 57`` for a CT volume; LTSE
``{"instruction": "Please segment the tumor and the necrosis."}``, answered with text in the JSON and one
label value per [SEG] in the label file, ``lib/answer.py``). A datastore image without a text in the
request uses the one stored for it. ``/train/<name>`` fine-tunes the
served model on the datastore's labelled images and, when it has finished and scores better, replaces
``models/model.pt`` (the previous one is kept in ``models/previous/``; ``lib/promotion.py``); a model without
a training task (Co-Seg, LTSE) is answered 404 at once.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Dict

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.answer import AnswerInferTask
from lib.infer import TextBundleInferTask
from lib.routes import refuse_training_without_task, why_not_trained
from lib.serving import TEXTS_FILE, RequestError, read_serving, read_texts, request_fields, stored_entries
from lib.train import FinetuneBundleTrainTask

logger = logging.getLogger(__name__)


class TextGuidedSegmentationApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        names = [b.strip() for b in str(conf.get("bundles", "")).split(",") if b.strip()]
        if not names:
            raise ValueError("no bundles to serve: start the server with --conf bundles \"path/to/tmca,path/to/lsms\"")
        self.servings = {}
        for folder in names:
            serving = read_serving(os.path.abspath(folder))
            if serving.name in self.servings:
                raise ValueError(f"two bundles are named {serving.name} ({self.servings[serving.name].bundle} and "
                                 f"{serving.bundle}): a model is served under its folder's name")
            if not (serving.bundle / "models" / "model.pt").is_file():
                raise FileNotFoundError(f"{serving.bundle}/models/model.pt does not exist: serve a trained bundle "
                                        "(python scripts/package.py --bundle <name> --model runs/<name>/models/model.pt, "
                                        "then unzip it)")
            self.servings[serving.name] = serving
        self.texts_file = conf.get("texts", TEXTS_FILE)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="Text-guided segmentation bundles",
                         description="An image and a text prompt (or an instruction) in, a mask out: " + ", ".join(self.servings),
                         version="0.1.0")

    def init_infers(self) -> Dict[str, InferTask]:
        infers = {}
        for name, serving in self.servings.items():
            task_class = AnswerInferTask if serving.infer_task == "answer" else TextBundleInferTask
            task = task_class(serving, self.conf)
            if not task.is_valid():
                raise RuntimeError(f"{serving.bundle} could not be served (see the log above)")
            infers[name] = task
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        trainers = {}
        for name, serving in self.servings.items():
            if serving.training is not None:  # monailabel.yaml says why this bundle is not trained from here
                logger.info("%s: no /train task: %s", name, serving.training)
                continue
            trainers[name] = FinetuneBundleTrainTask(serving, self.conf, self.studies, self.texts_file)
        return trainers

    def server_mode(self, mode: bool):
        """In the HTTP server (not in the background task processes): POST /train/<model> for a model without
        a training task is answered 404 at once instead of 200 and an error in the background."""
        super().server_mode(mode)
        server = sys.modules.get("monailabel.app")
        if mode and server is not None:
            from monailabel.config import settings
            from monailabel.endpoints.train import api_run_model
            from monailabel.interfaces.utils.app import app_instance

            def reason(model: str) -> str | None:  # the app as the server holds it now (POST /reload makes a new one)
                return app_instance().why_not_trained(model)

            refuse_training_without_task(server.app, api_run_model, reason, settings.MONAI_LABEL_API_STR)

    def why_not_trained(self, model: str) -> str | None:
        not_trained = {name: s.training for name, s in self.servings.items() if s.training is not None}
        return why_not_trained(model, self._trainers, not_trained)

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request, datastore=None):
        """Complete the model's options (text, slice) from what is stored for a datastore image, and refuse
        a request the model cannot answer with HTTP 422 and what to send."""
        serving = self.servings.get(request.get("model"))
        if serving is None or not serving.infer_options:
            return super().infer(request, datastore)
        image = request.get("image")
        stored = []
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore or self.datastore()
            stored = stored_entries(image, store.get_image_info(image), read_texts(self.studies, self.texts_file), serving)
            request = dict(request, image=store.get_image_uri(image), image_id=image)
        try:
            fields = request_fields(request, serving, stored)
        except RequestError as err:
            # the endpoint deletes an uploaded file only after a successful answer
            if isinstance(image, str) and os.path.dirname(image) == tempfile.gettempdir() and os.path.isfile(image):
                os.remove(image)
            raise HTTPException(status_code=422, detail=str(err)) from None
        request = dict(request, **fields)
        if "image_id" in request:  # saved labels belong to the datastore image
            request["image"] = request.pop("image_id")
        return super().infer(request, datastore)
