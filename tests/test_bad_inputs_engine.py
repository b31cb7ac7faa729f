"""Bad luck with outputs (issue 22): a full disk, two runs into one folder, a demo pointed at a real model.

Nothing is lost and nothing is overwritten; every error names the file or folder and says what to do.
In-process, on tiny ignite engines (no bundle subprocess).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from transforms.base.errors import CheckpointError
from common.engine.checkpoints import AtomicSaver, EpochCheckpointSaver, ResumeHandler, resume_path
from common.engine.run_lock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]


def _engine(epochs_fail_at: int | None = None) -> Engine:
    """A trainer of a few iterations that does nothing (or raises in epoch ``epochs_fail_at``)."""

    def step(engine, batch):
        if engine.state.epoch == epochs_fail_at:
            raise RuntimeError("the training step failed")
        return 0.0

    return Engine(step)


def _training_state() -> dict:
    network = torch.nn.Linear(2, 2)
    return {"model": network, "optimizer": torch.optim.SGD(network.parameters(), lr=0.1)}


def _disk_full_after(saves: int, error: int = errno.ENOSPC):
    """A ``torch.save`` that writes ``saves`` files, then writes half a file and fails like a full disk."""
    real_save, calls = torch.save, []

    def save(obj, file, *args, **kwargs):
        calls.append(file)
        if len(calls) <= saves:
            return real_save(obj, file, *args, **kwargs)
        with open(file, "wb") if isinstance(file, (str, Path)) else file as f:
            f.write(b"half a checkpoint")
        raise OSError(error, os.strerror(error))

    return save


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01 00:00:00"}))
    return lock


def _pid_of_a_finished_process() -> int:
    proc = subprocess.Popen(["true"])  # not a Python process: this check stays in the fast loop
    proc.wait()
    return proc.pid


@pytest.fixture
def running_process():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ---------------------------------------------------------------------------------------------
# item 2: a full disk deletes no checkpoint
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error, why", [(errno.ENOSPC, "the disk is full. The previous checkpoints are kept: free some space"),
                                        (errno.EROFS, "Read-only file system. The previous checkpoints are kept: fix that")])
def test_a_failed_save_keeps_the_previous_epoch_checkpoint_and_says_why(tmp_path, monkeypatch, error, why):
    ckpt_dir = tmp_path / "models"
    engine = _engine()
    EpochCheckpointSaver(str(ckpt_dir), _training_state(), n_saved=1).attach(engine)
    monkeypatch.setattr(torch, "save", _disk_full_after(1, error))
    with pytest.raises(CheckpointError, match=rf"models/checkpoint_epoch=2.pt: cannot be saved: {why}, then "
                                              r"continue the run with --resume true"):
        engine.run([0, 1], max_epochs=3)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_epoch=1.pt"]  # no .part left behind
    assert resume_path(True, str(ckpt_dir)) == str(ckpt_dir / "checkpoint_epoch=1.pt")
    assert "model" in torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=True)  # readable


def test_a_failed_save_of_the_best_model_keeps_the_previous_one(tmp_path, monkeypatch):
    engine = _engine()
    network = torch.nn.Linear(2, 2)
    best = Checkpoint({"model": network}, AtomicSaver(str(tmp_path), "model.pt"), n_saved=1,
                      score_function=lambda e: e.state.epoch, score_name="epoch")  # each epoch better: replaced
    engine.add_event_handler(Events.EPOCH_COMPLETED, best)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda: network.weight.data.fill_(1.0))
    engine.run([0], max_epochs=2)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1).all()  # epoch 2's, not removed
    network.weight.data.fill_(2.0)
    monkeypatch.setattr(torch, "save", _disk_full_after(0))
    with pytest.raises(CheckpointError, match=r"model.pt: cannot be saved: the disk is full"):
        engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(1).all()  # the previous best


def test_a_checkpoint_left_over_by_a_run_killed_between_save_and_removal_is_pruned(tmp_path):
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    for epoch in (1, 2):
        torch.save({"model": {}}, ckpt_dir / f"checkpoint_epoch={epoch}.pt")
    (ckpt_dir / "checkpoint_epoch=3.pt.part").write_bytes(b"half a checkpoint")
    engine = _engine()
    EpochCheckpointSaver(str(ckpt_dir), _training_state(), n_saved=1).attach(engine)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["checkpoint_epoch=3.pt"]


# ---------------------------------------------------------------------------------------------
# item 3: one run per output folder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("resume, overwrite", [(False, False), (False, True), (True, False)])
def test_a_second_run_into_a_running_runs_folder_is_refused(tmp_path, running_process, resume, overwrite):
    ckpt_dir = tmp_path / "models"
    lock = _write_lock(ckpt_dir, running_process)
    torch.save({"model": {}}, ckpt_dir / "model.pt")
    with pytest.raises(CheckpointError, match=rf"models: is in use by another training run \(process "
                                              rf"{running_process} on {socket.gethostname()}, started .*\): wait until "
                                              r"it ends, or write this run elsewhere with --output_dir"):
        ResumeHandler(resume, str(ckpt_dir), {}, overwrite=overwrite).attach(_engine())
    assert (ckpt_dir / "model.pt").is_file()  # --overwrite true removed nothing
    assert json.loads(lock.read_text())["pid"] == running_process


def test_a_run_in_this_process_holds_its_folder_until_its_engine_ends(tmp_path):
    ckpt_dir = tmp_path / "models"
    first = _engine()
    ResumeHandler(False, str(ckpt_dir), {}).attach(first)
    assert json.loads((ckpt_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(CheckpointError, match=rf"models: is in use by another training run \(process {os.getpid()} "):
        ResumeHandler(False, str(ckpt_dir), {}).attach(_engine())
    first.run([0], max_epochs=1)
    assert not (ckpt_dir / LOCK_NAME).exists()
    second = _engine()
    ResumeHandler(False, str(ckpt_dir), {}).attach(second)  # free again
    second.run([0], max_epochs=1)


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    ckpt_dir = tmp_path / "models"
    dead = _pid_of_a_finished_process()
    _write_lock(ckpt_dir, dead)
    engine = _engine()
    with caplog.at_level(logging.WARNING):
        ResumeHandler(False, str(ckpt_dir), {}).attach(engine)
    assert f"models: taking over the lock of process {dead} on {socket.gethostname()}" in caplog.text
    assert "which is no longer running" in caplog.text
    assert json.loads((ckpt_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    engine.run([0], max_epochs=1)
    assert not (ckpt_dir / LOCK_NAME).exists()


def test_a_lock_of_another_machine_is_not_taken_over(tmp_path):
    ckpt_dir = tmp_path / "models"
    _write_lock(ckpt_dir, _pid_of_a_finished_process(), host="another-machine")
    with pytest.raises(CheckpointError, match=r"models: is in use by another training run \(process \d+ on "
                                              r"another-machine, .*If that process is no training run of this folder, "
                                              rf"delete .*models/{LOCK_NAME}"):
        ResumeHandler(False, str(ckpt_dir), {}).attach(_engine())


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    """Also when MONAI's StatsHandler, attached with the trainer, re-raises the error first (ignite then runs no
    later EXCEPTION_RAISED handler)."""
    from monai.handlers import StatsHandler

    ckpt_dir = tmp_path / "models"
    engine = _engine(epochs_fail_at=1)
    StatsHandler(iteration_log=False, epoch_log=False).attach(engine)
    ResumeHandler(False, str(ckpt_dir), {}).attach(engine)
    held = []
    engine.add_event_handler(Events.STARTED, lambda: held.append((ckpt_dir / LOCK_NAME).is_file()))
    with pytest.raises(RuntimeError, match="the training step failed"):
        engine.run([0], max_epochs=1)
    assert held == [True] and not (ckpt_dir / LOCK_NAME).exists()


def test_a_refused_start_gives_the_folder_back(tmp_path):
    ckpt_dir = tmp_path / "models"
    ckpt_dir.mkdir()
    torch.save({"model": {}}, ckpt_dir / "model.pt")
    with pytest.raises(CheckpointError, match=r"already holds a trained model \(model.pt\)"):
        ResumeHandler(False, str(ckpt_dir), {}).attach(_engine())
    assert not (ckpt_dir / LOCK_NAME).exists()
    engine = _engine()
    ResumeHandler(False, str(ckpt_dir), {}, overwrite=True).attach(engine)  # not held by the refused start
    assert json.loads((ckpt_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    engine.run([0], max_epochs=1)


# one rank of a two-process gloo job: takes a free folder, then a folder that a running process holds
RANK = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from transforms.base.errors import CheckpointError
from common.engine.run_lock import LOCK_NAME, hold_output_folder

rank, init_file, free, busy = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
lock = hold_output_folder(free)
dist.barrier()  # every rank reads the lock while rank 0 holds it
print("free:", lock is not None, json.loads((Path(free) / LOCK_NAME).read_text())["pid"] == os.getpid())
dist.barrier()
if lock is not None:
    lock.release()
try:
    hold_output_folder(busy)
except CheckpointError as err:
    print("busy:", err)
dist.destroy_process_group()
"""


