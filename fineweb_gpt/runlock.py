"""One run per folder: a process that writes into a folder (train.py's out_dir, prepare.py's out_dir,
export.py's hf_dir) holds that folder's lock while it lives; a second one stops at once, naming the holder.

The lock is an OS lock (flock) on LOCK_NAME inside the folder, so it dies with its process: a run killed
with kill -9, a power loss or a node that vanished leaves a lock file that no longer blocks anyone. The
file records who holds it (pid, host, command, start time): that record names the holder in the
refusal, and when the next run finds a record but no lock, it reports it as stale. A run that ends
normally deletes the file.

Under torchrun the whole job holds one lock: the process of global rank 0 takes it for everyone
(job_lock), so the lock works the same when out_dir is shared storage that every node sees.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from fineweb_gpt.atomic import os_error_reason, remove_temporaries
from fineweb_gpt.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: only the record is checked (see _flock)
    fcntl = None

LOCK_NAME = ".fineweb-gpt.lock"
# errnos of file systems that offer no flock (some network and cluster file systems)
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunLockError(UserError):
    """The folder is held by another run, or cannot be locked. Callers pass their own user-error class."""


class FolderLock:
    """The held lock of one folder; release() gives it up and deletes the lock file."""

    def __init__(self, folder: str, fd: int, created_folder: bool):
        self.folder, self.fd, self.created_folder = folder, fd, created_folder
        self.path = os.path.join(folder, LOCK_NAME)

    def release(self) -> None:
        if self.fd < 0:
            return
        try:  # unlink while still holding the lock: a waiting process re-checks the inode (see _acquire)
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1
        if self.created_folder:  # a run that stopped before writing anything leaves no empty folder behind
            try:
                os.rmdir(self.folder)
            except OSError:
                pass


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _read_record(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _holder(record: dict | None) -> str:
    if not record:
        return "another process (it has not recorded itself yet)"
    return (f"pid {record.get('pid')} on host {record.get('host')} (started {record.get('started')}: "
            f"{record.get('command')})")


def _alive_here(record: dict | None) -> bool:
    """Whether the record names a live process on this host other than this one."""
    if not record or record.get("host") != socket.gethostname() or record.get("pid") == os.getpid():
        return False
    try:
        pid = int(record["pid"])
        if pid <= 0:  # kill(0 or less) would ask about process groups
            return False
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, TypeError, KeyError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _flock(fd: int) -> bool | None:
    """True if this process now holds the lock, False if another does, None if the file system has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in NO_LOCKS:
            return None
        raise


def _make_folder(folder: str, where: str, error: type[Exception]) -> bool:
    """Create folder if missing; True if this call created it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise error(f"{where} is a file; name a folder (it is created if missing)")
    try:
        os.makedirs(folder)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise error(f"cannot write into {where} (creating the folder failed: {os_error_reason(e)})") from None


def _acquire(folder: str, where: str, error: type[Exception]) -> FolderLock:
    created = _make_folder(folder, where, error)
    try:
        fd, held, record = _lock_file(os.path.join(folder, LOCK_NAME), where, error)
    except BaseException:
        if created:  # leave no trace of a folder this call made
            for remove, target in ((os.unlink, os.path.join(folder, LOCK_NAME)), (os.rmdir, folder)):
                try:
                    remove(target)
                except OSError:
                    pass
        raise
    here = bool(record) and record.get("host") == socket.gethostname()
    if record and (held or here):
        print(f"note: {where} holds a stale lock of {_holder(record)}, which is no longer running (killed, or its "
              f"machine stopped); this run takes the folder over", file=sys.stderr, flush=True)
    elif record:
        print(f"warning: the file system of {where} has no locks, and its lock file names {_holder(record)}, which "
              f"cannot be checked from this host; this run takes the folder over: make sure that run has ended",
              file=sys.stderr, flush=True)
    # files a dead run left half-written: nobody else writes here while we hold the lock
    remove_temporaries(folder)
    return FolderLock(folder, fd, created)


def _lock_file(path: str, where: str, error: type[Exception]) -> tuple[int, bool | None, dict | None]:
    """(open descriptor holding the lock, how it is held (see _flock), the previous holder's record)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise error(f"cannot lock {where} (writing {LOCK_NAME} there failed: {os_error_reason(e)})") from None
        try:
            held = _flock(fd)
        except OSError as e:
            os.close(fd)
            raise error(f"cannot lock {where} ({LOCK_NAME}: {os_error_reason(e)})") from None
        record = _read_record(fd)
        if held is False or (held is None and _alive_here(record)):
            os.close(fd)
            unchecked = "" if held is False else f" (this file system has no locks: if it has ended, delete {path})"
            raise error(f"{where} is in use by {_holder(record)}{unchecked}; wait until it ends or stop it, or choose "
                        f"another folder. Two runs writing one folder overwrite each other's files")
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the holder deleted the file as it ended, after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_record()).encode(), 0)
    except OSError as e:
        os.close(fd)
        raise error(f"cannot lock {where} (writing {LOCK_NAME} there failed: {os_error_reason(e)})") from None
    return fd, held, record


@contextmanager
def hold(folder: str, where: str | None = None, error: type[Exception] = RunLockError) -> Iterator[None]:
    """Hold folder (created if missing) for the block. `where` names it in messages as the user typed it
    (e.g. '--out_dir=out'); `error` is the caller's user-error class, raised when the folder is held
    elsewhere or cannot be created."""
    lock = _acquire(folder, where or folder, error)
    try:
        yield
    finally:
        lock.release()


@contextmanager
def job_lock(folder: str, env, where: str | None = None, error: type[Exception] = RunLockError) -> Iterator[None]:
    """hold() for a torchrun job: global rank 0 takes the lock for every process; if it cannot, every
    process raises the same error (none waits for a partner that already quit)."""
    lock, problem = None, None
    if env.master:
        try:
            lock = _acquire(folder, where or folder, error)
        except error as e:
            problem = str(e)
    problems = [p for p in env.gather(problem) if p]
    try:
        if problems:
            raise error(problems[0])
        yield
    finally:
        if lock is not None:
            lock.release()
