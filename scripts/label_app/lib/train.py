"""The training task: MONAI Label's ``/train`` fine-tunes the served model on the datastore.

What changes from the stock ``BundleTrainTask``, and why:

* the datalist: the stock task keeps only ``image`` and ``label`` of each labelled image; these bundles need
  the text (and LSMS a slice and lesion id). Records come from :func:`lib.serving.training_records`
  (the datastore's image info, else ``<studies>/texts.json``); images without what the bundle needs are
  left out and named in the log.
* the configs: ``train`` + ``finetune`` (network, weights and input settings from the served
  ``models/model.pt``) + ``monailabel`` (the datastore's record format), with the records set as the
  top-level ``train_datalist`` / ``val_datalist`` ids, which every expression of the bundle (batching,
  the text budget, ``multi_gpu_train``'s partition per rank) reads. The stock task sets only
  ``train#dataset#data``, and the bundle went on building its own datalist.
* the epochs: ``epochs`` (the learning-rate schedule follows), not only the trainer's ``max_epochs``.
* the validation split: by image, not by record (:func:`lib.serving.partition_by_image`), so the slices
  and lesions of one CT volume are never on both sides.
* where the model goes: the run writes into ``<bundle>/runs/monailabel`` (its checkpoints, logs and
  TensorBoard events); the served ``models/model.pt`` is replaced only when the run has finished, its
  model loads and its validation score beats the served model's (:mod:`lib.promotion`: the served one is
  kept in ``models/previous/``), in one rename, so inference never sees a half-written or missing model
  (it reloads the new one on its next request). Otherwise the result says why the served model stays.
* several GPUs: ``torchrun`` with ``multi_gpu_train`` merged too, and the merged settings written into the
  run folder, not into the bundle's ``configs/``; a failed run is an error, not a log line.
* several bundles in one server: a run in the server's process reads the bundle's configs merged into one
  file of the run folder (``monailabel_train.json``) that names the bundle's package, imported under a name
  of its own, wherever they say ``scripts`` (:func:`transforms.base.describe.bundle_config`); no module is
  swapped. A torchrun process runs one bundle, whose ``scripts`` is on its path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import name_to_device

from common.core.config import finish_pool_threads
from transforms.base.describe import bundle_config, bundle_package
from common.engine.config_files import config_files

from .promotion import key_metric, promote_if_better, promote_mode
from .serving import Serving, partition_by_image, read_texts, training_records

logger = logging.getLogger(__name__)

RUN_FOLDER = ("runs", "monailabel")


def first_failure(output: str, lines: int = 40) -> str:
    """The end of the first failing rank's traceback in torchrun's output (the others only say that a peer
    went away), else the output's last lines."""
    failed = re.search(r"failed \(exitcode: -?\d+\) local_rank: (\d+)", output)
    if failed:
        mine = [l for l in output.splitlines() if l.startswith(f"[rank{failed.group(1)}]:")]
        if mine:
            return "\n".join(mine[-lines:]) + "\n"
    return "\n".join(output.splitlines()[-lines:]) + "\n"


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


