"""Time a training step (forward + backward) of the attention paths on this machine: plain causal SDPA,
document-causal masks, sliding windows, and both, at one model shape and row length.

    python bench/attention.py                                     # rows of 2,048 tokens, windows 256,512,1024
    python bench/attention.py --data_dir=data/fineweb             # real rows (their eot tokens) instead of synthetic
    python bench/attention.py --block_size=256 --windows=64 --steps=1 --warmup_steps=1   # a quick check

On CPU (and on CUDA after a FlexAttention failure) the masked paths run SDPA with a dense boolean mask; on
CUDA they run FlexAttention. Synthetic rows hold documents of random lengths averaging doc_len tokens (FineWeb
documents average about 1,500 GPT-2 tokens). Each variant reports the median step time over `steps` timed
steps after `warmup_steps`, tokens per second, and the fraction of (query, key) pairs its masks allow,
averaged over the layers (what a block-sparse kernel can skip is the rest). fp32 on CPU, bf16 autocast on CUDA.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import numpy as np
import torch

from configurator import key, run_main
from fineweb_gpt import hardware
from fineweb_gpt.dataloader import find_shards, open_shard
from model import GPT, GPTConfig, short_window_layers
from train import check_flex_attention


@dataclass
class AttentionBenchConfig:
    block_size: int = key(2048, "tokens per row", range="[2, inf)")
    batch_size: int = key(1, "rows per step", range="[1, inf)")
    n_layer: int = key(4, "blocks", range="[1, inf)")
    n_head: int = key(4, "heads", range="[1, inf)")
    n_embd: int = key(256, "width", range="[1, inf)")
    windows: str = key("256,512,1024", "comma-separated short windows to time")
    window_pattern: str = key("SSSL", "layers' short/long pattern (the last layer is always long)")
    doc_len: int = key(1500, "synthetic rows: mean document length in tokens", range="[1, inf)")
    data_dir: str = key("", "a folder of shards: rows from its first train shard instead of synthetic ones")
    eot_token: int = key(50256, "the token between documents", range="[0, inf)")
    steps: int = key(3, "timed steps per variant", range="[1, inf)")
    warmup_steps: int = key(1, "untimed steps per variant first", range="[0, inf)")
    device: str = key("auto", "'auto', 'cpu', 'cuda'")
    seed: int = key(0, "seed of the rows and the weights", range="[0, inf)")


def rows(cfg: AttentionBenchConfig, device: str) -> torch.Tensor:
    """(batch_size, block_size) token ids: from the shards, or random ids with an eot after each document."""
    if cfg.data_dir:
        tokens = np.asarray(open_shard(find_shards(cfg.data_dir, "train")[0])[:cfg.batch_size * cfg.block_size])
        return torch.from_numpy(tokens.astype(np.int64)).view(cfg.batch_size, cfg.block_size).to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randint(0, cfg.eot_token, (cfg.batch_size, cfg.block_size), generator=g)
    idx[torch.rand(idx.shape, generator=g) < 1 / cfg.doc_len] = cfg.eot_token
    return idx.to(device)


def variants(cfg: AttentionBenchConfig) -> dict[str, dict]:
    windows = [int(w) for w in cfg.windows.split(",") if w]
    out = {"causal": {}, "docs": {"doc_causal": True}}
    for w in windows:
        out[f"window {w}"] = {"attn_window": w, "window_pattern": cfg.window_pattern}
        out[f"docs+window {w}"] = {"doc_causal": True, "attn_window": w, "window_pattern": cfg.window_pattern}
    return out


def allowed_fraction(model: GPT, idx: torch.Tensor) -> float:
    """Of the (query, key) pairs a full causal mask allows, the fraction the model's masks allow, over its layers."""
    masks = model.attn_masks(idx)
    if masks is None:
        return 1.0
    causal = idx.size(1) * (idx.size(1) + 1) / 2 * idx.size(0)
    dense = {short: masks.dense(masks.q_pos, masks.q_doc, short).sum().item() / causal for short in (True, False)}
    return statistics.mean(dense[short] for short in short_window_layers(model.config))


def time_variant(cfg: AttentionBenchConfig, options: dict, idx: torch.Tensor, device: str, dtype: str,
                 amp) -> tuple[float, float]:
    """(median step seconds, allowed fraction) of one option set."""
    torch.manual_seed(cfg.seed)
    config = GPTConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                       vocab_size=50304, eot_token=cfg.eot_token, bias=False, pos_emb="rope", norm="rmsnorm", **options)
    model = GPT(config).to(device).train()
    check_flex_attention(model, dtype, device)  # the dense path where FlexAttention fails, as the docstring says
    times = []
    for step in range(cfg.warmup_steps + cfg.steps):
        t = time.perf_counter()
        with amp:
            _, loss = model(idx, idx)
        loss.backward()
        hardware.synchronize(device)
        if step >= cfg.warmup_steps:
            times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        fraction = allowed_fraction(model, idx)
    return statistics.median(times), fraction


def run(cfg: AttentionBenchConfig) -> dict[str, float]:
    device, _ = hardware.pick_device(cfg.device)
    dtype, _ = hardware.pick_dtype("auto", device)
    amp = hardware.autocast(device, dtype)
    idx = rows(cfg, device)
    docs = int((idx == cfg.eot_token).sum()) + idx.size(0)
    print(f"{hardware.device_name(device)}, {dtype}: {cfg.batch_size} x {cfg.block_size} tokens, about "
          f"{docs / idx.size(0):.1f} documents per row, {cfg.n_layer} layers x {cfg.n_embd}, pattern {cfg.window_pattern}")
    print("| variant | ms/step | tokens/s | pairs allowed |\n|---|---:|---:|---:|")
    results = {}
    for name, options in variants(cfg).items():
        seconds, fraction = time_variant(cfg, options, idx, device, dtype, amp)
        results[name] = seconds
        print(f"| {name} | {seconds * 1000:.0f} | {idx.numel() / seconds:,.0f} | {fraction:.1%} |", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, float]:
    return run_main(AttentionBenchConfig, "bench/attention.py", run, argv)


if __name__ == "__main__":
    main()
