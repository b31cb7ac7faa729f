"""Checkpoints: resuming a run, loading weights, finding the model file."""

from __future__ import annotations

import glob
import logging
import os
import re

import torch

from common.core.config import as_optional

from .network import unwrap

def last_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> str | None:
    """Path of the newest ``checkpoint_epoch=N.pt`` in ``ckpt_dir`` (highest N), or None."""
    best, best_epoch = None, -1
    for path in glob.glob(os.path.join(ckpt_dir, pattern)):
        match = re.search(r"epoch=(\d+)", os.path.basename(path))
        if match and int(match.group(1)) > best_epoch:
            best, best_epoch = path, int(match.group(1))
    return best


def resume_path(resume: bool | str | None, ckpt_dir: str) -> str | None:
    """What ``CheckpointLoader`` should load for config value ``resume``.

    ``False``/``None``: nothing. ``True``/``"last"``: the newest epoch checkpoint in
    ``ckpt_dir`` (error if none). A path: that file (error if missing).
    """
    resume = as_optional(resume)
    if resume is None or resume is False or str(resume).lower() in ("false", "no", "0"):
        return None
    if resume is True or str(resume).lower() in ("true", "yes", "1", "last"):
        path = last_checkpoint(ckpt_dir)
        if path is None:
            raise FileNotFoundError(f"resume: no checkpoint_epoch=*.pt in {ckpt_dir} to resume from")
        return path
    if not os.path.isfile(str(resume)):
        raise FileNotFoundError(f"resume: checkpoint {resume} does not exist")
    return str(resume)


def load_model_weights(network: torch.nn.Module, path: str, key: str = "model", map_location="cpu") -> None:
    """Load ``{key: state_dict}`` (as ``CheckpointSaver`` writes it) or a bare state dict into ``network``."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist: train first, or point the config at a model file")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    unwrap(network).load_state_dict(state)


class ResumeHandler:
    """Attach a ``CheckpointLoader`` for the checkpoint chosen by config value ``resume``.

    ``resume`` is False/None (start fresh), True/``"last"`` (newest
    ``checkpoint_epoch=N.pt`` in ``ckpt_dir``) or a file. The trainer's saved
    state carries the epoch, so training continues where it stopped.
    """

    def __init__(self, resume, ckpt_dir: str, load_dict: dict, map_location=None):
        self.resume = resume
        self.ckpt_dir = ckpt_dir
        self.load_dict = load_dict
        self.map_location = map_location

    def attach(self, engine) -> None:
        from monai.handlers import CheckpointLoader

        path = resume_path(self.resume, self.ckpt_dir)
        if path is not None:
            logging.getLogger(__name__).info("resuming from %s", path)
            CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location).attach(engine)


def existing_checkpoint(path: str) -> str:
    """``path`` if it is a file; otherwise an error that says how to get one."""
    path = as_optional(path)
    if path is None or not os.path.isfile(str(path)):
        raise FileNotFoundError(
            f"checkpoint {path} does not exist: train first (it is written to <output_dir>/models/model.pt), "
            "or pass --checkpoint /path/to/model.pt"
        )
    return str(path)

