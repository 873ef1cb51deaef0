"""The shipped config files load, fit their stated sizes, and split over 1 and 8 GPUs."""
import dataclasses
import glob
import json
import os
import re

import pytest

import train
from configurator import parse_config
from conftest import ROOT
from fineweb_gpt.batch import resolve_batch
from model import count_params

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_its_comment_states_the_real_size(path):
    cfg = parse_config(train.TrainConfig, [path])
    train.check_config(cfg)
    model = train.model_config(cfg)
    stated = re.search(r"([\d.]+)M parameters", open(path).read())
    assert stated, "each config says its parameter count"
    assert float(stated.group(1)) == round(count_params(model)["total"] / 1e6, 1)
    if cfg.batch_size == "auto":  # the micro-batch is chosen at run time; the tokens per update are fixed
        cfg = dataclasses.replace(cfg, batch_size=1)
    per_rank, tokens = resolve_batch(cfg, 1)
    stated_tokens = re.search(r"([\d,]+) tokens per (step|update)", open(path).read())
    assert int(stated_tokens.group(1).replace(",", "")) == tokens
    if "fineweb" in os.path.basename(path):
        assert tokens == 524288 and resolve_batch(cfg, 8) == (per_rank // 8, tokens)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_trains_on_cpu_with_only_shape_and_batch_overrides(path, synthetic_shards, tmp_path):
    # learning rates that depend on the shape are derived from it, so a shrunken config still trains
    # (2 layers hold at most one value-embedding table: it feeds layers 0 and 1)
    overrides = ["--device=cpu", "--compile=False", "--n_layer=2", "--value_embeds=1", "--n_head=2", "--n_embd=32", "--block_size=32",
                 "--batch_size=2", "--gradient_accumulation_steps=0", "--total_batch_size=128", "--max_iters=6",
                 "--eval_iters=2", f"--data_dir={synthetic_shards}", f"--out_dir={tmp_path}"]
    summary = train.train(parse_config(train.TrainConfig, [path, *overrides]))
    first = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert summary["step"] == 6 and summary["val_loss"] < first["val_loss"]
