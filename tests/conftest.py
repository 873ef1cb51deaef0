"""Shared fixtures: synthetic shards, offline GPT-2 BPE and real FineWeb shards (from ../shared/data), tiny configs."""
import json
import os
import sys

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: the workers share the cores, so one thread each (set
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy and torch start their thread pools)

import numpy as np
import pytest
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
PARQUET_DIR = os.path.join(SHARED, "fineweb", "fineweb_legal_pilot_batches")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "data", "fineweb"))


def load_script(path: str):
    """Import a script that is run by path (bench/recipe.py), without putting its folder on sys.path."""
    import importlib.util
    name = path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module

# tiktoken reads a pre-filled cache named by the sha1 of each file's download URL (shared/data/README.md)
_BPE_FILES = {"6d1cbeee0f20b3d9449abfede4726ed8212e3aee": "vocab.bpe",
              "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6": "encoder.json",
              "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4": "gpt2.tiktoken"}

# a model small enough that a training step takes tens of milliseconds on one CPU core
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--device=cpu",
        "--compile=False", "--eval_iters=2", "--log_interval=1", "--warmup_iters=2", "--learning_rate=3e-3"]


# The model option sets the project trains: GPT-2's, the modern recipe's, the Qwen3-compatible one, and the record line's.
OPTION_SETS = {
    "gpt2": {},
    "modern": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False,
                   logit_softcap=15.0, zero_init_proj=True, bias=False),
    "qwen3": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False,
                  zero_init_proj=True, bias=False),
}
# the modern recipe with the record line's model options (at the tiny models' 2 layers, one value-embedding table)
OPTION_SETS["record"] = dict(OPTION_SETS["modern"], value_embeds=1, x0_lambdas=True, unet_skips=True)


def scrambled_model(**overrides):
    """tiny_model with every parameter redrawn at random (norm gains around 1), so that zero-initialised
    projections and heads do not make outputs trivially equal."""
    import torch
    model = tiny_model(**overrides)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(mean=1.0 if "ln_" in name or "_norm" in name else 0.0, std=0.2)
    return model


def tiny_model(**overrides):
    """A seeded 2-layer, 32-wide GPT in eval mode (vocabulary 256, context 32) for model-level tests."""
    import torch

    from model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(block_size=32, vocab_size=256, n_layer=2, n_head=2, n_embd=32), **overrides})).eval()


def need_shared(*parts: str) -> str:
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs {path} (real FineWeb text / GPT-2 BPE from ../shared/data beside the checkout); absent")
    return path


@pytest.fixture(scope="session")
def tiktoken_cache(tmp_path_factory):
    """TIKTOKEN_CACHE_DIR pointing at symlinks to the shared GPT-2 BPE files: get_encoding('gpt2') works offline."""
    need_shared("tokenizers", "vocab.bpe")
    cache = tmp_path_factory.mktemp("tiktoken")
    for sha, name in _BPE_FILES.items():
        os.symlink(os.path.join(SHARED, "tokenizers", name), cache / sha)
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield str(cache)
    if old is None:
        os.environ.pop("TIKTOKEN_CACHE_DIR", None)
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def parquet_files():
    need_shared("fineweb", "fineweb_legal_pilot_batches", "batch_000001.parquet")
    return sorted(os.path.join(PARQUET_DIR, f) for f in os.listdir(PARQUET_DIR) if f.endswith(".parquet"))


@pytest.fixture(scope="session")
def shards(tiktoken_cache, parquet_files, tmp_path_factory):
    """Real FineWeb documents (4 parquet files, 400 docs) tokenized by prepare.py: ~0.6M tokens."""
    import prepare
    out = tmp_path_factory.mktemp("shards")
    prepare.main([f"--input={','.join(parquet_files[:4])}", f"--out_dir={out}", "--val_tokens=20000",
                  "--shard_size=200000", "--progress=False"])
    return str(out)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """Two train shards and a val shard of one random Markov chain over 512 GPT-2 token ids (each id has
    4 equally likely successors): learnable like text (loss falls far below ln(vocab) within tens of
    steps), built in a fraction of a second, no tokenizer or ../shared/data needed. No meta.json, like
    llm.c's shards, so the tokenizer is taken to be GPT-2's."""
    from fineweb_gpt.dataloader import header_for
    rng = np.random.default_rng(0)
    vocab, successors = rng.choice(50257, 512, replace=False), rng.integers(0, 512, (512, 4))
    picks = rng.integers(0, 4, 220_000)
    state, chain = 0, np.empty(len(picks), dtype=np.uint16)
    for i, pick in enumerate(picks.tolist()):
        chain[i] = vocab[state]
        state = successors[state, pick]
    out = tmp_path_factory.mktemp("synthetic")
    for name, tokens in (("syn_val_000000.bin", chain[:20_000]), ("syn_train_000001.bin", chain[20_000:120_000]),
                         ("syn_train_000002.bin", chain[120_000:])):
        with open(out / name, "wb") as f:
            f.write(header_for(np.dtype(np.uint16), len(tokens)).tobytes() + tokens.tobytes())
    return str(out)


def run_train(data_dir, out, *extra):
    """train.train() on the TINY model, as the command line would build its config."""
    import train
    from configurator import parse_config
    return train.train(parse_config(train.TrainConfig, [*TINY, f"--data_dir={data_dir}", f"--out_dir={out}", *extra]))


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(out):
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