@pytest.mark.bundle
def test_the_ranks_of_one_torchrun_job_share_one_lock(tmp_path, running_process):
    """Rank 0 takes the folder for the job; the other ranks take no lock and stop with rank 0's refusal."""
    free, busy = tmp_path / "free", tmp_path / "busy"
    free.mkdir()
    _write_lock(busy, running_process)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(tmp_path / "init"), str(free), str(busy)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [rank.communicate(timeout=300)[0].strip().splitlines() for rank in ranks]
    assert outputs[0][0] == "free: True True" and outputs[1][0] == "free: False False", outputs
    assert not (free / LOCK_NAME).exists()
    assert outputs[0][1] == outputs[1][1], outputs
    assert f"busy: {busy}: is in use by another training run (process {running_process}" in outputs[1][1]


# ---------------------------------------------------------------------------------------------
# item 4: the demo replaces only what a demo wrote
# ---------------------------------------------------------------------------------------------
def test_the_demo_refuses_to_replace_a_model_no_demo_wrote(tmp_path):
    ckpt_dir = tmp_path / "real_run" / "models"
    ckpt_dir.mkdir(parents=True)
    torch.save({"model": {}}, ckpt_dir / "model.pt")
    before = (ckpt_dir / "model.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"real_run/models: holds a model that no demo wrote \(model.pt\); the "
                                              r"demo replaces only a demo's outputs: choose another --output_dir"):
        ResumeHandler(False, str(ckpt_dir), {}, overwrite="demo").attach(_engine())
    assert (ckpt_dir / "model.pt").read_bytes() == before
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["model.pt"]  # and the lock is given back


