"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file this project writes that a later run reads (checkpoints, shards, meta.json, resume state,
config.json, metrics.jsonl rewrites) goes through here: write to a temporary name beside NAME, flush,
fsync, rename over NAME, fsync the folder. The temporary name is unique to the process and the write
(NAME.PID.RANDOM.tmp), so two writers never share one. A set of files (export.py's model
folder) is written into a staging folder beside its target and moved in only when all of it is
written (staged_dir).
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator

_TEMPORARY = re.compile(r".+\.\d+\.[0-9a-f]{8}\.tmp")

# what an errno says about the cause, and what to do; any other error is shown as the system said it
CAUSES = {
    errno.ENOSPC: "the disk is full: free space",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota",
    errno.EROFS: "the file system is read-only: choose a folder on a writable disk",
    errno.EACCES: "no permission: check the owner and mode of the path, or choose one you own",
}


def temporary_name(path: str) -> str:
    """A name beside path that no other process or write uses."""
    return f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.fullmatch(name))


def remove_temporaries(folder: str) -> list[str]:
    """Delete the temporary files in folder (those of writes that never finished: a killed run). Call it
    only while holding the folder (runlock), when no other process can be writing them."""
    removed = []
    for name in os.listdir(folder):
        if is_temporary(name):
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def find_os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind e (torch.save and safetensors report a failed write as their own error and keep
    the OSError as its context), or None."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def os_error_reason(e: BaseException) -> str:
    """What went wrong, as the system said it, and the cause and fix only where the errno names them."""
    os_error = find_os_error(e)
    if os_error is None:
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[-1][:200] if lines else ''}"
    text = os_error.strerror or str(os_error)
    name = errno.errorcode.get(os_error.errno or 0)
    reason = f"{text} ({name})" if name else text
    cause = CAUSES.get(os_error.errno or 0)
    return f"{reason}; {cause}" if cause else reason


def fsync_dir(path: str) -> None:
    """Make a rename inside path's folder durable."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its rename is durable enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A file written under a temporary name that appears as path only on commit(); abort() removes it."""

    def __init__(self, path: str, mode: str = "wb"):
        self.path, self.tmp = path, temporary_name(path)
        self.file: IO = open(self.tmp, mode.replace("w", "x"))  # "x": never reuse a file that exists

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path)

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


@contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """`with atomic_write(path) as f: ...` publishes path when the block ends without an exception."""
    af = AtomicFile(path, mode)
    try:
        yield af.file
    except BaseException:
        af.abort()
        raise
    af.commit()


def write_json(path: str, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)


def publish_copy(src: str, dst: str) -> None:
    """Make dst an atomic copy of src: a hard link when the filesystem allows it (no extra bytes)."""
    tmp = temporary_name(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(dst)


@contextmanager
def staged_dir(target: str, prefix: str = ".staging-") -> Iterator[str]:
    """`with staged_dir(target) as staging: ...` yields an empty folder beside target (same filesystem,
    so moving out of it is a rename). When the block ends without an exception its files are published
    into target (publish_dir); an exception in the block, Ctrl-C included, leaves target as it was. The
    staging folder is removed either way."""
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield staging
        publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(staging: str, target: str) -> None:
    """Move every file of staging into target (created if missing), each with one atomic rename over the
    file of the same name; target's other files stay. Each file is old or new, never half of one (an
    interruption between two renames leaves some of each)."""
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(staging)):
        os.replace(os.path.join(staging, name), os.path.join(target, name))
    fsync_dir(os.path.join(target, "."))
