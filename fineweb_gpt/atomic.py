"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file this project writes that a later run reads (checkpoints, shards, meta.json, resume state,
config.json, metrics.jsonl rewrites) goes through here: write to NAME.tmp, flush, fsync, rename
over NAME, fsync the folder. A set of files (export.py's model folder) is written into a staging
folder beside its target and moved in only when all of it is written (staged_dir).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


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
    """A file written under path.tmp that appears as path only on commit(); abort() removes it."""

    def __init__(self, path: str, mode: str = "wb"):
        self.path, self.tmp = path, f"{path}.tmp"
        self.file: IO = open(self.tmp, mode)

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
    tmp = f"{dst}.tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
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
