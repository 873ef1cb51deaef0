"""Generation speed with and without the KV cache: tokens/s for GPT-2 124M at several lengths.

    python bench/sample.py                                  # CPU or the auto-detected GPU
    python bench/sample.py --lengths=256,512,1024 --compile=True --device=cuda

A randomly initialised 124M model (speed does not depend on the weights) continues a 16-token
prompt greedily, batch 1, never stopping early; its block_size is widened from 1024 to fit prompt +
new tokens (1040 for 1024 new tokens). Without the cache every step recomputes the whole
context (nanoGPT's sample.py); with it each step processes one token.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root, when run as bench/sample.py

import torch

from fineweb_gpt import hardware
from configurator import ConfigError, key, run_main
from fineweb_gpt.generation import generate
from model import GPT, GPTConfig


@dataclass
class BenchSampleConfig:
    lengths: str = key("256,512,1024", "comma-separated numbers of new tokens")
    modes: str = key("cache,nocache", "which to time: cache, nocache")
    prompt_tokens: int = key(16, "prompt length", range="[1, inf)")
    batch: int = key(1, "sequences generated together", range="[1, inf)")
    device: str = key("auto", "'auto', 'cpu', 'cuda', 'mps'")
    dtype: str = key("auto", "'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16'", choices=hardware.DTYPES)
    compile: bool = key(False, "torch.compile the model (dynamic shapes) before timing")


def time_generation(model: GPT, prompt: torch.Tensor, n: int, use_cache: bool, device: str) -> float:
    hardware.synchronize(device)
    t = time.time()
    for _ in generate(model, prompt, n, temperature=0, use_cache=use_cache):
        pass
    hardware.synchronize(device)
    return time.time() - t


def parse_lengths(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"lengths must be comma-separated whole numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    run_main(BenchSampleConfig, "bench/sample.py", bench, argv)


def bench(cfg: BenchSampleConfig) -> None:
    device, _ = hardware.pick_device(cfg.device)
    dtype, _ = hardware.pick_dtype(cfg.dtype, device)
    torch.manual_seed(0)
    lengths = parse_lengths(cfg.lengths)
    # GPT-2 124M; the context is widened past 1024 when prompt + new tokens need it (speed is unaffected)
    block_size = max(1024, cfg.prompt_tokens + max(lengths))
    model = GPT(GPTConfig(block_size=block_size)).to(device=device, dtype=getattr(torch, dtype)).eval()
    if cfg.compile:
        model = torch.compile(model, dynamic=True)
    prompt = torch.randint(0, 50257, (cfg.batch, cfg.prompt_tokens), device=device)
    time_generation(model, prompt, 8, True, device)  # warm-up (and compile)
    time_generation(model, prompt, 8, False, device)
    print(f"{hardware.device_name(device)}, {dtype}, compile={cfg.compile}, threads={torch.get_num_threads()}, "
          f"batch {cfg.batch}, prompt {cfg.prompt_tokens} tokens", flush=True)
    print("| new tokens | mode | seconds | tokens/s |\n|---|---|---|---|", flush=True)
    results = {}
    for n in lengths:
        for mode in cfg.modes.split(","):
            dt = time_generation(model, prompt, n, mode == "cache", device)
            results[(n, mode)] = dt
            print(f"| {n} | {mode} | {dt:.2f} | {n * cfg.batch / dt:,.1f} |", flush=True)
        if (n, "cache") in results and (n, "nocache") in results:
            print(f"| {n} | speed-up | | {results[(n, 'nocache')] / results[(n, 'cache')]:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
