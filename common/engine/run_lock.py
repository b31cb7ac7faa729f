"""One training run per output folder.

A run holds ``<ckpt_dir>/.training.lock`` (its process id, host, start time and torchrun job) from the moment
it starts until it ends. A second run into the same folder (fresh, ``--resume true`` or ``--overwrite true``)
is refused, naming the folder and the process that holds it. A lock left by a process that no longer runs
(killed, out of memory, power cut) is taken over with a warning naming that process.

Under ``torchrun`` rank 0 takes the lock for the whole job; the other ranks learn from rank 0 whether the
folder is theirs and never touch the lock file.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from pathlib import Path

from transforms.base.errors import CheckpointError

logger = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"

# the lock files this process holds: a lock naming this process's own id is not enough, because process ids
# start again from the same numbers in a restarted container
_held_here: set[str] = set()


def _this_run() -> dict:
    torchrun_job = os.environ.get("TORCHELASTIC_RUN_ID") or (
        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}" if "MASTER_PORT" in os.environ else None)
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torchrun_job": torchrun_job}


def _read_record(path: Path) -> dict | None:
    """The lock's record; ``None`` when the lock is gone; ``{}`` when it stays unreadable (its writer is
    between creating and filling it, or died there)."""
    for _ in range(20):
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("pid"), int) and record["pid"] > 0:
            return record
        time.sleep(0.05)
    return {}


def _still_running(holder: dict, path: Path) -> bool:
    """Whether the process that wrote the lock may still be running (when it cannot be told: yes)."""
    if not holder or holder.get("host") != socket.gethostname():
        return True  # an unreadable lock, or another machine's process: this one cannot look
    if holder["pid"] == os.getpid():
        return str(path) in _held_here
    try:
        os.kill(holder["pid"], 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _in_use(holder: dict, path: Path) -> str:
    if not holder:
        return (f"holds a run lock that cannot be read ({path}): another training run may be writing here. "
                f"Write this run elsewhere with --output_dir; if no run is writing here, delete {path}")
    return (f"is in use by another training run (process {holder['pid']} on {holder.get('host')}, started "
            f"{holder.get('started')}): wait until it ends, or write this run elsewhere with --output_dir. "
            f"If that process is no training run of this folder, delete {path}")


class OutputFolderLock:
    """The lock file of one training run in its checkpoint folder (:meth:`acquire`, :meth:`release`)."""

    def __init__(self, folder: str | Path):
        self.folder = str(folder)
        self.path = Path(folder).resolve() / LOCK_NAME
        self.record: dict | None = None

    def acquire(self) -> "OutputFolderLock":
        """Take the folder, or raise :class:`CheckpointError` naming the process that holds it."""
        for _ in range(5):
            if self._create():
                return self
            holder = _read_record(self.path)
            if holder is None:
                continue  # released meanwhile
            if _still_running(holder, self.path):
                raise CheckpointError(self.folder, _in_use(holder, self.path))
            logger.warning("%s: taking over the lock of process %s on %s (started %s), which is no longer running",
                           self.folder, holder["pid"], holder.get("host"), holder.get("started"))
            self._remove_stale(holder)
        raise CheckpointError(self.folder, f"other runs keep taking its lock {self.path}: start one run at a time")

    def _remove_stale(self, holder: dict) -> None:
        """Remove the dead holder's lock, atomically: the lock is renamed to a name of this process's own first,
        so of two new runs that both found it stale only one gets it; the other finds no file to rename, or a
        renamed copy that is not the dead holder's (a new run's fresh lock), which goes back in place."""
        claimed = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, claimed)
        except FileNotFoundError:
            return  # the other run renamed it first
        if _read_record(claimed) == holder:
            claimed.unlink(missing_ok=True)
        else:  # a fresh lock written meanwhile: put it back unless yet another one was made since
            try:
                os.link(claimed, self.path)
            except FileExistsError:
                pass
            claimed.unlink(missing_ok=True)

    def _create(self) -> bool:
        """Create the lock file if there is none (``O_EXCL``: of two runs, exactly one creates it)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise CheckpointError(self.folder, f"cannot create the run lock {LOCK_NAME} ({err.strerror or err})") from err
        record = _this_run()
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(record, file)
        except OSError as err:
            self.path.unlink(missing_ok=True)
            raise CheckpointError(self.folder, f"cannot write the run lock {LOCK_NAME} ({err.strerror or err})") from err
        self.record = record
        _held_here.add(str(self.path))
        atexit.register(self.release)  # a run that never reaches its end (an error before the engine runs)
        return True

    def release(self) -> None:
        """Give the folder back (once; a lock that another run has taken over meanwhile is left alone)."""
        if self.record is None:
            return
        try:
            if _read_record(self.path) == self.record:
                self.path.unlink(missing_ok=True)
        except OSError as err:
            logger.warning("%s: could not remove the run lock %s (%s)", self.folder, self.path, err)
        _held_here.discard(str(self.path))
        atexit.unregister(self.release)
        self.record = None


def hold_output_folder(folder: str | Path) -> OutputFolderLock | None:
    """This run's lock on ``folder``. Under ``torchrun`` rank 0 takes it and tells the other ranks whether it
    could (they stop with rank 0's refusal); they hold nothing (``None``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return OutputFolderLock(folder).acquire()
    lock, refusal = None, None
    if dist.get_rank() == 0:
        try:
            lock = OutputFolderLock(folder).acquire()
        except Exception as err:  # noqa: BLE001 - every rank must hear of it, or the others wait forever
            refusal = err
    outcome = [None if refusal is None else str(refusal)]
    dist.broadcast_object_list(outcome, src=0)
    if refusal is not None:
        raise refusal
    if outcome[0] is not None:
        raise CheckpointError(None, outcome[0])
    return lock


def release_when_run_ends(engine, lock: OutputFolderLock | None) -> None:
    """Release ``lock`` when ``engine.run()`` returns or raises.

    Not an ``Events.EXCEPTION_RAISED`` handler: ignite stops at the first such handler that re-raises, and
    MONAI's ``StatsHandler``, attached with the trainer, is that one, so a later handler never runs.
    """
    if lock is None or engine is None:
        return
    run = engine.run

    def run_then_release(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        finally:
            lock.release()

    engine.run = run_then_release
