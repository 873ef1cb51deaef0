"""One run per folder: a second train.py, prepare.py or export.py on a folder that a live run holds stops
at once, naming the folder and the holder; a lock left by a killed process does not block; temporary
files of two writers never collide."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import export
import prepare
import train
from conftest import ROOT, TINY, metrics
from fineweb_gpt import atomic, runlock
from fineweb_gpt.checkpoint import load_checkpoint
from fineweb_gpt.distributed import Env
from test_bad_input import fails_cleanly, snapshot

HOLD = ("import sys, time; from fineweb_gpt import runlock\n"
        "with runlock.hold(sys.argv[1]):\n"
        "    print('held', flush=True); time.sleep(120)\n")


def wait_for_lock(folder, job, timeout=120.0) -> dict:
    """The lock record once the job has written it."""
    path = os.path.join(folder, runlock.LOCK_NAME)
    deadline = time.time() + timeout
    while time.time() < deadline and job.poll() is None:
        if os.path.exists(path) and os.path.getsize(path):
            with open(path) as f:
                return json.load(f)
        time.sleep(0.02)
    raise AssertionError(f"the job never held {folder}: {job.communicate()[1][-3000:]}")


def test_a_second_holder_is_refused_with_the_folder_and_the_holder(tmp_path):
    with runlock.hold(str(tmp_path), "--out_dir=run"):
        with pytest.raises(runlock.RunLockError) as e:
            with runlock.hold(str(tmp_path), "--out_dir=run"):
                pass
        assert f"--out_dir=run is in use by pid {os.getpid()}" in str(e.value)
        assert sys.argv[0] in str(e.value)  # the holder's command
    assert not (tmp_path / runlock.LOCK_NAME).exists()  # a normal end leaves no lock file
    with runlock.hold(str(tmp_path)):  # and the folder is free again
        pass


def test_prepare_and_export_refuse_a_held_folder_and_change_nothing(tiktoken_cache, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "a document"}\n')
    with runlock.hold(str(tmp_path)):
        fails_cleanly(prepare.main, [f"--input={source}", f"--out_dir={tmp_path}", "--progress=False"],
                      f"--out_dir={tmp_path} is in use by pid {os.getpid()}", untouched=[tmp_path])
        fails_cleanly(export.main, ["--out_dir=nowhere", f"--hf_dir={tmp_path}"],
                      f"--hf_dir={tmp_path} is in use by pid {os.getpid()}", untouched=[tmp_path])


def test_a_run_that_wrote_nothing_leaves_no_folder_behind(tmp_path):
    with runlock.hold(str(tmp_path / "a")):
        pass
    assert not (tmp_path / "a").exists()  # created for the lock, empty at the end: removed


def test_under_torchrun_only_rank_0_locks_and_every_rank_stops(tmp_path):
    class Rank(Env):
        answers: list = [None, None]

        def gather(self, obj):
            return [obj if r == self.rank else a for r, a in enumerate(self.answers)]

    rank1 = Rank("cpu", rank=1, world_size=2, ddp=True)
    with runlock.job_lock(str(tmp_path / "out"), rank1):
        assert not (tmp_path / "out").exists()  # rank 0 holds the job's lock; rank 1 takes none
    Rank.answers = ["--out_dir=out is in use by pid 1", None]
    with pytest.raises(runlock.RunLockError, match="in use by pid 1"):
        with runlock.job_lock(str(tmp_path / "out"), rank1):
            pass
    Rank.answers = [None, None]
    rank0 = Rank("cpu", rank=0, world_size=2, ddp=True)
    with runlock.job_lock(str(tmp_path / "out"), rank0):
        assert json.load(open(tmp_path / "out" / runlock.LOCK_NAME))["pid"] == os.getpid()


def test_without_file_locks_the_record_decides(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runlock, "_flock", lambda fd: None)  # a file system that offers no flock
    lock = tmp_path / runlock.LOCK_NAME
    alive = {"pid": os.getppid(), "host": runlock.socket.gethostname(), "command": "train.py", "started": "then"}
    lock.write_text(json.dumps(alive))
    with pytest.raises(runlock.RunLockError, match=f"in use by pid {os.getppid()}"):
        with runlock.hold(str(tmp_path)):
            pass
    lock.write_text(json.dumps({**alive, "host": "another-node"}))
    with runlock.hold(str(tmp_path)):
        pass
    err = capsys.readouterr().err
    assert "has no locks" in err and "on host another-node" in err and "make sure that run has ended" in err


def test_temporary_files_of_two_writers_never_collide(tmp_path):
    path = str(tmp_path / "f.json")
    first, second = atomic.AtomicFile(path, "w"), atomic.AtomicFile(path, "w")
    assert first.tmp != second.tmp and atomic.is_temporary(os.path.basename(first.tmp))
    first.file.write("1")
    second.file.write("2")
    first.commit()
    second.commit()
    assert open(path).read() == "2" and os.listdir(tmp_path) == ["f.json"]


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path, capsys):
    (tmp_path / "ckpt.pt.4242.0123abcd.tmp").write_bytes(b"half a checkpoint")  # what a killed save leaves
    job = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    record = wait_for_lock(str(tmp_path), job)
    assert record["pid"] == job.pid
    with pytest.raises(runlock.RunLockError, match=f"in use by pid {job.pid} on host"):
        with runlock.hold(str(tmp_path)):
            pass
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=30)
    assert (tmp_path / runlock.LOCK_NAME).exists()  # kill -9 left its lock file
    with runlock.hold(str(tmp_path)):
        assert json.load(open(tmp_path / runlock.LOCK_NAME))["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"stale lock of pid {job.pid}" in err and "no longer running" in err
    assert sorted(os.listdir(tmp_path)) == []  # the dead run's half-written file went with its lock


@pytest.mark.slow
def test_a_second_train_is_refused_while_the_first_finishes_intact(synthetic_shards, tmp_path):
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY, f"--data_dir={synthetic_shards}",
                            f"--out_dir={out}", "--max_iters=40", "--eval_interval=20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": ROOT})
    wait_for_lock(str(out), job)
    for init_from in ("auto", "resume", "scratch"):  # a retry, a resume, a fresh start: all refused at once
        message = fails_cleanly(train.main, [*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={out}",
                                             "--max_iters=40", f"--init_from={init_from}"],
                                f"--out_dir={out} is in use by pid {job.pid}", "train.py")
        assert "already holds a checkpoint" not in message
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert load_checkpoint(str(out / "ckpt.pt"))["loop"]["step"] == 40
    assert [r["step"] for r in metrics(out)] == list(range(41))  # one run's log, nothing written twice
    assert not (out / runlock.LOCK_NAME).exists() and not [p for p in snapshot(out) if p.endswith(".tmp")]
