"""Messages that say what happened: the folder or file as the user typed it, then the system's own reason;
a cause (a full disk, a read-only file system, a permission) only when the error's errno names it."""
import errno
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import export
import prepare
import readers
import sample
import train
from conftest import TINY
from fineweb_gpt import atomic
from fineweb_gpt.checkpoint import CheckpointError, save_checkpoint
from test_bad_input import fails_cleanly

REAL_SAVE = torch.save
GUESSES = ("disk is full", "disk full", "read-only", "quota", "no permission")


def no_guess(message: str) -> None:
    assert not [g for g in GUESSES if g in message], message


def failing_torch_save(code: int):
    """torch.save whose file fails with errno `code`, as a real write would (torch reports it as a RuntimeError
    whose context is the OSError)."""
    class Failing:
        def write(self, data):
            raise OSError(code, os.strerror(code))

        def flush(self):
            pass

    return lambda obj, f, *args, **kwargs: REAL_SAVE(obj, Failing(), *args, **kwargs)


def test_the_reason_is_the_systems_and_a_cause_only_where_errno_says(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", failing_torch_save(errno.ENOSPC))
    with pytest.raises(CheckpointError, match=r"No space left on device \(ENOSPC\); the disk is full: free space"):
        save_checkpoint({"x": 1}, str(tmp_path / "ckpt.pt"))
    monkeypatch.setattr(torch, "save", failing_torch_save(errno.EIO))
    with pytest.raises(CheckpointError) as e:
        save_checkpoint({"x": 1}, str(tmp_path / "ckpt.pt"))
    assert "Input/output error (EIO)" in str(e.value)
    no_guess(str(e.value))
    assert os.listdir(tmp_path) == []  # nothing half-written is left
    assert atomic.os_error_reason(ValueError("bad\nlast line")) == "ValueError: last line"


@pytest.mark.slow  # a training run
def test_a_failed_checkpoint_write_through_train_shows_the_real_error(synthetic_shards, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", failing_torch_save(errno.EIO))
    message = fails_cleanly(train.main, [*TINY, f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path / 'out'}",
                                         "--max_iters=1", "--n_layer=1"],
                            "could not write the checkpoint", "ckpt.pt", "Input/output error (EIO)")
    no_guess(message)
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".tmp") or n.endswith(".pt")]


def test_export_names_the_hf_dir_the_user_gave_then_the_reason(tmp_path):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc: a folder no one can create entries in")
    message = fails_cleanly(export.main, [f"--out_dir={tmp_path}", "--hf_dir=/proc/fwgpt_out"],
                            "cannot write into --hf_dir=/proc/fwgpt_out", "(creating the folder failed: ",
                            untouched=[tmp_path])
    no_guess(message)


def test_a_checkpoint_path_the_system_cannot_read_is_not_called_corrupt(tmp_path):
    (tmp_path / "ckpt.pt").mkdir()
    message = fails_cleanly(sample.main, [f"--out_dir={tmp_path}", "--device=cpu"],
                            f"cannot read {tmp_path / 'ckpt.pt'} (Is a directory (EISDIR))", untouched=[tmp_path])
    assert "corrupt" not in message and "truncated" not in message


def test_prepare_names_out_dir_and_the_real_error_of_a_failed_shard_write(tiktoken_cache, tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["one", "two", "three"]}), path)

    def write(self, tokens, docs, text_bytes):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(prepare.ShardWriter, "write", write)
    message = fails_cleanly(prepare.main, [f"--input={path}", f"--out_dir={tmp_path / 'out'}", "--val_docs=1",
                                           "--progress=False"],
                            f"could not write into --out_dir={tmp_path / 'out'} (Input/output error (EIO))",
                            "run the same command again", untouched=[tmp_path])
    no_guess(message)


def test_an_input_the_system_refuses_is_not_called_corrupt(tiktoken_cache, tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n')

    def refuse(p):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)

    monkeypatch.setattr(readers, "open_compressed", refuse)
    message = fails_cleanly(prepare.main, [f"--input={path}", f"--out_dir={tmp_path / 'out'}", "--progress=False"],
                            f"{path}: cannot be read after 0 documents (Permission denied (EACCES)")
    assert "corrupt" not in message and "re-download" not in message