def test_the_demo_replaces_its_own_outputs_until_a_real_run_writes_there(tmp_path):
    out = tmp_path / "demo_run"
    ckpt_dir = out / "models"
    engine = _engine()
    ResumeHandler(False, str(ckpt_dir), {}, overwrite="demo").attach(engine)
    engine.run([0], max_epochs=1)
    torch.save({"model": {}}, ckpt_dir / "model.pt")  # what the demo trained
    assert (out / ".written-by-demo").is_file()
    engine = _engine()
    ResumeHandler(False, str(ckpt_dir), {}, overwrite="demo").attach(engine)  # the next demo: replaced
    engine.run([0], max_epochs=1)
    assert not (ckpt_dir / "model.pt").exists()
    torch.save({"model": {}}, ckpt_dir / "model.pt")
    engine = _engine()
    ResumeHandler(False, str(ckpt_dir), {}, overwrite=True).attach(engine)  # a real run takes the folder
    engine.run([0], max_epochs=1)
    torch.save({"model": {}}, ckpt_dir / "model.pt")  # what the real run trained
    assert not (out / ".written-by-demo").exists()
    with pytest.raises(CheckpointError, match=r"demo_run/models: holds a model that no demo wrote"):
        ResumeHandler(False, str(ckpt_dir), {}, overwrite="demo").attach(_engine())


def test_scripts_demo_stops_before_running_anything_when_pointed_at_a_real_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import demo

    ran = []
    monkeypatch.setattr(demo, "_run", ran.append)
    (tmp_path / "models").mkdir()
    torch.save({"model": {}}, tmp_path / "models" / "model.pt")
    with pytest.raises(CheckpointError, match=r"models: holds a model that no demo wrote \(model.pt\)"):
        demo.main(bundle="tmca", output_dir=str(tmp_path))
    assert ran == []


def test_a_stale_lock_is_taken_over_by_one_run_only(tmp_path, monkeypatch):
    """Two new runs that both found the dead holder's lock: the second must not remove the lock the first has
    meanwhile written (it used to unlink whatever lay there once the record had been read)."""
    from common.engine import run_lock
    from common.engine.run_lock import OutputFolderLock

    folder = tmp_path / "models"
    folder.mkdir()
    dead = {"pid": _pid_of_a_finished_process(), "host": socket.gethostname(), "started": "earlier"}
    (folder / LOCK_NAME).write_text(json.dumps(dead))
    first, second = OutputFolderLock(folder), OutputFolderLock(folder)
    read, raced = run_lock._read_record, []

    def read_while_the_first_run_takes_over(path):
        record = read(path)
        if not raced:  # between the second run's read and what it does next, the first run takes the folder
            raced.append(True)
            first._remove_stale(dead)
            assert first._create()
        return record

    monkeypatch.setattr(run_lock, "_read_record", read_while_the_first_run_takes_over)
    second._remove_stale(dead)
    assert json.loads((folder / LOCK_NAME).read_text()) == first.record  # the first run's lock stands
    assert [p.name for p in folder.iterdir()] == [LOCK_NAME]
    first.release()
