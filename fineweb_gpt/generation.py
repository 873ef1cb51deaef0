"""Generation: choosing the next token from logits, and the decode loop over a KV cache.

Producing N tokens with the cache costs O(N*T), not O(N*T^2): each step feeds one new token and
attends to the cached keys and values of all earlier ones (model.KVCache).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.nn import functional as F

from model import GPT, KVCache


@torch.no_grad()
def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab): greedy at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eot: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield (B, 1) tensors of new tokens, one step at a time, continuing each row of idx (B, T).

    Rows that produced `eot` keep yielding eot (callers stop printing them); generation stops early
    once every row has. Without the cache, each step recomputes the whole context (the reference).
    """
    B, T = idx.size()
    if T + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds block_size "
                         f"{model.config.block_size}")
    param = next(model.parameters())
    cache = KVCache(model.config, B, T + max_new_tokens, idx.device, param.dtype) if use_cache else None
    done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
    seq, step_input = idx, idx
    for _ in range(max_new_tokens):
        logits, _ = model(step_input if use_cache else seq, cache=cache, last_only=True)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eot is not None:
            nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
            done |= nxt == eot
        yield nxt
        if eot is not None and bool(done.all()):
            return
        step_input = nxt
        if not use_cache:
            seq = torch.cat([seq, nxt], dim=1)
