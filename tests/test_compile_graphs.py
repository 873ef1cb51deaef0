"""The training forward, loss included, compiles to one graph for every shipped config: a graph break
(an op dynamo cannot trace, such as a warning inside the loss) splits it and costs speed on a GPU."""
import glob
from dataclasses import replace
import os

import pytest
import torch

import train
from configurator import parse_config
from conftest import ROOT
from fineweb_gpt.distributed import Env
from model import GPT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "config", "*.py")))
TINY_SHAPE = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16", "--vocab_size=128"]
# the shipped configs as they are, and the modern one with the record line's model options on
RECORD = ["--value_embeds=1", "--x0_lambdas=True", "--unet_skips=True"]
CASES = [pytest.param(path, [], id=os.path.basename(path)) for path in CONFIGS] + \
    [pytest.param(os.path.join(ROOT, "config", "train_fineweb.py"), RECORD, id="train_fineweb.py+record"),
     pytest.param(os.path.join(ROOT, "config", "train_fineweb.py"), ["--logit_softcap=15"],  # the softcapped chunked loss
                  id="train_fineweb.py+softcap")]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("path, options", CASES)
def test_training_forward_and_loss_compile_to_one_graph(path, options, dtype):
    cfg = parse_config(train.TrainConfig, [path, *TINY_SHAPE, *options])
    cfg = replace(cfg, value_embeds=min(cfg.value_embeds, cfg.n_layer // 2))  # the tables need 2 layers each
    torch.manual_seed(0)
    model = GPT(train.model_config(cfg)).train()
    train.set_memory_options(model, cfg, Env("cpu"))  # the config's chunked loss and checkpointing, as train.py sets them
    tokens = torch.randint(128, (2, 17))

    def forward_and_loss(x, y):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return model(x, y)[1]

    torch._dynamo.reset()
    explained = torch._dynamo.explain(forward_and_loss)(tokens[:, :-1], tokens[:, 1:])
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), reasons