class FinetuneBundleTrainTask(BundleTrainTask):
    """Fine-tune the model one :class:`lib.infer.TextBundleInferTask` serves, on the app's datastore."""

    def __init__(self, serving: Serving, conf: Dict[str, str], studies: str, texts_file: str):
        self.serving = serving
        self.studies, self.texts_file = studies, texts_file
        self.package = bundle_package(serving.bundle)  # imported once, under a name of its own (lib/infer.py)
        super().__init__(str(serving.bundle), conf)
        self._description = f"fine-tunes the served {serving.name} model on the datastore's labelled images"

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["description"] = self._description
        return info

    def config(self) -> Dict[str, Any]:
        config = super().config()
        for unused in ("tracking", "tracking_uri", "tracking_experiment_name", "run_id", "model_filename"):
            config.pop(unused, None)  # this task logs to TensorBoard in its run folder and fine-tunes models/model.pt
        get = self.bundle_config.get
        config.update(max_epochs=10, multi_gpu=torch.cuda.device_count() > 1, val_split=0.2,
                      learning_rate=float(get("learning_rate", 1e-4)), batch_size=int(get("batch_size", 8)),
                      promote="better")  # lib/promotion.py: or "always"
        return config

    # ---------------------------------------------------------------------------------------------
    def run_folder(self) -> Path:
        return self.serving.bundle.joinpath(*RUN_FOLDER)

    def datalist(self, datastore: Datastore) -> tuple[list[dict], dict[str, str]]:
        labelled = [(image_id, datastore.get_image_uri(image_id), datastore.get_label_uri(image_id, DefaultLabelTag.FINAL),
                     datastore.get_image_info(image_id))
                    for image_id in datastore.get_labeled_images(DefaultLabelTag.FINAL)]
        records, left_out = training_records(labelled, read_texts(self.studies, self.texts_file), self.serving)
        for image_id, why in left_out.items():
            logger.warning("%s: %s is left out of training: %s", self.serving.name, image_id, why)
        if not labelled:
            raise ValueError(f"{self.serving.name}: the datastore {self.studies} has no labelled image (label tag "
                             f"'{DefaultLabelTag.FINAL.value}'): save final labels first")
        if not records:
            reasons = "; ".join(f"{k}: {v}" for k, v in list(left_out.items())[:5])
            raise ValueError(f"{self.serving.name}: none of the {len(labelled)} labelled image(s) can be trained on "
                             f"({reasons}). Store their records in the image info (PUT /datastore/image/info) or in "
                             f"{os.path.join(self.studies, self.texts_file)}.")
        return records, left_out

    def overrides(self, request: Dict[str, Any], train: list, val: list) -> Dict[str, Any]:
        """The ids the request sets over train + finetune + monailabel configs."""
        out = {
            "bundle_root": str(self.serving.bundle),
            "train_datalist": train,
            "val_datalist": val,
            "epochs": int(request.get("max_epochs", 10)),
            "output_dir": str(self.run_folder()),
            "overwrite": True,  # the previous /train run of this bundle (the served model lives elsewhere)
            "resume": False,
            "progress_bar": False,
            "num_workers": int(request.get("num_workers", 0)),
            "cache_rate": 1.0,
            "check_files": True,
        }
        for key, cast in (("learning_rate", float), ("batch_size", int)):
            if request.get(key) not in (None, ""):
                out[key] = cast(request[key])
        if self._pretrained(request):
            out["checkpoint"] = str(self.served_model())
        return out

    def served_model(self) -> Path:
        return self.serving.bundle / "models" / "model.pt"

    def _partition_datalist(self, datalist, request, shuffle=False):
        """Split by image: every record of a CT volume on one side (the stock task splits records)."""
        return partition_by_image(datalist, float(request.get("val_split", 0.2)))

    @staticmethod
    def _pretrained(request) -> bool:
        return _flag(request.get("pretrained", True))

    def config_files(self, request, multi_gpu: bool) -> list[str]:
        names = ["train", *(["multi_gpu_train"] if multi_gpu else []),
                 *(["finetune"] if self._pretrained(request) else []), "monailabel"]
        return [str(f) for f in config_files(self.serving.bundle, *names)]

    # ---------------------------------------------------------------------------------------------
    def __call__(self, request, datastore: Datastore):
        logger.info("%s: train request %s", self.serving.name, request)
        promote = promote_mode(request)
        records, left_out = self.datalist(datastore)
        train, val = self._partition_datalist(records, request)
        val = list(val or [])  # None (use the bundle's own validation data) has no meaning here: no validation
        # MONAI Label has already narrowed CUDA_VISIBLE_DEVICES to the request's "gpus"
        gpus = torch.cuda.device_count()
        multi_gpu = _flag(request.get("force_multi_gpu")) or (_flag(request.get("multi_gpu")) and gpus > 1)
        # without CUDA, force_multi_gpu runs `processes` CPU processes (gloo): the same path, checkable anywhere
        processes = gpus if gpus >= 1 else int(request.get("processes", 2))
        overrides = self.overrides(request, train, val)
        files = self.config_files(request, multi_gpu)
        run = self.run_folder()
        run.mkdir(parents=True, exist_ok=True)
        logger.info("%s: %d training and %d validation records; configs %s; run folder %s", self.serving.name,
                    len(train), len(val), [Path(f).name for f in files], run)
        if multi_gpu:
            self._run_torchrun(files, overrides, processes)
        else:
            overrides["device"] = str(name_to_device(request.get("device", "cuda")))
            import monai.bundle

            logging_file = self.serving.bundle / "configs" / "logging.conf"
            try:
                monai.bundle.run("training", config_file=self._in_process_config(files), meta_file=self.bundle_metadata_path,
                                 logging_file=str(logging_file) if logging_file.is_file() else False, **overrides)
            except BaseException:
                finish_pool_threads()  # the task's process then exits with the error, not an abort (134)
                raise
        promotion = self._promote(run / "models" / "model.pt", promote)
        logger.info("%s: %s %s", self.serving.name, "serving the new model:" if promotion["promoted"] else
                    "the served model stays:", promotion["promotion"])
        result = {"model": str(self.served_model()), "trained_model": str(run / "models" / "model.pt"),
                  **promotion, "train_records": len(train), "val_records": len(val), "left_out": left_out,
                  "run_folder": str(run)}
        logger.info("%s: training finished: %s", self.serving.name, json.dumps(result))
        return result

    def _in_process_config(self, files: list[str]) -> str:
        """The configs merged as ``monai.bundle run`` merges them, naming the bundle's own package where they say
        ``scripts``, in one file of the run folder (the bundle stays as shipped): the run builds this bundle's
        classes in a process that serves several bundles."""
        from monai.bundle import ConfigParser

        merged = bundle_config(ConfigParser.load_config_files(files), self.serving.bundle)
        path = self.run_folder() / "monailabel_train.json"
        path.write_text(json.dumps(merged, indent=1))
        return str(path)

    def _run_torchrun(self, files: list[str], overrides: Dict[str, Any], processes: int) -> None:
        settings = self.run_folder() / "monailabel_request.json"  # in the run folder: the bundle stays as shipped
        settings.write_text(json.dumps(overrides, indent=1))
        files = [*files, str(settings)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.serving.bundle), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc_per_node={processes}", "-m", "monai.bundle", "run", "training",
               "--meta_file", self.bundle_metadata_path, "--config_file", json.dumps(files)]
        logger.info("%s: %s", self.serving.name, " ".join(cmd))
        log = self.run_folder() / "torchrun.log"
        with subprocess.Popen(cmd, env=env, cwd=str(self.run_folder()), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc, open(log, "w") as out:
            for line in proc.stdout:  # shown as it comes and kept in the run folder
                sys.stdout.write(line)
                out.write(line)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.serving.name}: multi-GPU training failed (exit {proc.returncode}); "
                               f"the served model is unchanged. Command: {' '.join(cmd)}\n"
                               f"{first_failure(log.read_text())}(whole output: {log})")

    def _promote(self, trained: Path, mode: str) -> dict:
        """Replace the served model with the run's once it loads and scores better (:mod:`lib.promotion`)."""
        from common.engine.checkpoints import load_model

        if not trained.is_file():
            raise RuntimeError(f"{self.serving.name}: training wrote no {trained}; the served model is unchanged")
        load_model(str(trained), str(self.serving.bundle))  # refuses another bundle's or a broken file
        metric = key_metric(self.bundle_config.get("val_metrics"), self.bundle_config_path)
        return promote_if_better(trained, self.served_model(), metric, mode)
