"""The command line of a bundle run, and what a failed run prints.

:func:`check_command_line` refuses overrides that would be ignored (a typo) or that cannot apply (an
architecture setting at evaluation); :func:`summary_line` and :func:`install_error_summary` end a failed
run with one line naming the file or key. Config expressions read command-line values with
``common.core.config.as_bool`` and ``as_optional`` (:mod:`transforms.base.values`, where the typed
constructors of :mod:`transforms.base.describe` read them too).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

from transforms.base.errors import CheckpointError, ConfigurationError, DatasetError, PretrainedWeightsError
from transforms.base.values import as_bool, as_optional  # noqa: F401  (config expressions call them here)

from .config_ids import references, unread_overrides
from .flags import did_you_mean

# ---------------------------------------------------------------------------------------------
# the command line of `python -m monai.bundle run`
# ---------------------------------------------------------------------------------------------
# arguments of monai.bundle's `run` itself, not config ids
RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file",
                 "workflow_type", "workflow_name", "properties_path"}


def _is_bundle_run(argv: Sequence[str]) -> bool:
    return bool(argv) and Path(argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py") and "run" in argv[1:2]


def _command_line(argv: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """``(run id, {flag: value})`` from ``python -m monai.bundle run <id> --flag value --other=value ...``."""
    run_id, flags, i = None, {}, 2
    if len(argv) > 2 and not argv[2].startswith("--"):
        run_id, i = argv[2], 3
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            name, _, value = token[2:].partition("=")
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            flags[name] = value
        i += 1
    return flags.pop("run_id", run_id), flags


def _config_files(value: str) -> list[Path]:
    value = value.strip()
    files = ast.literal_eval(value) if value.startswith(("[", "(")) else [value]
    return [Path(f) for f in files]


def _load(path: Path) -> dict:
    import json

    import yaml

    text = path.read_text(encoding="utf-8")
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return loaded if isinstance(loaded, dict) else {}


def check_command_line(frozen_sections: Sequence[str] = (), argv: Sequence[str] | None = None) -> None:
    """Refuse command-line overrides that would silently do nothing or the wrong thing, before a run starts.

    * A ``--key`` that names no id of the configs (``--epoch 1`` for ``--epochs``) raises, with the closest
      ids as suggestions: MONAI would add it as a new, unused id and run the defaults.
    * With ``frozen_sections`` (evaluation and inference, which build the network from the checkpoint), a
      ``--key`` that one of those sections of the training config references (an architecture setting
      such as ``--use_ltem``) raises: the checkpoint decides it.

    Only acts under ``python -m monai.bundle run`` (reads ``sys.argv``); elsewhere it does nothing.
    """
    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return
    install_error_summary()
    run_id, flags = _command_line(argv)
    if "config_file" not in flags:
        return
    files = _config_files(flags["config_file"])
    configs = [_load(f) for f in files if f.is_file()]
    ids = {k for c in configs for k in c} | {"_meta_"}
    overrides = {k: v for k, v in flags.items() if k not in RUN_ARGUMENTS}
    if flags.get("args_file"):
        overrides.update({k: "" for k in _load(Path(flags["args_file"])) if k not in RUN_ARGUMENTS})
    where = ", ".join(str(f) for f in files)
    training_ids = set()
    for f in files:  # the bundle's training settings, for a better message at inference
        for train in (f.parent / "train.yaml", f.parent / "train.json"):
            if train.is_file():
                training_ids |= set(_load(train))
    for key in overrides:
        top = key.split("#")[0]
        if top in ids:
            continue
        hint = did_you_mean(top, (i for i in ids if not i.startswith("_")), prefix="--")
        if top in training_ids and top not in ids:
            hint += (f" --{top} is a training setting; {run_id or 'this run'} builds the network from the checkpoint, "
                     "which carries the settings it was trained with.")
        raise ConfigurationError(f"--{key} is not a setting of {where}, so it would be ignored.{hint} Nothing was run.")
    if frozen_sections:
        frozen = set()
        for config in configs:
            for section in frozen_sections:
                if isinstance(config.get(section), dict):
                    frozen |= {r.split("#")[0] for r in references(config[section])}
        for key in overrides:
            if key.split("#")[0] in frozen or key.split("#")[0] in frozen_sections:
                raise ConfigurationError(
                    f"--{key}: {run_id or 'this run'} builds the network from the checkpoint's own description, so "
                    f"{key.split('#')[0]} is what the model was trained with and cannot change here. Train a model "
                    f"with that setting to evaluate it. Nothing was run.")
    _refuse_unread(files, run_id or "run", overrides, training_ids)


def _refuse_unread(files: Sequence[Path], run_id: str, overrides: Mapping, training_ids: set) -> None:
    """Refuse an override of an id that the run never reads (``--epochs`` for ``inferring``, which merges the
    bundle's train.yaml for its transforms; ``--image_size`` there, where the checkpoint's processor decides):
    MONAI would take it and run without it."""
    for key in unread_overrides(files, run_id, overrides):
        top = key.split("#")[0]
        if top in training_ids and run_id != "training":
            why = (f"--{top} is a training setting, which {run_id} does not read: it builds the network and its "
                   "processor from the checkpoint, which carries the settings it was trained with.")
        else:
            why = f"--{key} is not read by {run_id} (nothing it runs uses it), so it would be ignored."
        raise ConfigurationError(f"{why} Nothing was run.")


def exception_chain(error: BaseException) -> list[BaseException]:
    """The exception and those it was raised from (``raise ... from ...``) or while handling, outermost first."""
    seen = [error]
    while True:
        nxt = seen[-1].__cause__ or (None if seen[-1].__suppress_context__ else seen[-1].__context__)
        if nxt is None or nxt in seen:
            return seen
        seen.append(nxt)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (``raise ... from ...`` or raised while handling another)."""
    return exception_chain(error)[-1]


