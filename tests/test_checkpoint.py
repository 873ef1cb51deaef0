"""Checkpoints: canonical and complete as training writes them, atomic on a crash, clear errors when unreadable."""
import hashlib
import math
import os
from dataclasses import asdict, fields

import pytest
import torch

from fineweb_gpt import checkpoint
from conftest import losses, run_train
from model import GPT, GPTConfig


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_checkpoint_is_canonical_and_complete(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=1")
    ckpt = checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    raw = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not [k for k in raw["model"] if k.startswith(("_orig_mod.", "module."))]
    assert set(raw["model"]) == set(GPT(GPTConfig(**ckpt["model_args"])).state_dict())
    for k in ("optimizer", "scaler", "config", "rng", "tokenizer", "loop"):
        assert k in ckpt
    assert set(ckpt["loop"]) == {f.name for f in fields(checkpoint.LoopState)}  # the loop state, as one record
    assert ckpt["loop"]["step"] == 2 and ckpt["loop"]["loader"] and ckpt["loop"]["best_val_loss"] < math.inf
    assert ckpt["tokenizer"]["name"] == "gpt2"
    assert (tmp_path / "ckpt_best.pt").exists()

def test_a_crash_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save_checkpoint({"model": {"w": torch.ones(3)}, "model_args": {}}, path)
    before = digest(path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"model": {"w": torch.zeros(3)}, "model_args": {}}, path)
    assert digest(path) == before and os.listdir(tmp_path) == ["ckpt.pt"]

def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at .* holds no checkpoints; train first"):
        checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    good = tmp_path / "good.pt"
    checkpoint.save_checkpoint({"model": {"w": torch.ones(1000)}, "model_args": {}}, str(good))
    (tmp_path / "ckpt.pt").write_bytes(good.read_bytes()[:500])
    with pytest.raises(checkpoint.CheckpointError, match="truncated, corrupt or not a fineweb-gpt checkpoint"):
        checkpoint.load_checkpoint(str(tmp_path / "ckpt.pt"))
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a fineweb-gpt checkpoint"):
        checkpoint.load_checkpoint(str(tmp_path / "other.pt"))

def test_checkpoints_from_compiled_or_ddp_models_load(tmp_path):
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=1, n_embd=8))
    prefixed = {f"_orig_mod.module.{k}": v for k, v in model.state_dict().items()}  # nanoGPT-era keys
    checkpoint.save_checkpoint({"model": prefixed, "model_args": asdict(model.config)}, str(tmp_path / "c.pt"))
    loaded, _ = checkpoint.load_model(str(tmp_path / "c.pt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))

def test_resume_from_an_incompatible_checkpoint_is_explained(synthetic_shards, tmp_path):
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    state = model.state_dict()
    state.pop("lm_head.weight")
    checkpoint.save_checkpoint({"model": state, "model_args": {**asdict(model.config), "n_layer": 2}},
                               str(tmp_path / "ckpt.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this version's GPT"):
        run_train(synthetic_shards, tmp_path, "--init_from=resume")


def test_a_checkpoint_with_the_loop_state_at_the_top_level_still_resumes_exactly(synthetic_shards, tmp_path):
    # the layout written before the loop state was one record: its fields beside model, optimizer, ...
    run_train(synthetic_shards, tmp_path / "whole", "--max_iters=4", "--eval_interval=2", "--dropout=0.1")
    run_train(synthetic_shards, tmp_path / "flat", "--max_iters=2", "--eval_interval=2", "--dropout=0.1")
    ckpt = torch.load(tmp_path / "flat" / "ckpt.pt", weights_only=True)
    ckpt.update(ckpt.pop("loop"))
    assert "step" in ckpt and "loop" not in ckpt
    checkpoint.save_checkpoint(ckpt, str(tmp_path / "flat" / "ckpt.pt"))
    run_train(synthetic_shards, tmp_path / "flat", "--max_iters=4", "--eval_interval=2", "--dropout=0.1",
              "--init_from=resume")
    assert losses(tmp_path / "flat") == losses(tmp_path / "whole")


def test_a_loop_state_from_a_newer_version_is_refused(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=1", "--eval_interval=1")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["loop"]["ema_decay"] = 0.99
    checkpoint.save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    with pytest.raises(checkpoint.CheckpointError, match=r"newer version of fineweb-gpt .*\['ema_decay'\]"):
        run_train(synthetic_shards, tmp_path, "--max_iters=2", "--init_from=resume")


def test_an_older_layout_is_refused_for_resume_with_a_message(synthetic_shards, tmp_path):
    run_train(synthetic_shards, tmp_path, "--max_iters=2", "--eval_interval=2")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt["rng"] = ckpt["rng"][0]  # the layout before every process's RNG state was kept
    checkpoint.save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="older version of fineweb-gpt .* sample.py and export.py"):
        run_train(synthetic_shards, tmp_path, "--max_iters=4", "--init_from=resume")
