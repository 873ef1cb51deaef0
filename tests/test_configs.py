"""The shipped config files load, fit their stated sizes, and split over 1 and 8 GPUs."""
import glob
import os
import re

import pytest

import train
from configurator import parse_config
from conftest import ROOT
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
    per_rank, tokens = train.resolve_batch(cfg, 1)
    stated_tokens = re.search(r"([\d,]+) tokens per (step|update)", open(path).read())
    assert int(stated_tokens.group(1).replace(",", "")) == tokens
    if "fineweb" in os.path.basename(path):
        assert tokens == 524288 and train.resolve_batch(cfg, 8) == (per_rank // 8, tokens)
