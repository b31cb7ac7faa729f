"""Which model the app serves after ``/train``: the run's model replaces the served ``models/model.pt`` only
when its validation score beats the served model's, and the served model is kept.

* The score: the bundle's key metric (the one id of ``val_metrics`` in its train config, e.g. ``val_dice``) as
  each checkpoint records it (``description["training"]["metrics"]``, :mod:`common.engine.checkpoints`).
* Better (higher) than the served model's: the served file is first copied to
  ``models/previous/model_<date>-<time>.pt``, then the run's model takes its place in one rename, so inference
  never sees a half-written or missing model. A served model that records no score is replaced too.
* Not better, or no score at all (a run without validation data, ``val_split`` 0): the served model stays;
  the train result says why, and the run's model stays in its run folder.
* ``"promote": "always"`` in the request replaces the served model whatever the scores (still kept first).

Nothing here imports MONAI Label: the rule is checked without a server.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

PROMOTE_MODES = ("better", "always")
BACKUP_FOLDER = "previous"


@dataclass
class Decision:
    promote: bool
    reason: str


def promote_mode(request: Mapping[str, Any]) -> str:
    """The request's ``promote`` (default ``better``); anything else is refused before training starts."""
    mode = str(request.get("promote") or "better").strip().lower()
    if mode not in PROMOTE_MODES:
        raise ValueError(f"promote must be one of {list(PROMOTE_MODES)}, got {request.get('promote')!r}")
    return mode


def key_metric(val_metrics: Any, where: str) -> str:
    """The metric that picks the best model: the one id of the train config's ``val_metrics``."""
    if not isinstance(val_metrics, Mapping) or len(val_metrics) != 1:
        raise ValueError(f"{where}: val_metrics must name one key metric (e.g. val_dice), got {val_metrics!r}")
    return str(next(iter(val_metrics)))


def recorded_score(checkpoint: Path, metric: str) -> float | None:
    """``metric`` as the checkpoint records it (None when it records none, or not a number)."""
    from common.engine.checkpoints import read_checkpoint

    state = read_checkpoint(str(checkpoint))
    description = state.get("description") if isinstance(state, Mapping) else None
    training = description.get("training") if isinstance(description, Mapping) else None
    metrics = training.get("metrics") if isinstance(training, Mapping) else None
    value = metrics.get(metric) if isinstance(metrics, Mapping) else None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(score) else score


def decide(trained: float | None, served: float | None, metric: str, mode: str = "better") -> Decision:
    """Whether a run's model (score ``trained``) replaces the served one (score ``served``)."""
    if mode == "always":
        return Decision(True, "the request asked for promote: always")
    if trained is None:
        return Decision(False, f"the run recorded no {metric} (no validation data: val_split 0?), so nothing shows "
                               "it is better; send val_split > 0, or promote: always")
    if served is None:
        return Decision(True, f"{metric} {trained:.4f}; the served model records no {metric}")
    if trained > served:
        return Decision(True, f"{metric} {trained:.4f} beats the served model's {served:.4f}")
    return Decision(False, f"{metric} {trained:.4f} does not beat the served model's {served:.4f}")


def copy_atomically(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` in one rename: never half-written."""
    partial = target.with_name(f".{target.name}.incoming")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def backup_path(served: Path) -> Path:
    """A new file in ``models/previous/`` named after the time; an existing backup is never overwritten."""
    folder = served.parent / BACKUP_FOLDER
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = folder / f"{served.stem}_{stamp}{served.suffix}", 1
    while path.exists():
        path, n = folder / f"{served.stem}_{stamp}_{n}{served.suffix}", n + 1
    return path


def install(trained: Path, served: Path) -> Path | None:
    """Keep the served model as a backup, then put the run's model in its place; returns the backup."""
    backup = None
    if served.is_file():
        backup = backup_path(served)
        backup.parent.mkdir(parents=True, exist_ok=True)
        copy_atomically(served, backup)
    copy_atomically(trained, served)
    return backup


def promote_if_better(trained: Path, served: Path, metric: str, mode: str = "better") -> dict:
    """Decide and, if so, install; the answer goes into the train result."""
    served_score = recorded_score(served, metric) if served.is_file() else None
    decision = decide(recorded_score(trained, metric), served_score, metric, mode)
    backup = install(trained, served) if decision.promote else None
    return {"promoted": decision.promote, "promotion": decision.reason, "backup": str(backup) if backup else None}