# errors whose message names the file or setting to fix: the summary line prefers them to what they wrap
NAMED_ERRORS = (DatasetError, CheckpointError, ConfigurationError, PretrainedWeightsError)
WORKER_TRACEBACK = "Original Traceback"  # torch's DataLoader re-raises a worker's error as text
# a named error as a traceback's last line prints it (``transforms.base.errors.DatasetError: ...``, or the
# vendored ``scripts.tgseg.transforms.base.errors...`` of a packaged bundle)
NAMED_ERROR_LINE = re.compile(rf"^(?:\w+\.)*errors\.({'|'.join(e.__name__ for e in NAMED_ERRORS)}): (.+)$", re.MULTILINE)


def summary_line(error: BaseException) -> str:
    """The line that says what to fix: the innermost error of the chain that names a file or setting, else
    the innermost error; for a DataLoader worker's error, the last such error in its traceback text."""
    chain = exception_chain(error)
    named = [e for e in chain if isinstance(e, NAMED_ERRORS)]
    cause = named[-1] if named else chain[-1]
    if not named and WORKER_TRACEBACK in str(cause):
        found = NAMED_ERROR_LINE.findall(str(cause))
        if found:
            return f"{found[-1][0]}: {found[-1][1]}"
    return f"{type(cause).__name__}: {cause}"


def finish_pool_threads(timeout: float = 300.0) -> None:
    """Wait for the threads of thread pools that an error left running, before the interpreter shuts down.

    MONAI's ``CacheDataset`` fills its cache with ``multiprocessing.pool.ThreadPool``; when one item raises,
    the pool is terminated, which does not wait for the items the other threads are loading. A daemon thread
    still inside torch while the interpreter exits aborts the process ("terminate called without an active
    exception", exit 134) after the error was printed. Terminated pool threads stop after their current item.
    """
    import threading
    from multiprocessing.dummy import DummyProcess

    for thread in threading.enumerate():
        if isinstance(thread, DummyProcess) and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)


def install_error_summary() -> None:
    """After a failed ``monai.bundle run`` prints its traceback, print the root cause as the last line.

    MONAI wraps an error raised in a config expression as ``RuntimeError: Failed to evaluate ...``, so the
    message that says what to fix (the file, the config key) would otherwise sit in the middle of a long
    traceback.
    """
    previous = sys.excepthook
    if getattr(previous, "_prints_root_cause", False):
        return

    def hook(kind, error, traceback):
        previous(kind, error, traceback)
        finish_pool_threads()
        line = summary_line(error)
        if line != f"{type(error).__name__}: {error}":
            print(f"\nerror: {line}", file=sys.stderr, flush=True)

    hook._prints_root_cause = True
    sys.excepthook = hook
